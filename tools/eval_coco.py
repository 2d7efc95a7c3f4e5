#!/usr/bin/env python
"""Official COCO metrics (pycocotools), for a results file or for a trained checkpoint.

    # a results file against a ground-truth JSON
    python tools/eval_coco.py --gt datasets/shapes/val.json --results results.json \
        [--iou-types bbox segm keypoints] [--out metrics.json]
    # a checkpoint written by tools/train_det.py, run over a val split
    python tools/eval_coco.py --checkpoint runs/x/model_final.pth [--config C] [--data DIR] \
        [--out metrics.json] [--results results.json] [--device cpu] [key=value ...]

Prints pycocotools' summaries and a per-category AP table for each iou type, and writes
``metrics.json`` (``{"bbox": {"AP", ...}, "segm": {...}, "keypoints": {...}, "per_category":
{...}}``, percent, ``null`` where undefined; see ``detection/evaluation.py``). Iou types the
results do not carry (no ``segmentation``, no ``keypoints``) are skipped with a note.

Model mode: the model is built from ``--config`` or, when it is left out, from the config the
checkpoint stores (``config_yaml``, written by train_det: the resolved config of the run), with
the ``key=value`` overrides applied on top. Class names and keypoints come from the checkpoint's
``metadata["dataset"]`` (checked against the val split's categories). The split is ``--gt JSON
--images DIR``, else ``--data DIR`` (``DIR/val.json`` + ``DIR/val/``), else the config's data
paths. ``--results`` then names where the COCO results are *written* (nothing is written
without it). A checkpoint made for another architecture is one error listing the keys that
do not fit.

R-CNN checkpoints read the proposals of the split from ``data.val_proposals`` (stored in the
checkpoint's config; override it for another split).

Bad input prints one line to stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tools/ is not a package
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py

from common.tooling import parse_device, run_tool, tool_parser  # noqa: E402
from detection.data import DatasetError  # noqa: E402
from detection.evaluation import IOU_TYPES, evaluate_coco, metrics_to_json  # noqa: E402



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    files = parser.add_argument_group("evaluate a results file")
    files.add_argument("--gt", help="ground-truth COCO JSON (model mode: the val annotations, with --images)")
    files.add_argument("--results", help="COCO results JSON (a list of detections); model mode: where "
                       "to write the model's results")
    model = parser.add_argument_group("evaluate a checkpoint")
    model.add_argument("--checkpoint", help="a checkpoint written by tools/train_det.py (model_final.pth ...)")
    model.add_argument("--config", help="YAML config of the model (default: the config stored in the checkpoint)")
    model.add_argument("--data", help="dataset folder holding val.json and val/ (default: the config's data)")
    model.add_argument("--images", help="image folder for --gt")
    model.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    model.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. data.test_min_size=640")
    parser.add_argument("--iou-types", nargs="+", choices=IOU_TYPES, default=list(IOU_TYPES),
                        help="which metrics to compute (default: all the results support)")
    parser.add_argument("--out", help="write the metrics here as JSON, and diagnostics into plots/ beside it "
                        "(PR curves, confusion matrix, worst images; detection/diagnostics.py)")
    parser.add_argument("--plot-score-thresh", type=float, default=0.5,
                        help="score threshold of the confusion matrix and the worst images (default 0.5)")
    parser.add_argument("--coco-backend", choices=("pycocotools", "faster_coco_eval"), default=None,
                        help="COCOeval implementation (default: test.coco_backend, pycocotools); "
                             "faster_coco_eval needs `pip install faster-coco-eval`, same metrics")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


def check_mode(args: argparse.Namespace) -> None:
    """One sentence when the arguments mix the two modes or miss one's required paths."""
    if args.checkpoint is None:
        extra = [f"--{n}" for n in ("config", "data", "images", "device") if getattr(args, n)]
        if extra or args.overrides:
            raise ValueError(f"{', '.join(extra) or 'key=value overrides'} only apply with --checkpoint")
        missing = [f"--{n}" for n in ("gt", "results") if not getattr(args, n)]
        if missing:
            raise ValueError(f"give --gt and --results (a results file) or --checkpoint (a model); "
                             f"missing {' and '.join(missing)}")
    elif bool(args.gt) != bool(args.images):
        raise ValueError("with --checkpoint, --gt and --images go together (the annotations and their images)")
    elif args.data and args.gt:
        raise ValueError("give either --data DIR or --gt JSON --images DIR, not both")


# ---------------------------------------------------------------------------------------------
# model mode


def val_split(args: argparse.Namespace, data_cfg) -> tuple[Path, Path]:
    """(annotation JSON, image folder) to evaluate on; see the module docstring for the order."""
    if args.gt:
        ann, images = Path(args.gt), Path(args.images)
    elif args.data:
        if Path(args.data).is_file():
            raise DatasetError(f"--data {args.data} is a file, not a folder; a dataset folder holds val.json "
                               "and val/ (or give --gt JSON --images DIR)")
        ann, images = Path(args.data) / "val.json", Path(args.data) / "val"
    elif data_cfg.val_json:
        ann, images = Path(data_cfg.val_json), Path(data_cfg.val_images)
    else:
        ann, images = Path(data_cfg.root) / "val.json", Path(data_cfg.root) / "val"
    if not ann.is_file():
        raise DatasetError(f"annotation file {ann} does not exist (pass --data DIR with val.json and val/, "
                           "or --gt JSON --images DIR)")
    if not images.is_dir():
        raise DatasetError(f"image folder {images} does not exist (the images of {ann})")
    return ann, images


def evaluate_checkpoint(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """(metrics, COCO results) of ``args.checkpoint`` on the val split (see the module docstring);
    the split's (ground truth, image folder) is left in ``args.split`` for the plots."""
    from common.dataset_check import check_splits
    from common.loaders import build_test_loader
    from detection.build import (attach_proposals, build_detector, iou_types_for, meta_for_old_checkpoint,
                                 proposal_reader, proposals_to_read, read_checkpoint, reads_proposal_files)
    from detection.data import CocoDetection, build_transforms
    from detection.inference import evaluate_detector

    device = parse_device(args.device)
    state, cfg, meta = read_checkpoint(args.checkpoint, args.config, args.overrides)
    ann, images = val_split(args, cfg.data)
    checked = check_splits([(ann, images)], skip_bad_images=cfg.data.skip_bad_images)  # every image, first
    val = CocoDetection(ann, images, filter_empty=False, use_masks=cfg.model.mask_on,
                        use_keypoints=cfg.model.keypoint_on, skip_image_ids=checked.skip_ids(ann))
    args.split = (val.coco, images)  # without the skipped images
    if meta is None:
        meta = meta_for_old_checkpoint(args.checkpoint, ann, ann_meta=val.meta)
    elif meta.category_ids != val.meta.category_ids:
        raise DatasetError(f"{ann} has category ids {val.meta.category_ids} but {args.checkpoint} was trained "
                           f"on {meta.category_ids} ({', '.join(meta.class_names)})")
    model, cfg = build_detector(state, cfg, meta, args.checkpoint, device)
    d = cfg.data
    val.transforms = build_transforms(val.meta, train=False, min_size=d.test_min_size, max_size=d.max_size)
    if reads_proposal_files(cfg.model):  # Fast R-CNN, R-CNN: data.val_proposals
        attach_proposals(val, d.val_proposals, proposals_to_read(cfg), reader=proposal_reader(cfg.model))
    loader = build_test_loader(val, batch_size=cfg.test.ims_per_batch, num_workers=d.num_workers,
                               size_divisibility=model.backbone.size_divisibility,
                               pad_value=model.backbone.pixel_mean)
    produced = iou_types_for(cfg.model)
    skipped = [t for t in args.iou_types if t not in produced]
    if skipped:
        print(f"note: the model produces no {' or '.join(skipped)}; skipped")
    iou_types = [t for t in args.iou_types if t in produced]
    print(f"evaluating {args.checkpoint} on {len(val)} images of {ann} ({device})")
    return evaluate_detector(model, loader, val.coco, meta.category_ids, iou_types, device, verbose=True,
                             amp=cfg.test.amp, backend=args.coco_backend or cfg.test.coco_backend)


# ---------------------------------------------------------------------------------------------


def write_json(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_metrics(metrics: dict, path: str | Path) -> None:
    write_json(metrics_to_json(metrics), path)


def write_plots(args: argparse.Namespace, metrics: dict, results: list[dict] | None) -> Path:
    """PR curves, the confusion matrix and (model mode) the worst images in ``plots/`` beside --out."""
    from detection.diagnostics import write_diagnostics
    from detection.evaluation import load_coco_gt, load_results, polygons_as_rle

    ann, images = getattr(args, "split", (args.gt, None))
    gt = load_coco_gt(ann)
    if results is None:
        results = polygons_as_rle(gt, load_results(args.results)[0])
    out = Path(args.out).parent / "plots"
    iou_types = [t for t in ("bbox", "segm") if t in metrics]
    write_diagnostics(gt, results, out, images, iou_types, score_thresh=args.plot_score_thresh)
    return out


def run(args: argparse.Namespace) -> int:
    check_mode(args)
    if args.checkpoint:
        metrics, results = evaluate_checkpoint(args)
    else:
        metrics = evaluate_coco(args.gt, args.results, args.iou_types, backend=args.coco_backend or "pycocotools")
        results = None
    if args.checkpoint and args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(results))
        print(f"{len(results)} results written to {args.results}")
    if args.out:
        write_metrics(metrics, args.out)
        print(f"metrics written to {args.out}; plots in {write_plots(args, metrics, results)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool("eval_coco", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Draw a trained detector's predictions on images (OpenCV).

    python tools/predict.py --checkpoint runs/x/model_final.pth --input photo.jpg --out vis/
    python tools/predict.py --checkpoint runs/x/model_final.pth --input folder/ --out vis/ \
        [--config C] [--score-thresh 0.5] [--device cpu] [key=value ...]
    python tools/predict.py --checkpoint runs/x/model_final.pth --out vis/   # the config's val images
    python tools/predict.py --checkpoint W --input "photos/*.jpg" --out vis/ --batch-size 4
    python tools/predict.py --checkpoint W --input clip.mp4 --out vis/        # vis/clip.mp4, drawn
    python tools/predict.py --checkpoint W --input aerial.tif --out vis/ --tile 512 --overlap 128
    python tools/predict.py --checkpoint runs/seg/model_best.pth --input folder/ --out vis/  # a segmenter

``--input`` is an image, a folder, a glob pattern or a video file (``.mp4 .avi .mov .mkv
.webm``, read with OpenCV and written back drawn as ``OUT/<name>.mp4`` at the same frame rate
and size). Images are run ``--batch-size`` at a time; a progress bar shows images per second
(on a terminal). ``OUT/results.json`` holds the detections of the images in COCO results
format (``image_id`` is the ``image_id`` in predictions.json, boxes xywh, RLE masks, keypoints).
``--tile SIZE --overlap PIXELS`` cuts each image into overlapping SIZE x SIZE tiles, runs them
through the model (each resized like a training image) and merges the detections by NMS
(detection/predictor.py): for images much larger than the training images, where whole-image
inference shrinks the objects away. A segmentation checkpoint (tools/train_seg.py) draws label
maps with a legend of the classes present.

Each image gets ``OUT/<name>.jpg`` with masks, boxes, class names, scores and keypoints (with
the skeleton); ``OUT/predictions.json`` lists what was drawn, per image:
``{"file", "image_id", "height", "width", "instances": [{"class", "label", "score", "box": [x0, y0, x1, y1]}]}``
(pixels of the image on disk). Class names, keypoints and the skeleton come from the
checkpoint's ``metadata["dataset"]``; the model from ``--config`` or the config stored in the
checkpoint (as in tools/eval_coco.py). Without ``--input`` the images are the config's val
images (the built-in shapes dataset is generated there on first use).

R-CNN and Fast R-CNN checkpoints get their proposals from selective search (the note below).

A bad path prints one line to stderr and exits with status 2; an unreadable image inside a
folder is skipped and counted in one warning.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ is not a package
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py

PROPOSALS_NOTE = """\
R-CNN (model.meta_architecture: rcnn) and Fast R-CNN (model.proposal_generator: precomputed)
have no proposal network: predict runs selective search on each image (--ss-mode, "fast" by
default) and keeps as many boxes as training read per image (data.max_proposals, and for R-CNN
model.rcnn.proposals_per_image); the proposal files of training are not used. An R-CNN run's
RUN/model_final.pth holds the whole detector (fine-tuned backbone, per-class SVMs and box
regressors); its fine-tuning checkpoint RUN/finetune/model_final.pth scores with the softmax and
leaves the proposals unmoved (a note says so). --tile needs a detector with a proposal network."""

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from common.tooling import tool_parser

    p = tool_parser(__doc__)
    p.epilog = f"{p.epilog}\n\n{PROPOSALS_NOTE}" if p.epilog else PROPOSALS_NOTE
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by tools/train_det.py (an R-CNN run: "
                   "RUN/model_final.pth)")
    p.add_argument("--config", help="YAML config of the model (default: the config stored in the checkpoint)")
    p.add_argument("--input", help="an image or a folder of images (default: the config's val images)")
    p.add_argument("--out", required=True, help="folder for the drawn images and predictions.json")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw predictions scoring at least this")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--tile", type=int, default=0, help="tiled inference: tile side in pixels (0 = whole images)")
    p.add_argument("--overlap", type=int, default=0, help="tiled inference: pixels shared by neighbouring tiles")
    p.add_argument("--ss-mode", choices=("fast", "quality"), default="fast",
                   help="R-CNN and Fast R-CNN: the selective search run on each image for its proposals")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. data.test_min_size=640")
    return p.parse_intermixed_args(argv)  # overrides may come before or after the options


def list_images(path: Path) -> list[Path]:
    """``path`` itself, the image files directly inside the folder ``path``, or those a glob
    pattern names, sorted by name."""
    if any(c in str(path) for c in "*?[") and not path.exists():
        import glob

        found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"input pattern {path} matches no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return found
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} does not exist")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"input folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def default_images(data_cfg) -> Path:
    """The config's val image folder; the built-in dataset is generated on first use."""
    from detection.config import DataConfig

    if data_cfg.val_images:
        return Path(data_cfg.val_images)
    root = Path(data_cfg.root)
    if data_cfg.root == DataConfig.root and not (root / "val").is_dir():
        from common.shapes import ensure_shapes_dataset

        print(f"generating the built-in synthetic dataset in {root} (first use)")
        ensure_shapes_dataset(root)
    return root / "val"


def instances_json(pred: dict, meta, score_thresh: float) -> list[dict]:
    """What is drawn for one image: class, label, score and xyxy box (pixels on disk) per instance."""
    keep = pred["scores"] >= score_thresh
    return [{"class": meta.class_names[int(label)], "label": int(label), "score": round(float(score), 4),
             "box": [round(float(v), 2) for v in box]}
            for box, label, score in zip(pred["pred_boxes"][keep], pred["pred_classes"][keep], pred["scores"][keep])]


def detection_task(args: argparse.Namespace, device):
    """(run, draw, describe, to_results, default input) for a detector: ``run`` maps a list of
    (H, W, 3) RGB images to predictions, ``draw`` one image and its prediction to a drawing."""
    from detection.build import (build_detector, meta_for_old_checkpoint, proposals_to_read, read_checkpoint,
                                 reads_proposal_files)
    from detection.data import build_transforms
    from detection.evaluation import predictions_to_coco_results
    from detection.predictor import predict_batch, predict_tiled
    from detection.visualize import draw_prediction

    state, cfg, meta = read_checkpoint(args.checkpoint, args.config, args.overrides)
    if meta is None:  # an old checkpoint: the classes of the config's val annotations
        meta = meta_for_old_checkpoint(args.checkpoint, cfg.data.val_json or Path(cfg.data.root) / "val.json")
    model, cfg = build_detector(state, cfg, meta, args.checkpoint, device)
    transforms = build_transforms(meta, train=False, min_size=cfg.data.test_min_size, max_size=cfg.data.max_size)
    file_proposals = reads_proposal_files(cfg.model)  # Fast R-CNN, R-CNN: trained on selective search
    if file_proposals and args.tile:
        raise ValueError(f"--tile {args.tile}: {args.checkpoint} is a detector without a proposal network "
                         "(R-CNN or Fast R-CNN); it runs selective search on whole images, leave --tile out")
    if cfg.model.meta_architecture == "rcnn" and not (
            bool(model.reg_fitted) and (bool(model.svm_fitted) or cfg.model.rcnn.classifier == "softmax")):
        print(f"note: {args.checkpoint} is R-CNN before its SVMs and box regressors were fitted (a fine-tuning "
              "checkpoint): scores come from the fine-tuned softmax and boxes are the proposals; the run's "
              "model_final.pth holds the whole detector")

    def run(images):
        if file_proposals:  # selective search on the spot, as many boxes as training read per image
            from detection.selective_search import selective_search
            from detection.visualize import predict_image

            return [predict_image(model, im, transforms, device,
                                  selective_search(im, args.ss_mode, max_proposals=proposals_to_read(cfg))[0])
                    for im in images]
        if args.tile:
            return [predict_tiled(model, im, transforms, device, args.tile, args.overlap, batch_size=args.batch_size)
                    for im in images]
        return predict_batch(model, images, transforms, device)

    return (run, lambda image, pred: draw_prediction(image, pred, meta, args.score_thresh),
            lambda pred: instances_json(pred, meta, args.score_thresh),
            lambda preds, ids: predictions_to_coco_results(preds, ids, meta.category_ids),
            lambda: default_images(cfg.data))


def segmentation_task(args: argparse.Namespace, device):
    """The same five for a segmenter: label maps drawn with a legend, pixel counts per class."""
    import numpy as np
    import torch

    from common.image_list import ImageList
    from common.visual import draw_semantic
    from segmentation.export import load_segmentor

    if args.tile:
        raise ValueError("--tile is for detectors; a segmenter runs on whole images of any size")
    model, _, val = load_segmentor(args.checkpoint, args.config, args.overrides)
    model.to(device)

    @torch.no_grad()
    def run(images):
        tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]  # HWC -> CHW
        batch = ImageList.from_tensors(tensors, model.size_divisibility, model.pixel_mean)
        preds, _ = model(batch.to(device))
        return [{"sem_seg": p["sem_seg"].cpu()} for p in preds]

    def describe(pred):
        counts = np.bincount(pred["sem_seg"].numpy().ravel(), minlength=val.num_classes)
        return [{"class": val.class_names[c], "label": c, "pixels": int(n)} for c, n in enumerate(counts) if n]

    def no_default():
        raise ValueError("a segmentation checkpoint needs --input (an image, a folder, a glob or a video)")

    return (run, lambda image, pred: draw_semantic(image, pred["sem_seg"].numpy(), val.class_names, val.ignore_index),
            describe, None, no_default)


def predict(args: argparse.Namespace) -> int:
    import warnings

    import cv2
    from tqdm import tqdm

    from common.tooling import check_writable, parse_device
    from detection.data import DatasetError, read_image

    if not 0.0 <= args.score_thresh <= 1.0:
        raise ValueError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.tile or args.overlap:
        from detection.predictor import tile_windows

        tile_windows(1, 1, args.tile, args.overlap)  # checks the pair
    device = parse_device(args.device)
    check_writable(Path(args.out), "--out")  # before the model is built, not after
    from common.engine.checkpoint import checkpoint_task, load_checkpoint

    kind = checkpoint_task(load_checkpoint(args.checkpoint), args.checkpoint,
                           "detection" if args.config else None)
    task = segmentation_task if kind == "segmentation" else detection_task
    run, draw, describe, to_results, default_input = task(args, device)
    source = Path(args.input) if args.input else default_input()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(unit="img", desc="predict", dynamic_ncols=True, disable=None)  # off when not a terminal
    if source.suffix.lower() in VIDEO_SUFFIXES:
        from common.video import map_video

        def draw_batch(frames):
            return [draw(frame, pred)[:, :frame.shape[1]] for frame, pred in zip(frames, run(frames))]  # legend cut

        frames = map_video(source, out / f"{source.stem}.mp4", draw_batch, args.batch_size, bar)
        bar.close()
        print(f"drew {frames} frames of {source} into {out / (source.stem + '.mp4')}")
        return 0
    images = list_images(source)
    bar.total = len(images)
    listing, skipped, used_names, results = [], [], set(), []
    for i in range(0, len(images), args.batch_size):
        loaded = []
        for path in images[i:i + args.batch_size]:
            try:
                loaded.append((path, read_image(path, path.name)))
            except DatasetError as e:
                if len(images) == 1:
                    raise
                skipped.append(str(e))
        preds = run([image for _, image in loaded]) if loaded else []
        for (path, image), pred in zip(loaded, preds):
            name = f"{path.stem}.jpg" if f"{path.stem}.jpg" not in used_names else f"{path.name}.jpg"
            used_names.add(name)
            cv2.imwrite(str(out / name), cv2.cvtColor(draw(image, pred), cv2.COLOR_RGB2BGR))
            image_id = len(listing) + 1
            listing.append({"file": str(path), "drawn": name, "image_id": image_id, "height": image.shape[0],
                            "width": image.shape[1], "instances": describe(pred)})
            if to_results is not None:
                results += to_results([pred], [image_id])
        bar.update(len(images[i:i + args.batch_size]))
    bar.close()
    (out / "predictions.json").write_text("[\n" + ",\n".join(json.dumps(x) for x in listing) + "\n]\n")
    if to_results is not None:
        (out / "results.json").write_text(json.dumps(results))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(images)} images that could not be read; first: {skipped[0]}",
                      stacklevel=1)
    if to_results is None:
        print(f"drew label maps on {len(listing)} images in {out}")
    else:
        found = sum(len(item["instances"]) for item in listing)
        print(f"drew {found} predictions (score >= {args.score_thresh}) on {len(listing)} images in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from common.tooling import run_tool

    return run_tool("predict", predict, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

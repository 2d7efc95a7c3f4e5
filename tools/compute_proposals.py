#!/usr/bin/env python
"""Region proposals for every image of a split: selective search (for R-CNN and Fast R-CNN), or the
RPN of a trained Faster / Mask R-CNN.

    python tools/compute_proposals.py --data datasets/shapes --split train --mode fast \
        --workers 2 --out datasets/shapes/proposals_train_fast.json [--max-proposals 2000]
    python tools/compute_proposals.py --data datasets/shapes --split val \
        --checkpoint runs/faster/model_final.pth --out rpn_val.json [key=value ...]

Writes ``{"<COCO image id>": {"boxes": [[x0, y0, x1, y1], ...], "scores": [...]}, "_header": {...}}``
(boxes in pixels of the image on disk, best first; see ``detection/proposals.py`` and
datasets/README.md); an ``--out`` ending in ``.npz`` gets the same in binary form. When the split
has annotations it prints recall at IoU 0.5, 0.7 and 0.9, ABO and MABO of the proposals. An
existing ``--out`` made with the same method, settings, images and image files is reused (only
evaluated); one made for another image set, another mode or checkpoint, other settings or other
files is refused with a message saying which (``--overwrite`` recomputes it). A file without
``_header`` (made elsewhere) is accepted as it is.

``--checkpoint``: the RPN of a detector trained by tools/train_det.py, run as the detector runs it
at test time (its image size and ``model.rpn`` test-time top-k and NMS; ``key=value`` overrides
change them, e.g. model.rpn.post_nms_topk_test=300); scores are objectness probabilities. Such a
file feeds a Fast R-CNN (``data.val_proposals``, or ``data.train_proposals`` to train on them, step
2 of the Faster R-CNN paper's alternating training), and a Faster R-CNN checkpoint evaluated with
``model.proposal_generator=precomputed`` reads selective search instead of its RPN: the paper's
proposal swaps.

``--workers 1`` runs in this process; N > 1 uses N worker processes, each on one core (selective
search only). Bad input prints one line to stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: OpenMP threads sleep when idle; see common/tooling.py

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from detection.proposals import (ProposalError, check_header, ground_truth, load_proposals,  # noqa: E402
                                 make_header, proposal_recall, read_header, save_proposals)
from common.tooling import run_tool, tool_parser  # noqa: E402
from detection.selective_search import MODES, selective_search  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = tool_parser(__doc__)
    p.add_argument("--data", required=True, help="dataset folder holding <split>.json and <split>/")
    p.add_argument("--split", default="val", help="train or val (default: %(default)s)")
    p.add_argument("--mode", choices=sorted(MODES), default="fast", help="selective search mode (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="a Faster / Mask R-CNN checkpoint of tools/train_det.py: "
                   "its RPN's proposals instead of selective search")
    p.add_argument("--device", default="cpu", help="device of the RPN (--checkpoint; default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: %(default)s)")
    p.add_argument("--out", required=True, help="proposal file to write (JSON)")
    p.add_argument("--max-proposals", type=int, default=2000, help="best boxes kept per image (0 = all; "
                   "default: %(default)s)")
    p.add_argument("--min-size", type=float, default=0.0, help="boxes with a side below this many pixels are "
                   "dropped (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the ranking's random numbers (default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images of the split (0 = all)")
    p.add_argument("--overwrite", action="store_true", help="recompute even if --out exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key=value settings of the checkpoint's config (--checkpoint)")
    return p.parse_args(argv)


def read_split(data: Path, split: str, limit: int = 0) -> tuple[dict[int, Path], dict[int, tuple], Path]:
    """(image id -> image path, image id -> (gt boxes xyxy, class ids), annotation file) of a split."""
    ann = data / f"{split}.json"
    images_dir = data / split
    if not ann.is_file():
        raise ProposalError(f"annotation file {ann} does not exist (--data must hold {split}.json and {split}/)")
    try:
        coco = json.loads(ann.read_text())
        infos = sorted(coco["images"], key=lambda im: im["id"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ProposalError(f"{ann} is not a COCO file ({e!r})") from None
    if limit > 0:
        infos = infos[:limit]
    images = {int(im["id"]): images_dir / im["file_name"] for im in infos}
    for image_id, path in images.items():
        if not path.is_file():
            raise ProposalError(f"image file {path} (image id {image_id}) does not exist")
    return images, ground_truth(coco, images), ann


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB (grayscale replicated, alpha dropped, 16 bit scaled to 8)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ProposalError(f"image file {path} could not be read as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_SETTINGS: dict = {}


def _init_worker(settings: dict) -> None:
    cv2.setNumThreads(1)  # one core per worker
    _SETTINGS.update(settings)


def _run_one(item: tuple[int, str]) -> tuple[int, np.ndarray, np.ndarray]:
    image_id, path = item
    s = _SETTINGS
    boxes, scores = selective_search(read_rgb(Path(path)), s["mode"], min_size=s["min_size"],
                                     max_proposals=s["max_proposals"], seed=s["seed"])
    return image_id, boxes, scores


def compute(images: dict[int, Path], settings: dict, workers: int, progress: bool) -> dict[int, dict]:
    """Selective search over ``images`` (image id -> path) -> {image id: {"boxes", "scores"}}."""
    from tqdm import tqdm

    items = [(i, str(p)) for i, p in images.items()]
    out: dict[int, dict] = {}
    bar = tqdm(total=len(items), desc=f"selective search ({settings['mode']})", disable=not progress,
               dynamic_ncols=True)
    if workers <= 1:
        _init_worker(settings)
        results = map(_run_one, items)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn" if sys.platform == "darwin" else "fork").Pool(
            workers, initializer=_init_worker, initargs=(settings,))
        results = pool.imap_unordered(_run_one, items, chunksize=1)
    try:
        for image_id, boxes, scores in results:
            out[image_id] = {"boxes": boxes, "scores": scores}
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return {i: out[i] for i in images}  # in image id order


def compute_rpn(images: dict[int, Path], args: argparse.Namespace, ann: Path) -> dict[int, dict]:
    """The RPN of ``args.checkpoint`` over ``images`` -> {image id: {"boxes", "scores"}}, each image's
    boxes with a side under ``args.min_size`` dropped and at most ``args.max_proposals`` kept."""
    from tqdm import tqdm

    from common.tooling import parse_device
    from detection.build import build_detector, meta_for_old_checkpoint, read_checkpoint, reads_proposal_files
    from detection.data import build_transforms
    from detection.predictor import rpn_proposals

    device = parse_device(args.device)
    state, cfg, meta = read_checkpoint(args.checkpoint, None, args.overrides)
    if reads_proposal_files(cfg.model):
        raise ProposalError(f"checkpoint {args.checkpoint} is a detector without an RPN (R-CNN or Fast R-CNN, "
                            "which read proposals from files); --checkpoint takes a Faster or Mask R-CNN")
    if meta is None:  # an old checkpoint: the classes of the split
        meta = meta_for_old_checkpoint(args.checkpoint, ann)
    model, cfg = build_detector(state, cfg, meta, args.checkpoint, device)
    transforms = build_transforms(meta, train=False, min_size=cfg.data.test_min_size, max_size=cfg.data.max_size)
    r = cfg.model.rpn
    print(f"RPN of {args.checkpoint}: images at a short side of {cfg.data.test_min_size} px (long side at most "
          f"{cfg.data.max_size}); top {r.pre_nms_topk_test} per level, NMS at IoU {r.nms_thresh:g}, top "
          f"{r.post_nms_topk_test} per image (model.rpn.*_test, model.rpn.nms_thresh)")
    out: dict[int, dict] = {}
    for image_id, path in tqdm(images.items(), desc="RPN proposals", disable=args.no_progress, dynamic_ncols=True):
        boxes, scores = rpn_proposals(model, [read_rgb(path)], transforms, device)[0]
        keep = np.flatnonzero(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= args.min_size)
        if args.max_proposals > 0:
            keep = keep[:args.max_proposals]
        out[image_id] = {"boxes": boxes[keep], "scores": scores[keep]}
    return out


def main(argv=None) -> int:
    return run_tool("compute_proposals", run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if args.split not in ("train", "val"):
        raise ValueError(f"--split must be train or val, got {args.split!r}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.overrides and not args.checkpoint:
        raise ValueError(f"key=value settings ({args.overrides[0]} ...) are for the checkpoint's config: give "
                         "--checkpoint, or leave them out for selective search")
    images, gt, ann = read_split(Path(args.data), args.split, args.limit)
    out = Path(args.out)
    params = {"max_proposals": args.max_proposals, "min_size": args.min_size}
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if not ckpt.is_file():
            raise ProposalError(f"checkpoint {ckpt} does not exist")
        method, mode = "rpn", "rpn"
        st = ckpt.stat()  # a retrained checkpoint at the same path is another RPN
        params |= {"checkpoint": str(ckpt.resolve()), "checkpoint_file": [int(st.st_size), int(st.st_mtime_ns)],
                   "overrides": list(args.overrides)}
        what, workers = f"RPN of {ckpt}", ""
    else:
        method, mode = "selective_search", args.mode
        params["seed"] = args.seed
        what, workers = args.mode, f", {args.workers} worker{'s' if args.workers > 1 else ''}"
    t0 = time.perf_counter()
    if out.exists() and not args.overwrite:
        check_header(read_header(out), out, images, mode=mode, exact_image_set=True, params=params)
        print(f"{out} already holds proposals for these {len(images)} images ({what}); reusing it "
              "(--overwrite recomputes)")
        proposals = {i: p["boxes"] for i, p in load_proposals(out, images).items()}
    else:
        if args.checkpoint:
            result = compute_rpn(images, args, ann)
        else:
            result = compute(images, {"mode": args.mode, **params}, args.workers, not args.no_progress)
        seconds = time.perf_counter() - t0
        save_proposals(out, result, make_header(mode, images, method=method, annotations=ann.name, **params))
        proposals = {i: p["boxes"] for i, p in result.items()}
        print(f"{len(images)} images in {seconds:.1f} s ({seconds / max(len(images), 1):.3f} s per image"
              f"{workers}); written to {out}")
    if any(len(b) for b, _ in gt.values()):
        r = proposal_recall(proposals, gt, thresholds=(0.5, 0.7, 0.9))
        print(f"{r['boxes_per_image']:.0f} boxes per image; recall@0.5 {r['recall@0.5']:.1f}%  "
              f"recall@0.7 {r['recall@0.7']:.1f}%  recall@0.9 {r['recall@0.9']:.1f}%  MABO {r['MABO']:.1f}%  "
              f"ABO {r['ABO']:.1f}% ({r['num_gt']} gt boxes in {r['num_images']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

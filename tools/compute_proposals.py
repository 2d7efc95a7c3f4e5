#!/usr/bin/env python
"""Selective search proposals for every image of a split (for R-CNN and Fast R-CNN).

    python tools/compute_proposals.py --data datasets/shapes --split train --mode fast \
        --workers 2 --out datasets/shapes/proposals_train_fast.json [--max-proposals 2000]

Writes ``{"<COCO image id>": {"boxes": [[x0, y0, x1, y1], ...], "scores": [...]}, "_header": {...}}``
(boxes in pixels of the image on disk, best first; see ``detection/proposals.py`` and
datasets/README.md); an ``--out`` ending in ``.npz`` gets the same in binary form. When the split has annotations it prints recall at IoU 0.5 and 0.7, ABO and
MABO of the proposals. An existing ``--out`` made with the same mode, settings, images and image
files is reused (only evaluated); one made for another image set, another mode, other settings
or other files is refused with a message saying which (``--overwrite`` recomputes it). A file
without ``_header`` (made elsewhere) is accepted as it is.

``--workers 1`` runs in this process; N > 1 uses N worker processes, each on one core.
Bad input prints one line to stderr and exits with status 2.
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

from detection.proposals import (ProposalError, check_header, load_proposals, make_header,  # noqa: E402
                                 proposal_recall, read_header, save_proposals)
from common.tooling import run_tool, tool_parser  # noqa: E402
from detection.selective_search import MODES, selective_search  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = tool_parser(__doc__)
    p.add_argument("--data", required=True, help="dataset folder holding <split>.json and <split>/")
    p.add_argument("--split", default="val", help="train or val (default: %(default)s)")
    p.add_argument("--mode", choices=sorted(MODES), default="fast", help="selective search mode (default: %(default)s)")
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
    boxes: dict[int, list] = {i: [] for i in images}
    classes: dict[int, list] = {i: [] for i in images}
    for a in coco.get("annotations", []):
        if a.get("iscrowd", 0) or int(a["image_id"]) not in boxes:
            continue
        x, y, w, h = a["bbox"]
        boxes[int(a["image_id"])].append([x, y, x + w, y + h])
        classes[int(a["image_id"])].append(int(a["category_id"]))
    gt = {i: (np.asarray(boxes[i], np.float64).reshape(-1, 4), np.asarray(classes[i], np.int64)) for i in images}
    return images, gt, ann


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


def main(argv=None) -> int:
    return run_tool("compute_proposals", run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if args.split not in ("train", "val"):
        raise ValueError(f"--split must be train or val, got {args.split!r}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    images, gt, ann = read_split(Path(args.data), args.split, args.limit)
    out = Path(args.out)
    params = {"max_proposals": args.max_proposals, "min_size": args.min_size, "seed": args.seed}
    settings = {"mode": args.mode, **params}
    t0 = time.perf_counter()
    if out.exists() and not args.overwrite:
        check_header(read_header(out), out, images, mode=args.mode, exact_image_set=True,
                     params=params)
        print(f"{out} already holds proposals for these {len(images)} images ({args.mode}); reusing it "
              "(--overwrite recomputes)")
        proposals = {i: p["boxes"] for i, p in load_proposals(out, images).items()}
    else:
        result = compute(images, settings, args.workers, not args.no_progress)
        seconds = time.perf_counter() - t0
        save_proposals(out, result, make_header(args.mode, images, annotations=ann.name, **params))
        proposals = {i: p["boxes"] for i, p in result.items()}
        print(f"{len(images)} images in {seconds:.1f} s ({seconds / max(len(images), 1):.3f} s per image, "
              f"{args.workers} worker{'s' if args.workers > 1 else ''}); written to {out}")
    if any(len(b) for b, _ in gt.values()):
        r = proposal_recall(proposals, gt)
        print(f"{r['boxes_per_image']:.0f} boxes per image; recall@0.5 {r['recall@0.5']:.1f}%  "
              f"recall@0.7 {r['recall@0.7']:.1f}%  MABO {r['MABO']:.1f}%  ABO {r['ABO']:.1f}% "
              f"({r['num_gt']} gt boxes in {r['num_images']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Check a dataset: every image (and label map) decoded once, every annotation checked, all problems listed.

    python tools/check_dataset.py --data path/to/coco_like          # train.json + train/, val.json + val/
    python tools/check_dataset.py --train-json A.json --train-images A/ --val-json B.json --val-images B/
    python tools/check_dataset.py --data DIR --out runs/check_DIR   # where the plot goes
    python tools/check_dataset.py --data DIR --format semantic_dir  # segmentation label maps (or voc)

Prints every problem (one line each: file, image id, value), then a summary per split (images,
images without instances, instances per class, box sizes, keypoint visibility) and writes
``dataset_check.png`` (class counts and box sizes) into ``--out`` (default
``runs/check_<dataset folder name>``). The training and evaluation tools run the same check at
start-up; results are cached by file size and modification time (see common/dataset_check.py),
so a second run does not decode the images again. ``--format semantic_dir`` or ``voc`` checks
segmentation's label-map layouts (data.format of train_seg): each label map against its image's
size and the classes; no plot.

Exit status: 0 without problems, 1 with problems, 2 when the dataset cannot be found.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py

from common.coco import DatasetError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    from common.tooling import tool_parser

    p = tool_parser(__doc__)
    p.add_argument("--data", help="dataset folder (train.json, val.json, train/, val/)")
    p.add_argument("--train-json", help="COCO annotations of the training split (with --train-images)")
    p.add_argument("--train-images", help="image folder for --train-json")
    p.add_argument("--val-json", help="COCO annotations of the val split (with --val-images)")
    p.add_argument("--val-images", help="image folder for --val-json")
    p.add_argument("--format", choices=("coco", "semantic_dir", "voc"), default="coco",
                   help="dataset layout (default: %(default)s; the others are train_seg's data.format)")
    p.add_argument("--out", help="folder for dataset_check.png (default: runs/check_<dataset folder name>)")
    p.add_argument("--cache-dir", help="where results are cached (default: ~/.cache/rcnn-toolkit/dataset_check)")
    return p.parse_args(argv)


def dataset_splits(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(annotation JSON, image folder) of each split named by the arguments."""
    pairs = [(args.train_json, args.train_images, "--train"), (args.val_json, args.val_images, "--val")]
    explicit = [(Path(j), Path(i)) for j, i, _ in pairs if j and i]
    for j, i, flag in pairs:
        if bool(j) != bool(i):
            raise DatasetError(f"{flag}-json and {flag}-images go together (the annotations and their images)")
    if args.data and explicit:
        raise DatasetError("give either --data DIR or --train-json/--val-json with their image folders, not both")
    if explicit:
        return explicit
    if not args.data:
        raise DatasetError("give --data DIR (train.json, val.json, train/, val/) or --train-json/--train-images "
                           "and/or --val-json/--val-images")
    root = Path(args.data)
    if root.is_file():
        raise DatasetError(f"--data {root} is a file, not a folder; a dataset folder holds train.json, "
                           "val.json, train/ and val/")
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    splits = [(root / f"{s}.json", root / s) for s in ("train", "val") if (root / f"{s}.json").is_file()]
    if not splits:
        raise DatasetError(f"{root} holds neither train.json nor val.json; a dataset folder holds train.json, "
                           "val.json, train/ and val/")
    return splits


def label_map_checks(args: argparse.Namespace, cache_dir: Path | None) -> list:
    """The label-map check (``LabelSplit.check``) of the train and val splits of a semantic_dir or
    VOC folder, those present."""
    from segmentation.build import label_split, layout_of, resolve_root
    from segmentation.config import DataConfig

    if not args.data:
        raise DatasetError(f"--format {args.format} needs --data DIR")
    cfg = DataConfig(format=args.format, root=args.data)
    root = resolve_root(cfg)
    present = {"semantic_dir": lambda s: (root / f"{s}_semantic").is_dir(),
               "voc": lambda s: (root / "ImageSets" / "Segmentation" / f"{s}.txt").is_file()}[args.format]
    splits = [label_split(cfg, root, s) for s in ("train", "val") if present(s)]
    if not splits:
        raise DatasetError(f"{root} holds no train or val split; a data.format={args.format} folder holds "
                           f"{layout_of(cfg)}")
    return [s.check(cache_dir) for s in splits]


def run(args: argparse.Namespace) -> int:
    from common.dataset_check import check_split, format_summary, plot_summary

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    if args.format == "coco":
        splits = dataset_splits(args)
        checks = [check_split(ann, images, cache_dir=cache_dir) for ann, images in splits]
    else:
        checks = label_map_checks(args, cache_dir)
    for c in checks:
        for p in c.problems:
            print(f"problem: {p.message}")
    for c in checks:
        print(format_summary(c))
    out = Path(args.out or ROOT / "runs" / f"check_{(Path(args.data) if args.data else splits[0][0].parent).name}")
    if any(c.summary.get("instances") for c in checks):
        print(f"plot: {plot_summary(checks, out / 'dataset_check.png')}")
    problems = sum(len(c.problems) for c in checks)
    print(f"{problems} problem{'s' if problems != 1 else ''} in {', '.join(str(c.ann_file) for c in checks)}"
          if problems else "no problems")
    return 1 if problems else 0


def main(argv=None) -> int:
    from common.tooling import run_tool

    return run_tool("check_dataset", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

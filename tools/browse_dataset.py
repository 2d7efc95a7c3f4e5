#!/usr/bin/env python
"""Draw a dataset's ground truth on every image of a split, to look at what the models see.

    python tools/browse_dataset.py --out vis/ [--data DIR] [--split val] [--limit N] [--scale S]

``DIR`` is a COCO-format directory (``DIR/<split>.json``, images in ``DIR/<split>/``); without
``--data`` the built-in shapes dataset (``datasets/shapes``, generated on first use) is drawn.
Images are read through ``detection.data.CocoDetection`` without transforms, so the boxes,
masks and keypoints are the training targets after its cleaning (crowd regions are not
targets and are not drawn). When ``DIR/semantic.json`` and ``DIR/<split>_semantic/<stem>.png``
exist, the semantic label map is drawn to the right, with a legend.

One PNG per image, ``OUT/<file stem>.png``. Bad input prints one line to stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ is not a package
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from common import shapes  # noqa: E402
from common.tooling import ToolError, check_writable, run_tool, tool_parser  # noqa: E402
from common.visual import color_for, draw_instances, draw_semantic  # noqa: E402
from detection.data import CocoDetection, DatasetError  # noqa: E402

GAP = 4  # px of white between the instance and semantic panels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--data", help="COCO-format dataset directory (default: the shapes dataset)")
    parser.add_argument("--split", default="val", help="which DIR/<split>.json to draw (default: val)")
    parser.add_argument("--out", required=True, help="output directory for the drawings")
    parser.add_argument("--limit", type=int, default=None, help="draw only the first N images")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="enlarge the drawings by this factor (small images are hard to read)")
    return parser.parse_args(argv)


def load_semantic_classes(root: Path) -> tuple[list[str], int] | None:
    """(class names, ignore index) from DIR/semantic.json, or None if there is none."""
    path = root / "semantic.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        return list(info["classes"]), int(info.get("ignore_index", 255))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path} is not a semantic class file with a 'classes' list ({e})") from None


def scale_target(image: np.ndarray, target: dict, s: float) -> tuple[np.ndarray, dict]:
    """Enlarge an (H, W, 3) image and its numpy target by ``s`` for display."""
    if s == 1.0:
        return image, target
    h, w = image.shape[:2]
    size = (round(w * s), round(h * s))  # cv2 sizes are (width, height)
    out = dict(target)
    out["gt_boxes"] = target["gt_boxes"] * s
    if "gt_masks" in target:
        out["gt_masks"] = np.stack([cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
                                    for m in target["gt_masks"]]) if len(target["gt_masks"]) \
            else np.zeros((0, size[1], size[0]), np.uint8)
    if "gt_keypoints" in target:
        kps = target["gt_keypoints"].copy()
        kps[..., :2] *= s
        out["gt_keypoints"] = kps
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), out


def draw_item(dataset: CocoDetection, index: int, semantic_dir: Path | None,
              semantic: tuple[list[str], int] | None, s: float) -> np.ndarray:
    """The drawing of one image: instances, and the semantic map beside it when there is one."""
    image, target = dataset.load_numpy(index)
    big, tgt = scale_target(image, target, s)
    meta = dataset.meta
    panel = draw_instances(big, boxes=tgt["gt_boxes"], labels=tgt["gt_classes"],
                           masks=tgt.get("gt_masks"), keypoints=tgt.get("gt_keypoints"),
                           class_names=meta.class_names, skeleton=meta.skeleton)
    if semantic is None or semantic_dir is None:
        return panel
    file_name = dataset.coco.imgs[dataset.ids[index]]["file_name"]
    png = semantic_dir / (Path(file_name).with_suffix(".png"))
    if not png.is_file():
        return panel
    label_map = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    if label_map is None or label_map.shape != image.shape[:2]:
        got = "unreadable" if label_map is None else f"of shape {label_map.shape}"
        raise DatasetError(f"semantic map {png} (image id {dataset.ids[index]}) is {got}; "
                           f"expected {image.shape[0]}x{image.shape[1]}")
    label_map = cv2.resize(label_map, (big.shape[1], big.shape[0]), interpolation=cv2.INTER_NEAREST)
    classes, ignore_index = semantic
    # a class gets the colour of the same name in the instance panel; others (background) black
    colors = [color_for(meta.class_names.index(n)) if n in meta.class_names else (0, 0, 0)
              for n in classes]
    try:
        sem = draw_semantic(big, label_map, classes, ignore_index=ignore_index, colors=colors)
    except ValueError as e:
        raise DatasetError(f"semantic map {png} (image id {dataset.ids[index]}): {e}") from None
    gap = np.full((panel.shape[0], GAP, 3), 255, np.uint8)
    return np.concatenate([panel, gap, sem], axis=1)


def browse(root: Path, split: str, out_dir: Path, limit: int | None = None, scale: float = 1.0) -> int:
    """Draw the first ``limit`` images of ``root/<split>.json`` into ``out_dir``; return the count."""
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist")
    ann_file = root / f"{split}.json"
    if not ann_file.is_file():
        found = sorted(p.name for p in root.glob("*.json"))
        raise DatasetError(f"dataset directory {root} has no {split}.json (found: {', '.join(found) or 'none'})")
    dataset = CocoDetection(ann_file, root / split)
    semantic = load_semantic_classes(root)
    semantic_dir = root / f"{split}_semantic"
    out_dir.mkdir(parents=True, exist_ok=True)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in range(count):
        drawing = draw_item(dataset, index, semantic_dir if semantic_dir.is_dir() else None, semantic, scale)
        file_name = dataset.coco.imgs[dataset.ids[index]]["file_name"]
        path = out_dir / (Path(file_name).with_suffix(".png").as_posix().replace("/", "_"))
        if not cv2.imwrite(str(path), drawing[:, :, ::-1]):  # RGB -> BGR for OpenCV
            raise OSError(f"could not write {path}")
    return count


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise ToolError(f"--limit must be >= 0, got {args.limit}")
    if not args.scale > 0:
        raise ToolError(f"--scale must be > 0, got {args.scale}")
    check_writable(Path(args.out), "--out")
    root = Path(args.data) if args.data else shapes.ensure_shapes_dataset()
    count = browse(root, args.split, Path(args.out), args.limit, args.scale)
    print(f"wrote {count} drawings of {root / (args.split + '.json')} to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool("browse_dataset", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

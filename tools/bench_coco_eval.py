"""Micro-benchmark: the COCO evaluation backends (pycocotools vs faster-coco-eval) on a large
synthetic val set, no images needed.

    python tools/bench_coco_eval.py [--images 5000] [--dets 100] [--iou-types bbox segm]

Writes a COCO-sized ground truth (640x480 images, 7 objects each on average, 80 categories,
polygon masks) and results (``--dets`` scored detections per image near the objects and at random,
RLE masks) in memory, runs ``detection.evaluation.evaluate_coco`` with each backend on them, and
prints the seconds per iou type, the speed-up and the AP of both (they must agree).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout, like the other tools
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool, tool_parser  # noqa: E402

start_tool()  # before torch: OpenMP threads sleep when idle; see common/tooling.py

import contextlib  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pycocotools.mask as mask_util  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from detection.evaluation import evaluate_coco  # noqa: E402

W, H, CATEGORIES = 640, 480, 80


def polygon(x: float, y: float, w: float, h: float) -> list[float]:
    """An octagon inscribed in the box (x, y, w, h): a mask that is not its box."""
    cx, cy, ax, ay = x + w / 2, y + h / 2, w / 2, h / 2
    angles = np.arange(8) * np.pi / 4 + np.pi / 8
    return np.stack([cx + ax * np.cos(angles), cy + ay * np.sin(angles)], 1).reshape(-1).tolist()


def random_box(rng: np.random.Generator) -> list[float]:
    w, h = rng.uniform(8, 300, size=2)
    return [float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h)), float(w), float(h)]


def synthetic(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """(ground-truth dict, results list) of ``num_images`` images."""
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [],
          "categories": [{"id": i + 1, "name": f"c{i + 1}"} for i in range(CATEGORIES)]}
    results = []
    for image_id in range(1, num_images + 1):
        gt["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": W, "height": H})
        objects = [(int(rng.integers(1, CATEGORIES + 1)), random_box(rng)) for _ in range(rng.poisson(7))]
        for cat, box in objects:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": cat,
                                      "bbox": box, "area": box[2] * box[3] * 0.83, "iscrowd": 0,
                                      "segmentation": [polygon(*box)]})
        for k in range(dets_per_image):
            if objects and k < 3 * len(objects):  # near an object, its class most of the time
                cat, (x, y, w, h) = objects[k % len(objects)]
                cat = cat if rng.random() < 0.7 else int(rng.integers(1, CATEGORIES + 1))
                dx, dy, sw, sh = rng.normal(0, 0.1, size=4)
                box = [x + dx * w, y + dy * h, w * (1 + sw), h * (1 + sh)]
            else:
                cat, box = int(rng.integers(1, CATEGORIES + 1)), random_box(rng)
            box = [float(max(v, 1.0)) for v in box]
            rle = mask_util.merge(mask_util.frPyObjects([polygon(*box)], H, W))
            rle["counts"] = rle["counts"].decode()
            results.append({"image_id": image_id, "category_id": cat, "bbox": box,
                            "score": float(rng.random()), "segmentation": rle})
    return gt, results


def main(argv=None) -> int:
    p = tool_parser(__doc__)
    p.add_argument("--images", type=int, default=5000, help="val images (COCO val2017: 5000)")
    p.add_argument("--dets", type=int, default=100, help="detections per image (COCO's maximum: 100)")
    p.add_argument("--iou-types", nargs="+", default=["bbox", "segm"], choices=("bbox", "segm"))
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    gt, results = synthetic(args.images, args.dets)
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    print(f"{args.images} images, {len(gt['annotations'])} objects, {len(results)} detections "
          f"(made in {time.perf_counter() - t0:.0f} s)")
    print(f"{'iou type':<9}{'pycocotools s':>15}{'faster_coco_eval s':>20}{'speed-up':>10}{'AP (both)':>18}")
    for iou_type in args.iou_types:
        seconds, aps = [], []
        for backend in ("pycocotools", "faster_coco_eval"):
            t0 = time.perf_counter()
            metrics = evaluate_coco(coco, results, (iou_type,), verbose=False, backend=backend)
            seconds.append(time.perf_counter() - t0)
            aps.append(metrics[iou_type]["AP"])
        print(f"{iou_type:<9}{seconds[0]:>15.1f}{seconds[1]:>20.1f}{seconds[0] / seconds[1]:>9.1f}x"
              f"{aps[0]:>9.2f} / {aps[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

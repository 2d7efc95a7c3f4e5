"""What a detector gets wrong, next to metrics.json (tools/eval_coco.py writes them into ``plots/``).

Shape shorthand: T IoU thresholds, R recall points (101), K classes, A area ranges, M max-detection
settings (pycocotools' ``eval["precision"]``, T x R x K x A x M); G ground-truth boxes and
D detections of one image.

- ``plot_pr_curves``: precision against recall per class at IoU 0.5 and 0.75, read from
  pycocotools' own accumulated ``precision`` array (area "all", 100 detections), not recomputed;
  the legend gives each class's AP at that IoU (the mean over the recall points, as COCO does).
- ``confusion_matrix``: detections scoring at least ``score_thresh`` matched one-to-one to the
  ground truth by IoU (highest score first, each to the unmatched gt box of highest IoU >= the
  IoU threshold, whatever the classes): rows are the gt class plus "background" (detections
  matching nothing), columns the detected class plus "background" (gt boxes nothing matched).
  Crowd boxes are left out.
- ``worst_images``: the images with the lowest recall at the score threshold (a gt box counts as
  found by a same-class detection with IoU >= the threshold), drawn with the ground truth
  left and the predictions right.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from common.visual import confusion_image, draw_instances

BACKGROUND = "background"


def coco_precision(gt: COCO, results: list[dict], iou_type: str = "bbox") -> tuple[np.ndarray, COCOeval]:
    """pycocotools' accumulated ``eval["precision"]`` (T, R, K, A, M) for ``results`` (quietly)."""
    import contextlib
    import io

    dets = copy.deepcopy(results)
    if iou_type == "segm":
        for d in dets:
            d.pop("bbox", None)  # area from the mask, as detection.evaluation does
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"], ev


def plot_pr_curves(gt: COCO, results: list[dict], out: str | Path, iou_type: str = "bbox") -> Path:
    """One PNG, two panels (IoU 0.5, 0.75): a line per class, its AP in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision, ev = coco_precision(gt, results, iou_type)
    recall = ev.params.recThrs                                               # (R,)
    names = [gt.cats[c]["name"] for c in ev.params.catIds]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, iou in zip(axes, (0.5, 0.75)):
        t = int(np.argmin(np.abs(ev.params.iouThrs - iou)))
        for k, name in enumerate(names):
            p = precision[t, :, k, 0, -1]                                   # (R,) area "all", most dets
            if (p < 0).all():  # no ground truth of this class
                continue
            ax.plot(recall, np.clip(p, 0, None), label=f"{name} (AP {100 * p[p >= 0].mean():.1f})")
        ax.set_title(f"{iou_type}, IoU {iou}")
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="lower left")
    axes[0].set_ylabel("precision")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    plt.close(fig)
    return out


def _xyxy(boxes: Sequence) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate((b[:, :2], b[:, :2] + b[:, 2:]), axis=1)         # xywh -> xyxy


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(G, 4), (D, 4) xyxy -> (G, D) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_image(gt_boxes: np.ndarray, gt_classes: np.ndarray, det_boxes: np.ndarray, det_classes: np.ndarray,
                det_scores: np.ndarray, iou_thresh: float, same_class: bool) -> np.ndarray:
    """One-to-one greedy matching, highest score first: (D,) index of each detection's gt (-1: none).

    ``same_class``: only a gt box of the detection's class can be matched (recall); otherwise
    any class (the confusion matrix).
    """
    matched = np.full(len(det_boxes), -1)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return matched
    iou = _iou(gt_boxes, det_boxes)                                         # (G, D)
    free = np.ones(len(gt_boxes), bool)
    for d in np.argsort(-det_scores, kind="stable"):
        ok = free & (iou[:, d] >= iou_thresh)
        if same_class:
            ok &= gt_classes == det_classes[d]
        if ok.any():
            g = int(np.argmax(np.where(ok, iou[:, d], -1.0)))
            matched[d] = g
            free[g] = False
    return matched


def _per_image(gt: COCO, results: list[dict], score_thresh: float):
    """Yield (image id, gt boxes, gt category ids, det boxes, det category ids, det scores)."""
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_thresh:
            by_image.setdefault(int(r["image_id"]), []).append(r)
    for image_id in sorted(gt.getImgIds()):
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
        dets = by_image.get(image_id, [])
        yield (image_id, _xyxy([a["bbox"] for a in anns]), np.array([a["category_id"] for a in anns], int),
               _xyxy([d["bbox"] for d in dets]), np.array([d["category_id"] for d in dets], int),
               np.array([d["score"] for d in dets], float))


def confusion_matrix(gt: COCO, results: list[dict], score_thresh: float = 0.5,
                     iou_thresh: float = 0.5) -> dict:
    """{"classes": names + ["background"], "counts": (K+1) x (K+1) list (rows gt, columns
    detections), "score_thresh", "iou_thresh"}; see the module docstring."""
    cat_ids = sorted(gt.getCatIds())
    index = {c: i for i, c in enumerate(cat_ids)}
    k = len(cat_ids)
    counts = np.zeros((k + 1, k + 1), dtype=np.int64)
    for _, gb, gc, db, dc, ds in _per_image(gt, results, score_thresh):
        matched = match_image(gb, gc, db, dc, ds, iou_thresh, same_class=False)
        for d, g in enumerate(matched):
            counts[index[gc[g]] if g >= 0 else k, index[dc[d]]] += 1
        for g in sorted(set(range(len(gb))) - set(matched.tolist())):
            counts[index[gc[g]], k] += 1                                    # missed: predicted background
    names = [gt.cats[c]["name"] for c in cat_ids]
    return {"classes": names + [BACKGROUND], "rows": "ground truth", "columns": "detections",
            "score_thresh": score_thresh, "iou_thresh": iou_thresh, "counts": counts.tolist()}


def image_recalls(gt: COCO, results: list[dict], score_thresh: float = 0.5,
                  iou_thresh: float = 0.5) -> list[tuple[int, float, int]]:
    """(image id, recall, gt count) of every image with ground truth, lowest recall first."""
    out = []
    for image_id, gb, gc, db, dc, ds in _per_image(gt, results, score_thresh):
        if len(gb):
            matched = match_image(gb, gc, db, dc, ds, iou_thresh, same_class=True)
            out.append((image_id, float((matched >= 0).sum()) / len(gb), len(gb)))
    return sorted(out, key=lambda x: (x[1], -x[2], x[0]))


def draw_side_by_side(image_rgb: np.ndarray, gt: COCO, image_id: int, results: list[dict],
                      score_thresh: float) -> np.ndarray:
    """(H, 2W + 8, 3): the ground truth (left) and the detections scoring >= score_thresh (right)."""
    cat_ids = sorted(gt.getCatIds())
    index = {c: i for i, c in enumerate(cat_ids)}
    names = [gt.cats[c]["name"] for c in cat_ids]
    anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
    dets = [r for r in results if int(r["image_id"]) == image_id and r["score"] >= score_thresh]
    left = draw_instances(image_rgb, boxes=_xyxy([a["bbox"] for a in anns]),
                          labels=np.array([index[a["category_id"]] for a in anns], int), class_names=names)
    right = draw_instances(image_rgb, boxes=_xyxy([d["bbox"] for d in dets]),
                           labels=np.array([index[d["category_id"]] for d in dets], int),
                           scores=np.array([d["score"] for d in dets], float), class_names=names)
    gap = np.full((image_rgb.shape[0], 8, 3), 255, np.uint8)
    out = np.concatenate((left, gap, right), axis=1)
    for x, text in ((4, "ground truth"), (left.shape[1] + 12, f"detections >= {score_thresh}")):
        cv2.putText(out, text, (x, out.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_diagnostics(gt: COCO, results: list[dict], out_dir: str | Path, image_root: str | Path | None = None,
                      iou_types: Sequence[str] = ("bbox",), score_thresh: float = 0.5, iou_thresh: float = 0.5,
                      num_worst: int = 6) -> list[Path]:
    """Write into ``out_dir``: ``pr_<iou type>.png`` per iou type, ``confusion_matrix.json`` and
    ``.png``, and (with ``image_root``, the images' folder) ``worst/<rank>_<file>.jpg``.
    Returns the paths written. No results: only the confusion matrix (every gt box missed)."""
    from detection.data import read_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if results:
        for t in iou_types:
            if t in ("bbox", "segm") and (t == "bbox" or any("segmentation" in r for r in results)):
                written.append(plot_pr_curves(gt, results, out_dir / f"pr_{t}.png", t))
    cm = confusion_matrix(gt, results, score_thresh, iou_thresh)
    (out_dir / "confusion_matrix.json").write_text(json.dumps(cm, indent=1) + "\n")
    picture = confusion_image(np.asarray(cm["counts"]), cm["classes"])
    band = np.full((34, picture.shape[1], 3), 255, np.uint8)  # what the rows and columns are
    for y, text in ((13, "rows: ground truth, columns: detections (% of row)"),
                    (28, f"score >= {score_thresh}, IoU >= {iou_thresh}, one-to-one")):
        cv2.putText(band, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    picture = np.concatenate((picture, band), axis=0)
    cv2.imwrite(str(out_dir / "confusion_matrix.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    written += [out_dir / "confusion_matrix.json", out_dir / "confusion_matrix.png"]
    if image_root is not None and num_worst > 0:
        (out_dir / "worst").mkdir(exist_ok=True)
        for rank, (image_id, recall, n) in enumerate(image_recalls(gt, results, score_thresh, iou_thresh)[:num_worst]):
            info = gt.imgs[image_id]
            image = read_image(Path(image_root) / info["file_name"], image_id)
            path = out_dir / "worst" / f"{rank:02d}_recall{round(100 * recall):03d}_{Path(info['file_name']).stem}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(draw_side_by_side(image, gt, image_id, results, score_thresh),
                                                cv2.COLOR_RGB2BGR))
            written.append(path)
    return written

"""Semantic segmentation metrics from a confusion matrix, plus boundary IoU.

Shape shorthand: K classes, H x W one label map. ``cm[g, p]`` counts pixels of ground-truth
class g predicted as p; pixels labelled ``ignore_index`` count nowhere.

From the confusion matrix (Long et al. 2015, section 5):
    IoU_c       = cm[c, c] / (sum_p cm[c, p] + sum_g cm[g, c] - cm[c, c])
    mIoU        = mean of IoU_c over classes with a non-empty union (present in gt or prediction)
    pixel_acc   = trace(cm) / sum(cm)
    fwIoU       = sum_c (gt pixels of c / all pixels) * IoU_c

Boundary IoU (Cheng et al., CVPR 2021), per class c with a band of ``d`` = 3 pixels:
    G_d = gt pixels of c within d pixels of the contour of the gt mask of c (inside the mask),
    P_d = the same for the predicted mask, and
    boundary_IoU_c = |G_d & P_d| / |G_d | P_d|, intersections and unions summed over the dataset,
    then averaged over classes with a non-empty union. The band is the mask minus its erosion by
    a (2d+1) square; the image frame is not a contour (replicate padding), so a class filling the
    border is not rewarded for it. Ignored pixels are removed from both masks.
All reported values are in percent (0-100).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from common.visual import confusion_image  # noqa: F401  (moved to common: detection draws one too)


def confusion_matrix(pred: Tensor, gt: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """(K, K) int64 counts; pred and gt are label tensors of the same shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction of shape {tuple(pred.shape)} and ground truth of shape "
                         f"{tuple(gt.shape)} differ")
    valid = gt != ignore_index
    g, p = gt[valid].long(), pred[valid].long()
    bad = (g < 0) | (g >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"ground-truth label {int(g[bad][0])} is outside 0..{num_classes - 1} and "
                         f"not the ignore index {ignore_index}")
    return torch.bincount(g * num_classes + p, minlength=num_classes ** 2).view(num_classes, num_classes).cpu()


def iou_per_class(cm: Tensor | np.ndarray) -> np.ndarray:
    """(K,) IoU in [0, 1]; NaN for classes absent from both gt and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def segmentation_metrics(cm: Tensor | np.ndarray, class_names: list[str] | None = None) -> dict:
    """mIoU, pixel_acc, fwIoU and per_class_IoU (percent) from a (K, K) confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    names = class_names or [str(i) for i in range(k)]
    iou = iou_per_class(cm)
    total = cm.sum()
    gt_freq = cm.sum(1) / max(total, 1)
    seen = ~np.isnan(iou)
    return {
        "mIoU": 100 * float(np.mean(iou[seen])) if seen.any() else float("nan"),
        "pixel_acc": 100 * float(np.trace(cm) / total) if total else float("nan"),
        "fwIoU": 100 * float(np.sum(gt_freq[seen] * iou[seen])),
        "per_class_IoU": {n: (100 * float(v) if not math.isnan(v) else float("nan")) for n, v in zip(names, iou)},
    }


def boundary_band(mask: np.ndarray, d: int = 3) -> np.ndarray:
    """(H, W) bool: pixels of ``mask`` within ``d`` pixels of its contour (image frame excluded)."""
    m = mask.astype(np.uint8)
    kernel = np.ones((2 * d + 1, 2 * d + 1), np.uint8)
    eroded = cv2.erode(m, kernel, borderType=cv2.BORDER_REPLICATE)
    return (m > 0) & (eroded == 0)


def boundary_stats(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255,
                   d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per-class boundary intersection and union (K,) int64 for one (H, W) label map pair."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    valid = gt != ignore_index
    inter = np.zeros(num_classes, np.int64)
    union = np.zeros(num_classes, np.int64)
    for c in range(num_classes):
        g, p = gt == c, (pred == c) & valid
        if not g.any() and not p.any():
            continue
        gb = boundary_band(g, d) & valid
        pb = boundary_band(p, d) & valid
        inter[c] = np.count_nonzero(gb & pb)
        union[c] = np.count_nonzero(gb | pb)
    return inter, union


class SemSegEvaluator:
    """Accumulates a confusion matrix and boundary statistics over a dataset.

    ``process(predictions, targets)`` with the model's per-image ``sem_seg`` (h, w) and the
    targets' ``sem_seg`` (h, w); ``summarize()`` -> the metrics dict of ARCHITECTURE.md.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None, ignore_index: int = 255,
                 boundary_width: int = 3):
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.ignore_index = ignore_index
        self.boundary_width = boundary_width
        self.reset()

    def reset(self) -> None:
        self.cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.b_inter = np.zeros(self.num_classes, np.int64)
        self.b_union = np.zeros(self.num_classes, np.int64)

    def process(self, predictions: list[dict], targets: list[dict]) -> None:
        for pred, tgt in zip(predictions, targets):
            p, g = pred["sem_seg"].cpu(), tgt["sem_seg"].cpu()
            self.cm += confusion_matrix(p, g, self.num_classes, self.ignore_index)
            i, u = boundary_stats(p.numpy(), g.numpy(), self.num_classes, self.ignore_index, self.boundary_width)
            self.b_inter += i
            self.b_union += u

    def summarize(self) -> dict:
        out = segmentation_metrics(self.cm, self.class_names)
        seen = self.b_union > 0
        out["boundary_IoU"] = 100 * float(np.mean(self.b_inter[seen] / self.b_union[seen])) if seen.any() else float("nan")
        # keep per-class IoU last, as in ARCHITECTURE.md
        out["per_class_IoU"] = out.pop("per_class_IoU")
        return out

    def save(self, out_dir: str | Path, metrics: dict | None = None, json_name: str = "metrics.json",
             plots_dir: str | Path | None = None) -> dict:
        """Write ``metrics.json`` to ``out_dir`` and ``confusion_matrix.png`` (row-normalised) to
        ``plots_dir`` (default ``out_dir``), with ``confusion_matrix.json`` (pixel counts, rows =
        ground truth) beside it when ``plots_dir`` is given; returns the metrics."""
        out_dir = Path(out_dir)
        plots = Path(plots_dir) if plots_dir is not None else out_dir
        for d in (out_dir, plots):
            d.mkdir(parents=True, exist_ok=True)
        metrics = metrics or self.summarize()
        (out_dir / json_name).write_text(json.dumps(_nan_to_none(metrics), indent=2, allow_nan=False))
        cv2.imwrite(str(plots / "confusion_matrix.png"),
                    cv2.cvtColor(confusion_image(self.cm, self.class_names), cv2.COLOR_RGB2BGR))
        if plots_dir is not None:
            counts = {"classes": list(self.class_names), "rows": "ground truth", "columns": "prediction",
                      "counts": np.asarray(self.cm).astype(np.int64).tolist()}
            (plots / "confusion_matrix.json").write_text(json.dumps(counts, indent=1) + "\n")
        return metrics


def _nan_to_none(d):
    """NaN (a class never seen in gt or prediction) -> null, so the file is strict JSON."""
    if isinstance(d, dict):
        return {k: _nan_to_none(v) for k, v in d.items()}
    return None if isinstance(d, float) and math.isnan(d) else d


@torch.no_grad()
def evaluate_model(model, loader, evaluator: SemSegEvaluator, device, on_batch=None) -> dict:
    """Run ``model`` (eval mode) over ``loader``; metrics plus the validation loss in one pass.

    loader yields (ImageList, targets); ``on_batch(images, targets, predictions)`` (optional)
    sees every batch, e.g. to draw a few. Returns the summary of ``evaluator`` with
    ``{"val": {"loss_seg": mean}}`` added.
    """
    was_training = model.training
    model.eval()
    evaluator.reset()
    loss_sum, batches = 0.0, 0
    for images, targets in loader:
        labels = [{"sem_seg": t["sem_seg"].to(device)} for t in targets]
        preds, losses = model(images.to(device), labels)
        evaluator.process(preds, targets)
        loss_sum += float(losses["loss_seg"])
        batches += 1
        if on_batch is not None:
            on_batch(images, targets, preds)
    model.train(was_training)
    out = evaluator.summarize()
    out["val"] = {"loss_seg": loss_sum / max(batches, 1)}
    return out


class PredictionDrawer:
    """``on_batch`` callback for :func:`evaluate_model`: writes ground truth | prediction side by
    side (``common.visual.draw_semantic``) for the first ``limit`` images as ``vis_XX_<id>.jpg``."""

    def __init__(self, out_dir: str | Path, class_names: list[str], ignore_index: int = 255, limit: int = 4):
        self.out_dir = Path(out_dir)
        self.class_names = class_names
        self.ignore_index = ignore_index
        self.limit = limit
        self.written: list[Path] = []

    def __call__(self, images, targets: list[dict], predictions: list[dict]) -> None:
        from common.visual import draw_semantic

        for i, (t, p) in enumerate(zip(targets, predictions)):
            if len(self.written) >= self.limit:
                return
            h, w = images.image_sizes[i]
            # (3, h, w) in [0, 1] -> (h, w, 3) uint8 RGB
            img = (images.tensor[i, :, :h, :w].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            gt = draw_semantic(img, t["sem_seg"].cpu().numpy(), self.class_names, self.ignore_index)
            pr = draw_semantic(img, p["sem_seg"].cpu().numpy(), self.class_names, self.ignore_index)
            hh = max(gt.shape[0], pr.shape[0])
            both = np.concatenate([np.pad(a, ((0, hh - a.shape[0]), (0, 0), (0, 0)), constant_values=255)
                                   for a in (gt, pr)], axis=1)
            path = self.out_dir / f"vis_{len(self.written):02d}_{t.get('image_id', i)}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.ascontiguousarray(both[:, :, ::-1]))
            self.written.append(path)

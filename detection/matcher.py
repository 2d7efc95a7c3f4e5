"""Matching predictions (anchors or proposals) to ground-truth boxes by IoU.

Shape shorthand: M ground-truth boxes, R predictions.

Every prediction gets the index of its best ground-truth box, or one of two negative codes:
    BELOW_LOW_THRESHOLD  = -1   bg_floor <= best IoU < low:   background
    BETWEEN_THRESHOLDS   = -2   low <= best IoU < high:       ignored (neither trained as fg nor bg)
                                best IoU < bg_floor:          ignored too (the Fast R-CNN paper's
                                                              background band [0.1, 0.5): the
                                                              easiest negatives are not sampled)
"""
from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(iou: Tensor, high: float, low: float, allow_low_quality_matches: bool = False,
          bg_floor: float = 0.0) -> Tensor:
    """(M, R) IoU matrix -> (R,) int64 matched gt index, or -1 (background) / -2 (ignored).

    Best IoU >= ``high``: matched; in [``bg_floor``, ``low``): background; otherwise ignored.

    ``allow_low_quality_matches`` (the RPN rule of Faster R-CNN): every ground-truth box also
    claims the predictions with which it has its highest IoU (ties included), even below
    ``high``, so that no gt box is left without a match.
    With no ground truth (M = 0) every prediction has IoU 0: background, or ignored when
    ``bg_floor`` > 0.
    """
    if not bg_floor <= low <= high:
        raise ValueError(f"matcher thresholds must satisfy bg_floor <= low <= high, got bg_floor={bg_floor}, "
                         f"low={low}, high={high}")
    num_preds = iou.shape[1]
    if iou.shape[0] == 0:
        code = BELOW_LOW_THRESHOLD if bg_floor <= 0 else BETWEEN_THRESHOLDS
        return torch.full((num_preds,), code, dtype=torch.int64, device=iou.device)
    best_iou, matches = iou.max(dim=0)  # (R,), (R,)
    result = matches.clone()
    result[best_iou < high] = BETWEEN_THRESHOLDS
    result[best_iou < low] = BELOW_LOW_THRESHOLD
    if bg_floor > 0:
        result[best_iou < bg_floor] = BETWEEN_THRESHOLDS
    if allow_low_quality_matches:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # (M, 1)
        # only real overlaps count: a gt with IoU 0 everywhere claims nothing
        gt_idx, pred_idx = ((iou == best_per_gt) & (best_per_gt > 0)).nonzero(as_tuple=True)
        result[pred_idx] = matches[pred_idx]
    return result

"""Elementary operations on boxes (area, clipping and NMS come from ``torchvision.ops``).

Shape shorthand: R boxes, M other boxes. Boxes are (R, 4) float xyxy in absolute pixels.
"""
from __future__ import annotations

from torch import Tensor
from torchvision.ops import box_iou


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(M, 4), (R, 4) xyxy -> (M, R) intersection over union (0 where a union is empty)."""
    if boxes1.numel() == 0 or boxes2.numel() == 0:
        return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]))
    return box_iou(boxes1, boxes2).nan_to_num_(0.0)


def nonempty(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """(R,) bool: boxes whose width and height are both > ``min_size``.

    Not ``torchvision.ops.remove_small_boxes``: that keeps sides >= min_size (so zero-width boxes
    at min_size 0) and returns indices; callers here combine this mask with finiteness checks.
    """
    wh = boxes[:, 2:] - boxes[:, :2]
    return (wh[:, 0] > min_size) & (wh[:, 1] > min_size)

"""Elementary operations on boxes.

Shape shorthand: R boxes, M other boxes. Boxes are (R, 4) float xyxy in absolute pixels.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


def box_area(boxes: Tensor) -> Tensor:
    """(R, 4) xyxy -> (R,) areas; degenerate boxes have area 0."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return wh[:, 0] * wh[:, 1]


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(M, 4), (R, 4) xyxy -> (M, R) intersection over union (0 where a union is empty)."""
    if boxes1.numel() == 0 or boxes2.numel() == 0:
        return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]))
    return box_iou(boxes1, boxes2).nan_to_num_(0.0)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip (..., 4) xyxy boxes to an image of size (h, w); returns a new tensor."""
    h, w = image_size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    # interleave back to x1, y1, x2, y2
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def nonempty(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """(R,) bool: boxes whose width and height are both > ``min_size``."""
    wh = boxes[:, 2:] - boxes[:, :2]
    return (wh[:, 0] > min_size) & (wh[:, 1] > min_size)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """(R,) int64 indices of the boxes whose width and height are both >= ``min_size``."""
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = (wh[:, 0] >= min_size) & (wh[:, 1] >= min_size)
    return keep.nonzero().squeeze(1)

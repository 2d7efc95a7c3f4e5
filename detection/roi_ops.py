"""RoIAlign / RoIPool (placeholder: calls torchvision.ops; a fast CPU path follows)."""
from __future__ import annotations

import torch
from torch import Tensor
import torchvision.ops


def roi_align(input: Tensor, boxes, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """Same semantics as ``torchvision.ops.roi_align``: (N,C,H,W) x (R,5) -> (R,C,PH,PW)."""
    return torchvision.ops.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def roi_pool(input: Tensor, boxes, output_size, spatial_scale: float = 1.0) -> Tensor:
    """Same semantics as ``torchvision.ops.roi_pool``: (N,C,H,W) x (R,5) -> (R,C,PH,PW)."""
    return torchvision.ops.roi_pool(input, boxes, output_size, spatial_scale)

"""RoI feature pooling: one fixed-size feature map per box, from one level (C4) or from the FPN
level that matches the box's size.

Shape shorthand: N images, R boxes in the batch (R_i per image), C channels, S the output size,
L levels.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from detection.roi_ops import roi_align, roi_pool  # fast CPU path; torchvision's kernels elsewhere


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """N tensors (R_i, 4) -> (R, 5) rows (image index, x1, y1, x2, y2)."""
    idx = torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat((idx, torch.cat(boxes)), dim=1)


def assign_levels(boxes: Tensor, min_level: int, max_level: int, canonical_size: float = 224.0,
                  canonical_level: int = 4) -> Tensor:
    """FPN paper, eq. 1: k = floor(k0 + log2(sqrt(wh) / 224)), clamped to [min_level, max_level].

    boxes (R, 4) xyxy -> (R,) int64 level index relative to ``min_level`` (0 = finest).
    Computed in float32 whatever the boxes' dtype.
    """
    boxes = boxes.float()
    size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    level = torch.floor(canonical_level + torch.log2(size / canonical_size + 1e-8))
    return (level.clamp(min=min_level, max=max_level) - min_level).to(torch.int64)


class RoIPooler(nn.Module):
    """Pool (C, S, S) features for every box with RoIAlign or RoIPool."""

    def __init__(self, output_size: int, scales: list[float], sampling_ratio: int = 0,
                 kind: str = "align", aligned: bool = True, canonical_box_size: float = 224.0,
                 canonical_level: int = 4):
        """scales: 1 / stride of each input level, finest first (one entry: single-level pooling).
        sampling_ratio: RoIAlign samples per bin side (<= 0: adaptive). aligned: the half-pixel
        corrected RoIAlign of Detectron2 (ignored by RoIPool)."""
        super().__init__()
        if kind not in ("align", "pool"):
            raise ValueError(f"RoIPooler kind must be 'align' or 'pool', got {kind!r}")
        self.output_size = int(output_size)
        self.scales = [float(s) for s in scales]
        levels = [-math.log2(s) for s in self.scales]
        if any(abs(l - round(l)) > 1e-6 for l in levels):
            raise ValueError(f"RoIPooler scales must be powers of 1/2, got {self.scales}")
        self.min_level, self.max_level = round(levels[0]), round(levels[-1])
        if len(scales) > 1 and self.max_level - self.min_level != len(scales) - 1:
            raise ValueError(f"RoIPooler scales must be consecutive FPN levels, got {self.scales}")
        self.sampling_ratio = sampling_ratio
        self.kind = kind
        self.aligned = aligned
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def settings(self) -> tuple:
        """Everything that decides the output: two poolers with equal settings pool alike."""
        return (self.output_size, tuple(self.scales), self.sampling_ratio, self.kind, self.aligned,
                self.canonical_box_size, self.canonical_level)

    def _pool(self, x: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.kind == "pool":
            return roi_pool(x, rois, (self.output_size, self.output_size), scale)
        return roi_align(x, rois, (self.output_size, self.output_size), scale, self.sampling_ratio, self.aligned)

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """features: L maps (N, C, Hl, Wl), finest first; boxes: N tensors (R_i, 4) xyxy image
        pixels -> (R, C, S, S), rows in the order of the concatenated boxes."""
        if len(features) != len(self.scales):
            raise ValueError(f"RoIPooler has {len(self.scales)} scales but got {len(features)} feature maps")
        # boxes and level assignment stay float32 under autocast: w * h overflows float16 above
        # 65504 px^2 and bf16 rounds a 300 px coordinate to 2 px; the features are pooled in float32
        rois = boxes_to_rois([b.float() for b in boxes])  # (R, 5)
        features = [x.float() for x in features]
        if len(features) == 1:
            return self._pool(features[0], rois, self.scales[0])
        levels = assign_levels(rois[:, 1:], self.min_level, self.max_level, self.canonical_box_size,
                               self.canonical_level)
        x0 = features[0]
        out = x0.new_zeros((len(rois), x0.shape[1], self.output_size, self.output_size))
        for lvl, (x, scale) in enumerate(zip(features, self.scales)):
            idx = (levels == lvl).nonzero().squeeze(1)
            if idx.numel() > 0:
                out.index_put_((idx,), self._pool(x, rois[idx], scale))
        return out

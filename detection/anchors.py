"""Anchor boxes: a grid of reference boxes per feature level (Faster R-CNN, FPN).

Shape shorthand: L levels, A anchors per location (sizes x aspect ratios), Hl x Wl the size of
level l. Anchors are xyxy in image pixels, ordered (Hl, Wl, A) row-major within a level, the
same order in which the RPN head's outputs are flattened.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def base_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
    """(A, 4) anchors centred on (0, 0), A = len(sizes) * len(aspect_ratios), ordered size-major.

    An anchor of size s and aspect ratio r (= h / w) has area s^2: w = s / sqrt(r), h = s * sqrt(r).
    """
    out = []
    for s in sizes:
        for r in aspect_ratios:
            w = s / math.sqrt(r)
            h = s * math.sqrt(r)
            out.append((-w / 2, -h / 2, w / 2, h / 2))
    return torch.tensor(out, dtype=torch.float32)


def shifted_anchors(cell: Tensor, stride: int, offset: float, height: int, width: int) -> Tensor:
    """(A, 4) cell anchors placed at every location of a height x width map -> (H*W*A, 4),
    ordered (H, W, A); centres at (i + offset) * stride. Uncached (traceable: the sizes may be
    traced values, see detection/export.py)."""
    xs = (torch.arange(width, dtype=torch.float32, device=cell.device) + offset) * stride
    ys = (torch.arange(height, dtype=torch.float32, device=cell.device) + offset) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
    return (shifts + cell.reshape(1, -1, 4)).reshape(-1, 4)           # (H*W*A, 4)


class AnchorGenerator(nn.Module):
    """Anchors for every location of every feature level; cached per (level, size, device)."""

    def __init__(self, sizes: tuple[tuple[float, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...],
                 strides: tuple[int, ...], offset: float = 0.0):
        """sizes[l], aspect_ratios[l]: anchor sizes (sqrt of area, pixels) and h/w ratios of level l
        (a single entry in ``aspect_ratios`` is used for every level); strides[l]: its stride;
        offset: anchor centres sit at (i + offset) * stride."""
        super().__init__()
        if len(aspect_ratios) == 1:
            aspect_ratios = tuple(aspect_ratios) * len(sizes)
        if not (len(sizes) == len(aspect_ratios) == len(strides)):
            raise ValueError(f"anchor sizes ({len(sizes)} levels), aspect ratios ({len(aspect_ratios)}) "
                             f"and feature strides ({len(strides)}) must have one entry per level")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"anchor offset must be in [0, 1), got {offset}")
        self.strides = tuple(int(s) for s in strides)
        self.offset = offset
        self.cell_anchors = [base_anchors(tuple(s), tuple(r)) for s, r in zip(sizes, aspect_ratios)]
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> list[int]:
        return [len(c) for c in self.cell_anchors]

    def grid_anchors(self, level: int, height: int, width: int, device: torch.device) -> Tensor:
        """(height * width * A, 4) anchors of one level, ordered (H, W, A)."""
        key = (level, height, width, str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        anchors = shifted_anchors(self.cell_anchors[level].to(device), self.strides[level], self.offset,
                                  height, width)
        if len(self._cache) > 64:  # many input sizes (multi-scale training): keep memory bounded
            self._cache.clear()
        self._cache[key] = anchors
        return anchors

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """L feature maps (N, C, Hl, Wl) -> L tensors (Hl * Wl * A, 4), the same for every image."""
        if len(features) != len(self.cell_anchors):
            raise ValueError(f"anchor generator has {len(self.cell_anchors)} levels but got "
                             f"{len(features)} feature maps")
        return [self.grid_anchors(l, f.shape[-2], f.shape[-1], f.device) for l, f in enumerate(features)]


def anchors_for_boxes(sides: Tensor, ratios_hw: Tensor, strides: list[int]) -> tuple[tuple[tuple[float, ...], ...],
                                                                                    tuple[float, ...]]:
    """One anchor size per level and a shared set of aspect ratios that cover a dataset's boxes.

    sides (M,) sqrt(w * h) of the training boxes in the pixels the model sees, ratios_hw (M,)
    their h / w; strides: the L levels' strides, finest first. Sizes double from level to level
    (the FPN convention) from the power of two nearest the 5th percentile side, moved up if the
    coarsest level would otherwise end more than sqrt(2) below the 99th percentile, and never
    below the finest stride. Ratios: (0.5, 1, 2), widened to the 10th / 90th percentile h / w
    when the boxes are more elongated than that.
    """
    if len(sides) == 0:
        raise ValueError("anchors_for_boxes: no training boxes")
    levels = len(strides)
    lo, hi = torch.quantile(sides.float(), torch.tensor([0.05, 0.99])).tolist()
    exp = round(math.log2(max(lo, 1.0)))
    exp = max(exp, math.ceil(math.log2(max(hi / math.sqrt(2), 1.0))) - (levels - 1), math.ceil(math.log2(strides[0])))
    sizes = tuple((float(2 ** (exp + l)),) for l in range(levels))
    r10, r90 = torch.quantile(ratios_hw.float(), torch.tensor([0.10, 0.90])).tolist()
    ratios = (round(min(0.5, r10), 2), 1.0, round(max(2.0, r90), 2))
    return sizes, ratios

"""Box regression deltas (R-CNN parameterisation).

Shape shorthand: R boxes, K classes.

A box (x1, y1, x2, y2) is encoded against a reference box (proposal or anchor) as
    dx = wx * (cx - cx_ref) / w_ref     dw = ww * log(w / w_ref)
    dy = wy * (cy - cy_ref) / h_ref     dh = wh * log(h / h_ref)
The RoI heads use weights (10, 10, 5, 5) and the RPN (1, 1, 1, 1). On decoding, dw/dh are
clamped at log(1000 / 16) so that one bad prediction cannot overflow exp().
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class BoxCoder:
    """Encode boxes as deltas against reference boxes and back."""

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    scale_clamp: float = DEFAULT_SCALE_CLAMP

    def encode(self, boxes: Tensor, reference: Tensor) -> Tensor:
        """(R, 4) target boxes, (R, 4) reference boxes, xyxy -> (R, 4) deltas."""
        wx, wy, ww, wh = self.weights
        ref = reference.float()
        boxes = boxes.float()
        rw = ref[:, 2] - ref[:, 0]
        rh = ref[:, 3] - ref[:, 1]
        rx = ref[:, 0] + 0.5 * rw
        ry = ref[:, 1] + 0.5 * rh
        bw = boxes[:, 2] - boxes[:, 0]
        bh = boxes[:, 3] - boxes[:, 1]
        bx = boxes[:, 0] + 0.5 * bw
        by = boxes[:, 1] + 0.5 * bh
        return torch.stack((wx * (bx - rx) / rw, wy * (by - ry) / rh,
                            ww * torch.log(bw / rw), wh * torch.log(bh / rh)), dim=1)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """(R, 4k) deltas (k boxes per reference, e.g. one per class), (R, 4) xyxy reference
        boxes -> (R, 4k) xyxy float32 boxes (float32 whatever the deltas' dtype: a float16 x of
        1000.3 would come out as 1000.0)."""
        deltas = deltas.float()
        ref = reference.float()
        rw = (ref[:, 2] - ref[:, 0])[:, None]
        rh = (ref[:, 3] - ref[:, 1])[:, None]
        rx = ref[:, 0:1] + 0.5 * rw
        ry = ref[:, 1:2] + 0.5 * rh
        wx, wy, ww, wh = self.weights
        # deltas (R, 4k): columns dx, dy, dw, dh repeat every 4
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        cx = dx * rw + rx
        cy = dy * rh + ry
        w = torch.exp(dw) * rw
        h = torch.exp(dh) * rh
        # (R, k, 4) -> (R, 4k)
        out = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=2)
        return out.reshape(deltas.shape)

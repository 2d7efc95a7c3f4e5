"""The Keypoint R-CNN branch: a conv stack on pooled RoI features predicting one heatmap per
keypoint, trained with a softmax over heatmap positions, decoded at the argmax.

Shape shorthand: R RoIs, C channels, P keypoints, S heatmap size (4x the pooled size: a 2x
deconv and a 2x bilinear upsample), M gt instances.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detection.box_head import conv_stack


class KeypointRCNNHead(nn.Module):
    """``num_convs`` 3x3 convs, a 4x4 stride-2 deconv to P maps, then 2x bilinear upsampling."""

    def __init__(self, in_channels: int, num_keypoints: int, conv_dim: int = 512, num_convs: int = 8,
                 norm: str = ""):
        super().__init__()
        self.num_keypoints = num_keypoints  # P: heatmaps per RoI (roi_heads sizes its outputs by it)
        self.convs, ch = conv_stack(in_channels, conv_dim, num_convs, norm)
        self.deconv = nn.ConvTranspose2d(ch, num_keypoints, 4, stride=2, padding=1)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S/4, S/4) -> (R, P, S, S) heatmap logits."""
        x = self.deconv(self.convs(x))
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


@torch.no_grad()
def keypoint_targets(gt_keypoints: Tensor, matched_idxs: Tensor, boxes: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The heatmap cell of every visible keypoint inside its RoI.

    gt_keypoints (M, P, 3) (x, y, visibility) in image pixels, matched_idxs (R,), boxes (R, 4)
    -> flat cell index y * S + x (R, P) int64 and valid (R, P) bool (visible and inside the box).
    """
    kp = gt_keypoints[matched_idxs]                                        # (R, P, 3)
    x0, y0, x1, y1 = (boxes[:, i:i + 1] for i in range(4))                 # (R, 1) each
    x = ((kp[..., 0] - x0) * (size / (x1 - x0).clamp(min=1e-6))).floor()
    y = ((kp[..., 1] - y0) * (size / (y1 - y0).clamp(min=1e-6))).floor()
    # a keypoint exactly on the right/bottom edge belongs to the last cell
    x = torch.where(kp[..., 0] == x1, torch.full_like(x, size - 1), x)
    y = torch.where(kp[..., 1] == y1, torch.full_like(y, size - 1), y)
    valid = (kp[..., 2] > 0) & (x >= 0) & (x < size) & (y >= 0) & (y < size)
    index = (y * size + x).clamp(0, size * size - 1).to(torch.int64)
    return torch.where(valid, index, torch.zeros_like(index)), valid


def keypoint_loss(heatmaps: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Cross-entropy over the S*S positions of each valid keypoint's heatmap, mean over them.

    heatmaps (R, P, S, S) logits, targets (R, P) flat cell indices, valid (R, P) bool.
    """
    heatmaps = heatmaps.float()  # the loss in float32
    r, p, s, _ = heatmaps.shape
    logits = heatmaps.reshape(r * p, s * s)                               # one softmax per keypoint map
    keep = valid.reshape(-1)
    zero = heatmaps.sum() * 0.0                                            # keeps the head in the graph
    if not bool(keep.any()):
        return zero
    return F.cross_entropy(logits[keep], targets.reshape(-1)[keep]) + zero


@torch.no_grad()
def heatmaps_to_keypoints(heatmaps: Tensor, boxes: Tensor, subpixel: bool = True) -> Tensor:
    """Decode each heatmap's argmax to image coordinates.

    heatmaps (R, P, S, S) logits, boxes (R, 4) xyxy -> (R, P, 3) (x, y, score) where score is the
    spatial-softmax probability at the peak. ``subpixel`` refines the peak by fitting a parabola
    through it and its two neighbours along each axis (offset clamped to half a cell).
    """
    r, p, s, _ = heatmaps.shape
    if r == 0:
        return heatmaps.new_zeros((0, p, 3))
    flat = heatmaps.reshape(r, p, s * s).float()
    probs = flat.softmax(dim=-1)
    score, idx = probs.max(dim=-1)                                         # (R, P)
    iy = torch.div(idx, s, rounding_mode="floor").float()
    ix = (idx % s).float()
    if subpixel:
        hm = heatmaps.reshape(r * p, s, s).float()
        cy, cx = iy.reshape(-1).long(), ix.reshape(-1).long()
        n = torch.arange(r * p, device=hm.device)

        def offset(c: Tensor, along_x: bool) -> Tensor:
            lo, hi = (c - 1).clamp(min=0), (c + 1).clamp(max=s - 1)
            f0 = hm[n, cy, cx]
            fm = hm[n, cy, lo] if along_x else hm[n, lo, cx]
            fp = hm[n, cy, hi] if along_x else hm[n, hi, cx]
            denom = fm - 2 * f0 + fp
            d = torch.where(denom < 0, 0.5 * (fm - fp) / denom.clamp(max=-1e-6), torch.zeros_like(f0))
            d = torch.where((c == 0) | (c == s - 1), torch.zeros_like(d), d)
            return d.clamp(-0.5, 0.5)

        ix = ix + offset(cx, True).view(r, p)
        iy = iy + offset(cy, False).view(r, p)
    x0, y0 = boxes[:, 0:1], boxes[:, 1:2]
    bw = (boxes[:, 2:3] - x0).clamp(min=1e-6)
    bh = (boxes[:, 3:4] - y0).clamp(min=1e-6)
    x = x0 + (ix + 0.5) * bw / s                                           # cell centre -> image pixels
    y = y0 + (iy + 0.5) * bh / s
    return torch.stack((x, y, score), dim=-1)

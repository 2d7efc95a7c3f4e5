"""The Mask R-CNN mask branch: a small FCN on pooled RoI features predicting one S x S mask per
class, its loss, and pasting predicted masks back into the image.

Shape shorthand: R RoIs, C channels, S mask size (2x the pooled size), K classes, M gt
instances, H x W the image the model sees.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from detection.box_head import conv_stack
from detection.roi_ops import roi_align


class MaskRCNNHead(nn.Module):
    """``num_convs`` 3x3 convs, a 2x2 stride-2 deconv, then a 1x1 conv to K mask logits.

    ``trunk`` (optional) runs first: the C4 model passes the res5 stage shared with the box head.
    """

    def __init__(self, in_channels: int, num_classes: int, conv_dim: int = 256, num_convs: int = 4,
                 norm: str = "", trunk: nn.Module | None = None):
        super().__init__()
        self.trunk = trunk
        self.convs, ch = conv_stack(in_channels, conv_dim, num_convs, norm)
        self.deconv = nn.ConvTranspose2d(ch, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S/2, S/2) pooled features -> (R, K, S, S) mask logits."""
        if self.trunk is not None:
            x = self.trunk(x)
        return self.predictor(F.relu(self.deconv(self.convs(x))))


@torch.no_grad()
def mask_targets(gt_masks: Tensor, matched_idxs: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop each RoI's matched gt mask to the RoI and resize it to S x S (RoIAlign, then >= 0.5).

    gt_masks (M, H, W) uint8/bool/float, matched_idxs (R,) int64 into M, boxes (R, 4) xyxy
    -> (R, S, S) float32 in {0, 1}.
    """
    if len(boxes) == 0:
        return boxes.new_zeros((0, size, size))
    # the matched gt masks act as a batch of M' <= M one-channel images (only those are made
    # float: full-resolution copies); each RoI reads its own. torchvision's kernel, not ours: its
    # forward costs R x S x S x samples whatever the mask size, ours builds per-RoI weights over
    # the full H and W (on one COCO-size image: 42 ms against 818 ms, the same targets)
    used, image = matched_idxs.unique(return_inverse=True)  # (M',) gt indices, (R,) into them
    rois = torch.cat((image[:, None].to(boxes.dtype), boxes), dim=1)   # (R, 5)
    masks = gt_masks[used][:, None].to(boxes.dtype)  # (M', 1, H, W)
    crops = torchvision.ops.roi_align(masks, rois, (size, size), 1.0, 0, True)  # (R, 1, S, S)
    return (crops[:, 0] >= 0.5).float()


def mask_loss(mask_logits: Tensor, gt_classes: Tensor, targets: Tensor) -> Tensor:
    """Per-pixel BCE on the mask of each RoI's gt class (the only one trained), mean over pixels.

    mask_logits (R, K, S, S) (K = 1: class-agnostic), gt_classes (R,), targets (R, S, S).
    """
    mask_logits = mask_logits.float()  # the loss in float32
    if len(mask_logits) == 0:
        return mask_logits.sum() * 0.0
    cls = gt_classes if mask_logits.shape[1] > 1 else torch.zeros_like(gt_classes)
    logits = mask_logits[torch.arange(len(mask_logits), device=cls.device), cls]  # (R, S, S)
    return F.binary_cross_entropy_with_logits(logits, targets) + mask_logits.sum() * 0.0


def mask_probs(mask_logits: Tensor, pred_classes: Tensor) -> Tensor:
    """(R, K, S, S) logits, (R,) classes -> (R, S, S) probabilities of the predicted class."""
    cls = pred_classes if mask_logits.shape[1] > 1 else torch.zeros_like(pred_classes)
    return mask_logits[torch.arange(len(mask_logits), device=cls.device), cls].float().sigmoid()


def _interp_weights(start: Tensor, end: Tensor, size: int, length: int) -> Tensor:
    """Bilinear weights from ``length`` image pixels to ``size`` mask cells along one axis.

    start, end (R,) box edges in pixels -> (R, length, size). Pixel centre p + 0.5 falls at mask
    coordinate u = (p + 0.5 - start) * size / (end - start) - 0.5 (cell centres at integers);
    the weight to cell j is the tent max(0, 1 - |u - j|), i.e. zero padding outside the mask.
    """
    p = torch.arange(length, device=start.device, dtype=torch.float32) + 0.5
    scale = size / (end - start).clamp(min=1e-6)
    u = (p[None] - start[:, None]) * scale[:, None] - 0.5                   # (R, length)
    j = torch.arange(size, device=start.device, dtype=torch.float32)
    return (1 - (u[:, :, None] - j).abs()).clamp(min=0)                     # (R, length, size)


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None = None,
                max_pixels: int = 2**22) -> Tensor:
    """Paste S x S masks into their boxes of an (h, w) image, bilinearly resampled.

    Vectorised as two small matrix products per box: out = Wy @ mask @ Wx^T, where Wy (h, S) and
    Wx (w, S) are the 1-D interpolation weights (zero outside the box's half-cell border). Boxes
    go in chunks of about ``max_pixels`` output pixels (the float32 working memory), each chunk
    computed only over the rows and columns its boxes touch.
    masks (R, S, S), boxes (R, 4) xyxy in the (h, w) frame -> (R, h, w) float32 probabilities, or
    uint8 0/1 (``>= threshold``) when a threshold is given (a quarter of the memory).
    """
    h, w = image_size
    out = masks.new_zeros((len(masks), h, w), dtype=torch.float32 if threshold is None else torch.uint8)
    s = masks.shape[-1]
    chunk = max(1, max_pixels // max(h * w, 1))
    with torch.autocast(masks.device.type, enabled=False):  # interpolation weights in float32
        for i in range(0, len(masks), chunk):
            m, b = masks[i:i + chunk].float(), boxes[i:i + chunk].float()
            # the chunk's rows/columns that any of its boxes (+ the half-cell border) reaches
            border = 0.5 * (b[:, 2:] - b[:, :2]) / s                           # (r, 2) x, y
            lo = (b[:, :2] - border).amin(dim=0).floor().clamp(min=0)
            hi = (b[:, 2:] + border).amax(dim=0).ceil()
            x0, y0 = int(lo[0]), int(lo[1])
            x1, y1 = min(int(hi[0]), w), min(int(hi[1]), h)
            if x1 <= x0 or y1 <= y0:
                continue
            wy = _interp_weights(b[:, 1] - y0, b[:, 3] - y0, s, y1 - y0)     # (r, y1 - y0, S)
            wx = _interp_weights(b[:, 0] - x0, b[:, 2] - x0, s, x1 - x0)     # (r, x1 - x0, S)
            pasted = torch.bmm(torch.bmm(wy, m), wx.transpose(1, 2))           # (r, y1 - y0, x1 - x0)
            if threshold is not None:
                pasted = pasted >= threshold
            out[i:i + chunk, y0:y1, x0:x1] = pasted
    return out

"""The segmentation meta-architecture: normalise -> dense network -> loss / per-image labels.

Shape shorthand: N images, K classes (background included), Hp x Wp the padded batch,
h x w one image's unpadded size.

``SemanticSegmentor`` only composes. The dense network (FCN or U-Net) maps normalised images
(N, 3, Hp, Wp) to logits (N, K, Hp, Wp); the loss is a plain function from ``losses.py``.
With ``input_scale`` s < 1 the network sees the batch resized to (s Hp, s Wp) and its logits
are resized bilinearly back to (Hp, Wp), so loss and predictions stay at full resolution
(1/s^2 cheaper; fine for large flat objects, at the price of ~1/s px at boundaries).

Padding: a batch arrives padded with the pixel mean (``ImageList``). A network trained on
crops never sees such a flat band, and to one that has learnt "flat region behind a sharp edge =
object" it looks like one, spoiling predictions along the right and bottom of every evaluated
image. With ``mirror_padding`` (the U-Net paper's border handling) each image's padding is
refilled with its mirror image (edge replication when the padding is wider than the image)
before the network runs; labels there stay ``ignore_index`` and predictions are cropped off.
Targets are per-image dicts with ``sem_seg`` (h, w) int64 labels, ignore = ``ignore_index``.
Predictions are per-image dicts with ``sem_seg`` (h, w) int64 and, if asked, ``logits`` (K, h, w).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segmentation.losses import segmentation_loss


class SemanticSegmentor(nn.Module):
    """``forward(images, targets=None) -> (predictions, losses)``.

    net:          nn.Module, (N, 3, Hp, Wp) normalised -> (N, K, Hp, Wp) logits; must expose
                  ``pixel_mean``, ``pixel_std`` (3-tuples, [0, 1] scale) and ``size_divisibility``
    num_classes:  K
    loss:         ``ce`` | ``focal`` | ``dice`` | ``ce+dice``
    class_weight: (K,) loss weights (see ``losses.class_weights``) or None
    input_scale:  the network runs on the batch resized by this factor (0 < s <= 1)
    mirror_padding: refill each image's padding with its mirror image (module docstring)
    """

    def __init__(self, net: nn.Module, num_classes: int, *, loss: str = "ce",
                 class_weight: Tensor | None = None, focal_gamma: float = 2.0, dice_weight: float = 1.0,
                 ignore_index: int = 255, return_logits: bool = False, input_scale: float = 1.0,
                 mirror_padding: bool = True):
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.loss_kind = loss
        self.focal_gamma = focal_gamma
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.return_logits = return_logits
        self.pixel_mean = tuple(net.pixel_mean)
        self.pixel_std = tuple(net.pixel_std)
        if not 0 < input_scale <= 1 or (net.size_divisibility / input_scale) % 1:
            raise ValueError(f"input_scale = {input_scale} must be in (0, 1] and turn the network's "
                             f"size divisibility {net.size_divisibility} into a whole number")
        self.input_scale = float(input_scale)
        self.mirror_padding = bool(mirror_padding)
        self.size_divisibility = int(net.size_divisibility / input_scale)  # padded input, before resizing
        self.register_buffer("_mean", torch.tensor(self.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.pixel_std).view(1, 3, 1, 1), persistent=False)
        # recomputed from the training set at build time, so not part of the checkpoint
        self.register_buffer("class_weight", None if class_weight is None else class_weight.float(),
                             persistent=False)

    def forward(self, images, targets: list[dict] | None = None) -> tuple[list[dict], dict[str, Tensor]]:
        """images: ImageList (tensor (N, 3, Hp, Wp) in [0, 1], image_sizes [(h, w)]).

        targets: None or N dicts with ``sem_seg`` (h, w) int64.
        Returns (predictions, losses): losses {"loss_seg"} whenever targets are given;
        predictions (eval mode only) N dicts, ``sem_seg`` (h, w) cropped to each image.
        """
        x = images.tensor
        if x.shape[-2] % self.size_divisibility or x.shape[-1] % self.size_divisibility:
            raise ValueError(f"batch of size {tuple(x.shape[-2:])} is not padded to a multiple of "
                             f"{self.size_divisibility}; build it with ImageList.from_tensors")
        if self.mirror_padding:
            x = mirror_pad(x, images.image_sizes)                      # (N, 3, Hp, Wp)
        x = (x - self._mean) / self._std                               # (N, 3, Hp, Wp)
        if self.input_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False,
                              antialias=True)                          # (N, 3, s Hp, s Wp)
        logits = self.net(x)                                           # (N, K, s Hp, s Wp)
        if self.input_scale != 1.0:
            logits = F.interpolate(logits, size=images.tensor.shape[-2:], mode="bilinear",
                                   align_corners=False)                # (N, K, Hp, Wp)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            labels = self._pad_labels(targets, logits.shape[-2:], images.image_sizes)  # (N, Hp, Wp)
            losses["loss_seg"] = segmentation_loss(
                logits, labels, kind=self.loss_kind, weight=self.class_weight, focal_gamma=self.focal_gamma,
                dice_weight=self.dice_weight, ignore_index=self.ignore_index)
        predictions: list[dict] = []
        if not self.training:
            for logit, (h, w) in zip(logits, images.image_sizes):
                logit = logit[:, :h, :w]                              # (K, h, w), padding cropped off
                pred = {"sem_seg": logit.argmax(dim=0)}
                if self.return_logits:
                    pred["logits"] = logit
                predictions.append(pred)
        return predictions, losses

    def _pad_labels(self, targets: list[dict], size, image_sizes) -> Tensor:
        """Stack per-image (h, w) labels into (N, Hp, Wp), padding with ``ignore_index``."""
        out = torch.full((len(targets), *size), self.ignore_index, dtype=torch.int64,
                         device=self._mean.device)
        for i, (t, (h, w)) in enumerate(zip(targets, image_sizes)):
            lab = t["sem_seg"]
            if tuple(lab.shape) != (h, w):
                raise ValueError(f"target {i} (image_id {t.get('image_id', '?')}): sem_seg has shape "
                                 f"{tuple(lab.shape)} but the image is {(h, w)}")
            out[i, :h, :w] = lab.to(out.device)
        return out


def mirror_pad(x: Tensor, image_sizes) -> Tensor:
    """(N, C, Hp, Wp) batch whose image i fills [:h_i, :w_i] -> the same batch with the rest of
    each image's frame refilled by reflecting the image at its bottom and right edges
    (replicating the edge where the padding is as wide as the image or wider)."""
    hp, wp = x.shape[-2:]
    if all((h, w) == (hp, wp) for h, w in image_sizes):
        return x
    out = x.clone()
    for i, (h, w) in enumerate(image_sizes):
        if (h, w) == (hp, wp):
            continue
        mode = "reflect" if hp - h < h and wp - w < w else "replicate"
        out[i] = F.pad(x[i:i + 1, :, :h, :w], (0, wp - w, 0, hp - h), mode=mode)[0]  # (C, Hp, Wp)
    return out

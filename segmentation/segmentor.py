"""The segmentation meta-architecture: normalise -> dense network -> loss / per-image labels.

Shape shorthand: N images, K classes (background included), Hp x Wp the padded batch,
h x w one image's unpadded size.

``SemanticSegmentor`` only composes. The dense network (FCN or U-Net) maps normalised images
(N, 3, Hp, Wp) to logits (N, K, Hp, Wp); the loss is a plain function from ``losses.py``.
Targets are per-image dicts with ``sem_seg`` (h, w) int64 labels, ignore = ``ignore_index``.
Predictions are per-image dicts with ``sem_seg`` (h, w) int64 and, if asked, ``logits`` (K, h, w).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from segmentation.losses import segmentation_loss


class SemanticSegmentor(nn.Module):
    """``forward(images, targets=None) -> (predictions, losses)``.

    net:          nn.Module, (N, 3, Hp, Wp) normalised -> (N, K, Hp, Wp) logits; must expose
                  ``pixel_mean``, ``pixel_std`` (3-tuples, [0, 1] scale) and ``size_divisibility``
    num_classes:  K
    loss:         ``ce`` | ``focal`` | ``dice`` | ``ce+dice``
    class_weight: (K,) loss weights (see ``losses.class_weights``) or None
    """

    def __init__(self, net: nn.Module, num_classes: int, *, loss: str = "ce",
                 class_weight: Tensor | None = None, focal_gamma: float = 2.0, dice_weight: float = 1.0,
                 ignore_index: int = 255, return_logits: bool = False):
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
        self.size_divisibility = int(net.size_divisibility)
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
        logits = self.net((x - self._mean) / self._std)              # (N, K, Hp, Wp)
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

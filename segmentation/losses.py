"""Pixel-wise losses for semantic segmentation and the class-imbalance tools around them.

Shape shorthand: N images, K classes (background included, label 0), H x W pixels.
Labels are int64 in 0..K-1, with ``ignore_index`` (255) marking pixels that count nowhere:
not in the loss, not in its normaliser, not in class frequencies.

All losses are plain functions ``(logits, labels, ...) -> scalar``:
- :func:`cross_entropy`  optionally class-weighted, averaged over the *weight* of valid pixels;
- :func:`focal_loss`     Lin et al. 2017, softmax form: (1 - p_t)^gamma * CE;
- :func:`dice_loss`      soft multi-class Dice (Milletari et al. 2016), 1 - mean over classes
                         present in the batch (in labels or predictions) of 2|P.G| / (|P|+|G|).

Class weights from training-set pixel frequencies (:func:`class_weights`):
- ``"median_freq"`` (Eigen & Fergus 2015): w_c = median(f) / f_c, where f_c = pixels of class c /
  pixels of the images in which c appears;
- ``"log"`` (ENet, Paszke et al. 2016): w_c = 1 / ln(1.02 + p_c), p_c = share of class c among all
  valid pixels. Bounded to [~1, ~50], gentler than median frequency.
Classes never seen get weight 0 (they cannot be learned from this training set anyway).

Prior bias (:func:`class_prior_bias`, the prior initialisation of Lin et al. 2017): the final
classifier's bias starts at b_c = ln p_c, so the untrained network already predicts the class
balance (softmax(b) = p) and its loss starts at the entropy of the labels instead of ~ln K.
Adam moves each parameter by about ``lr`` per step, so without it a from-scratch U-Net spends
its first few hundred iterations just shifting its logits to the background-heavy prior.

Image resampling (``common.samplers.repeat_factors``, shared with detection) is the LVIS
repeat-factor rule applied to the classes present in an image.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor | None = None,
                  ignore_index: int = 255) -> Tensor:
    """Weighted pixel cross-entropy.

    logits: (N, K, H, W) float; labels: (N, H, W) int64; weight: (K,) or None.
    Returns a scalar: sum_i w_{y_i} CE_i / sum_i w_{y_i} over valid pixels (0 if none are valid,
    still connected to the graph so ``backward`` works).
    """
    _check(logits, labels, ignore_index)
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    # reduction="mean" with weights divides by the sum of the weights of valid pixels
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index, reduction="mean")


def focal_loss(logits: Tensor, labels: Tensor, gamma: float = 2.0, weight: Tensor | None = None,
               ignore_index: int = 255) -> Tensor:
    """Softmax focal loss, mean over valid pixels (weighted like :func:`cross_entropy`).

    logits: (N, K, H, W); labels: (N, H, W). ``gamma=0`` gives exactly :func:`cross_entropy`.
    """
    _check(logits, labels, ignore_index)
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    logp = F.log_softmax(logits.float(), dim=1)                      # (N, K, H, W)
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    logp_t = logp.gather(1, safe[:, None])[:, 0][valid]              # (V,) log p of the true class
    w = torch.ones_like(logp_t) if weight is None else weight.to(logp_t)[safe[valid]]
    loss = -((1.0 - logp_t.exp()) ** gamma) * logp_t * w
    return (loss.sum() / w.sum().clamp(min=1e-12)).to(logits.dtype)


def dice_loss(logits: Tensor, labels: Tensor, ignore_index: int = 255, eps: float = 1.0) -> Tensor:
    """Soft Dice loss: 1 - mean over classes of (2 sum p*g + eps) / (sum p + sum g + eps).

    logits: (N, K, H, W); labels: (N, H, W). Sums run over the batch and all valid pixels;
    classes absent from both labels and (soft) predictions are skipped so an absent class
    neither helps nor hurts. ``eps`` smooths the ratio.
    """
    _check(logits, labels, ignore_index)
    k = logits.shape[1]
    valid = (labels != ignore_index)                                 # (N, H, W)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    prob = logits.float().softmax(dim=1) * valid[:, None]           # (N, K, H, W), ignored pixels zeroed
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    onehot = F.one_hot(safe, k).permute(0, 3, 1, 2).float() * valid[:, None]  # (N,H,W,K) -> (N,K,H,W)
    inter = (prob * onehot).sum(dim=(0, 2, 3))                       # (K,)
    total = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))      # (K,)
    present = onehot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * inter + eps) / (total + eps)
    return (1.0 - dice[present].mean()).to(logits.dtype)


def _check(logits: Tensor, labels: Tensor, ignore_index: int) -> None:
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0] \
            or logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"segmentation loss expects logits (N, K, H, W) and labels (N, H, W) of the same "
                         f"N, H, W; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= logits.shape[1]))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(f"label {value} is outside 0..{logits.shape[1] - 1} and is not the ignore "
                         f"index {ignore_index}")


# --------------------------------------------------------------------- class statistics

def class_pixel_stats(label_maps, num_classes: int, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Per-class pixel counts and, per class, the pixel count of the images containing it.

    label_maps: iterable of (H, W) integer arrays. Returns (pixels (K,), image_pixels (K,)),
    both int64, ignoring ``ignore_index``.
    """
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for lab in label_maps:
        lab = np.asarray(lab).ravel()
        lab = lab[lab != ignore_index]
        counts = np.bincount(lab, minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels[counts > 0] += lab.size
    return pixels, image_pixels


def class_weights(pixels: np.ndarray, image_pixels: np.ndarray, method: str = "median_freq") -> Tensor:
    """(K,) float32 loss weights from :func:`class_pixel_stats`; unseen classes get 0.

    method: ``"median_freq"`` (w = median(f) / f, f = pixels / image_pixels) or ``"log"``
    (w = 1 / ln(1.02 + p), p = pixels / all valid pixels).
    """
    pixels = np.asarray(pixels, np.float64)
    seen = pixels > 0
    w = np.zeros_like(pixels)
    if not seen.any():
        raise ValueError("class_weights: no labelled pixel in the training set")
    if method == "median_freq":
        freq = pixels[seen] / np.asarray(image_pixels, np.float64)[seen]
        w[seen] = np.median(freq) / freq
    elif method == "log":
        p = pixels[seen] / pixels.sum()
        w[seen] = 1.0 / np.log(1.02 + p)
    else:
        raise ValueError(f"class_weights: unknown method {method!r} (use 'median_freq' or 'log')")
    return torch.as_tensor(w, dtype=torch.float32)


def class_prior_bias(pixels: np.ndarray, min_share: float = 1e-4) -> Tensor:
    """(K,) float32 classifier bias ln(p_c), p_c = share of class c among the valid pixels.

    pixels: (K,) counts from :func:`class_pixel_stats`. Shares below ``min_share`` (unseen
    classes too) are raised to it, so no bias is -inf.
    """
    pixels = np.asarray(pixels, np.float64)
    if pixels.sum() <= 0:
        raise ValueError("class_prior_bias: no labelled pixel in the training set")
    share = np.maximum(pixels / pixels.sum(), min_share)
    return torch.as_tensor(np.log(share), dtype=torch.float32)


def segmentation_loss(logits: Tensor, labels: Tensor, *, kind: str = "ce", weight: Tensor | None = None,
                      focal_gamma: float = 2.0, dice_weight: float = 1.0, ignore_index: int = 255) -> Tensor:
    """The configured pixel loss: ``ce`` | ``focal`` | ``dice`` | ``ce+dice``.

    logits: (N, K, H, W); labels: (N, H, W). ``weight`` (K,) applies to ``ce`` and ``focal``;
    ``dice_weight`` scales the Dice term of ``ce+dice``.
    """
    if kind == "ce":
        return cross_entropy(logits, labels, weight, ignore_index)
    if kind == "focal":
        return focal_loss(logits, labels, focal_gamma, weight, ignore_index)
    if kind == "dice":
        return dice_loss(logits, labels, ignore_index)
    if kind == "ce+dice":
        return cross_entropy(logits, labels, weight, ignore_index) + dice_weight * dice_loss(logits, labels, ignore_index)
    raise ValueError(f"unknown segmentation loss {kind!r} (use ce, focal, dice or ce+dice)")

"""Normalisation layers for backbones: FrozenBN, BN, GN and SyncBN.

Shape shorthand: N images, C channels, H x W feature map.

torchvision builds its classification models with ``nn.BatchNorm2d``. :func:`convert_norm`
swaps every BatchNorm2d inside a module for the chosen kind, carrying the pretrained
parameters over:

    FrozenBN  :class:`FrozenBatchNorm2d`: a fixed per-channel affine map built from the BN
              statistics and affine parameters (the detectron2 / torchvision default for
              detection, where batches of 2 images make batch statistics useless).
    BN        plain ``nn.BatchNorm2d`` (kept as it is; trains its statistics).
    GN        ``nn.GroupNorm`` with :func:`gn_groups` groups; BN's weight and bias are copied,
              its running statistics are dropped (GN has none).
    SyncBN    ``nn.SyncBatchNorm``; it synchronises only when a process group is initialised at
              forward time, and behaves as BN otherwise (so it builds and runs on one CPU).

:func:`adapt_bn_statistics` (AdaBN) replaces the running statistics of a pretrained network's
BN / FrozenBN layers by those of the target data, keeping the learned affine parameters.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

NORMS = ("FrozenBN", "BN", "GN", "SyncBN")
# below this many images per process trainable BN's batch statistics are noisy (Wu & He 2018,
# Group Normalization: BN's error grows as the batch falls below 16); detection steps are 2-16 images
BN_SMALL_BATCH = 16


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, never trained).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, computed as one
    per-channel scale and shift. Buffer names match ``nn.BatchNorm2d`` so BN state dicts load.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # BN state dicts carry a counter that has no meaning here
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        # (C,) -> (1, C, 1, 1) to broadcast over N, H, W
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d) -> "FrozenBatchNorm2d":
        """A frozen copy of ``bn`` (its affine parameters and running statistics)."""
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen


def gn_groups(channels: int, max_groups: int = 32) -> int:
    """Number of GroupNorm groups: 32, or the largest power of two dividing ``channels``
    when 32 does not (24 -> 8, 40 -> 8, 16 -> 16)."""
    return math.gcd(max_groups, channels)


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by the ``norm`` kind (see module docstring).

    Returns the converted module (the same object unless ``module`` is itself a BatchNorm2d).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if norm == "BN":
        return module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, nn.SyncBatchNorm):
        return _convert_one(module, norm)
    for name, child in module.named_children():
        new = convert_norm(child, norm)
        if new is not child:
            setattr(module, name, new)
    return module


def _convert_one(bn: nn.BatchNorm2d, norm: str) -> nn.Module:
    if norm == "FrozenBN":
        return FrozenBatchNorm2d.from_bn(bn)
    if norm == "GN":
        gn = nn.GroupNorm(gn_groups(bn.num_features), bn.num_features, eps=bn.eps)
        if bn.affine:
            with torch.no_grad():
                gn.weight.copy_(bn.weight)
                gn.bias.copy_(bn.bias)
        return gn
    # SyncBN: torch converts and keeps parameters and statistics
    return nn.SyncBatchNorm.convert_sync_batchnorm(bn)


def pretrained_bn_warning(norm: str, weights: str | None, freeze_at: int, images_per_process: int) -> str | None:
    """A warning when a pretrained backbone's BatchNorm would train on a few images per step
    (``norm`` BN with ``weights``, some stage not frozen, fewer than :data:`BN_SMALL_BATCH`
    images per process): their noisy batch statistics replace the pretrained ones, and the test
    uses running averages of them. None otherwise."""
    if norm != "BN" or not weights or freeze_at >= 5 or images_per_process >= BN_SMALL_BATCH:
        return None
    return (f"warning: the backbone starts from pretrained weights ({weights}) but its BatchNorm trains on "
            f"{images_per_process} images per step (model.backbone.norm=BN); model.backbone.norm=FrozenBN "
            f"keeps the pretrained statistics, as detectron2 does with pretrained backbones")


def bn_layers(module: nn.Module) -> list[nn.Module]:
    """The ``nn.BatchNorm2d`` and :class:`FrozenBatchNorm2d` layers of ``module``."""
    return [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]


@torch.no_grad()
def adapt_bn_statistics(module: nn.Module, inputs: Iterable[Tensor], run: Callable[[Tensor], object]) -> int:
    """AdaBN (Li et al. 2017, "Revisiting Batch Normalization for Practical Domain Adaptation"):
    replace the running mean and variance of every layer :func:`bn_layers` finds in ``module`` by
    those of the activations it meets while ``run`` is called on each of ``inputs``. Weights and
    biases stay the pretrained ones.

    During the passes every layer normalises with the statistics of its current input, as BN does
    in training, so a later layer sees its input normalised the way it will be once the earlier
    layers are adapted. Kept are the mean and variance pooled over every position of every input.
    Returns the number of layers adapted (0 when ``inputs`` is empty or there are none).
    """
    layers = bn_layers(module)
    # per layer: sum of pixel counts, of count * mean and of count * (var + mean^2), in float64
    sums: dict[nn.Module, list] = {}

    def normalise_and_count(layer: nn.Module) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            count = x.numel() // x.shape[1]
            var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), unbiased=False)        # (C,) each
            s = sums.setdefault(layer, [0, 0.0, 0.0])
            s[0] += count
            s[1] = s[1] + count * mean.double()
            s[2] = s[2] + count * (var.double() + mean.double() ** 2)
            scale = torch.rsqrt(var + layer.eps)
            shift = -mean * scale
            if layer.weight is not None:  # nn.BatchNorm2d(affine=False) has none
                scale, shift = scale * layer.weight, shift * layer.weight + layer.bias
            return (x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype))
        return forward

    for layer in layers:
        layer.forward = normalise_and_count(layer)  # an instance attribute: nn.Module.__call__ uses it
    try:
        for x in inputs:
            run(x)
    finally:
        for layer in layers:
            del layer.forward
    for layer, (count, total, total_sq) in sums.items():
        mean = total / count
        layer.running_mean.copy_(mean)
        layer.running_var.copy_((total_sq / count - mean ** 2).clamp(min=0))
    return len(sums)

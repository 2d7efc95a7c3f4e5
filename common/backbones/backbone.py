"""The backbone contract shared by detection and segmentation, and the function that builds it.

Shape shorthand: N images, C channels, H x W input size (the padded batch).

    backbone = build_backbone("resnet18", weights="imagenet", freeze_at=2, fpn=True)
    feats = backbone(backbone.normalize(images))   # images (N, 3, H, W) in [0, 1]
    feats["p2"]                                     # (N, 256, H/4, W/4)

Freezing: ``freeze_at=k`` freezes the first k of (stem, c2, c3, c4, c5): their parameters get
``requires_grad=False`` and their BatchNorms become FrozenBN *whatever* ``norm`` says (a frozen
stage should not update batch statistics either). The remaining stages use ``norm``.
With ``weights=None`` prefer ``norm="BN"`` or ``"GN"``: FrozenBN of a fresh network is the
identity.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from .fpn import FPN
from .mobilenet import mobilenet_stages
from .norm import NORMS, convert_norm
from .resnet import resnet_stages
from .stages import FEATURE_NAMES, FEATURE_STRIDES, STAGE_NAMES, Body
from .vgg import vgg_stages
from .weights import load_pretrained

# name -> (torchvision constructor, function cutting it into stages)
ARCHITECTURES = {
    "resnet18": (tvm.resnet18, resnet_stages),
    "resnet34": (tvm.resnet34, resnet_stages),
    "resnet50": (tvm.resnet50, resnet_stages),
    "resnet101": (tvm.resnet101, resnet_stages),
    "vgg16": (tvm.vgg16, vgg_stages),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, mobilenet_stages),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A body (stem + c2..c5) and an optional FPN, with what the models need to know about it.

    forward: (N, 3, H, W) normalised images -> ordered {name: (N, out_channels[name],
    ceil(H / s), ceil(W / s))} fine to coarse, s = out_strides[name].
    """

    def __init__(self, body: Body, fpn: FPN | None, body_channels: dict[str, int],
                 size_divisibility: int = 32):
        super().__init__()
        self.body = body
        self.fpn = fpn
        if fpn is None:
            self.out_features = list(body.out_features)
            self.out_channels = {f: body_channels[f] for f in self.out_features}
        else:
            self.out_features = list(fpn.out_features)
            self.out_channels = {f: fpn.out_channels for f in self.out_features}
        self.out_strides = {f: 2 ** int(f[1:]) for f in self.out_features}
        self.size_divisibility = size_divisibility
        self.pixel_mean = IMAGENET_MEAN
        self.pixel_std = IMAGENET_STD

    def normalize(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) float in [0, 1] -> (N, 3, H, W) ImageNet-normalised."""
        mean = torch.tensor(self.pixel_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"backbone input must be (N, 3, H, W) images, got shape {tuple(x.shape)}")
        feats = self.body(x)
        return self.fpn(feats) if self.fpn is not None else feats


def build_backbone(name: str, *, weights: str | Path | None = None, freeze_at: int = 0,
                   norm: str = "FrozenBN", out_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
                   fpn: bool = False, fpn_channels: int = 256, fpn_top_block: bool = True,
                   fpn_norm: str | None = None) -> Backbone:
    """Build a backbone from torchvision's classification model ``name``.

    name:          resnet18 | resnet34 | resnet50 | resnet101 | vgg16 | mobilenet_v3_large
    weights:       None (random init) | "imagenet" | path to a torchvision .pth state dict
    freeze_at:     0..5; k freezes the stem and c2..ck (1 = stem only, 5 = whole body)
    norm:          FrozenBN | BN | GN | SyncBN for the stages that are not frozen
    out_features:  which of c1..c5 the body returns (c1 has stride 2); with ``fpn`` they are
                   the FPN inputs and the outputs are the matching p-levels (+ p6)
    fpn_channels:  FPN output channels; fpn_top_block adds the max-pooled extra level;
    fpn_norm:      None | "GN" in the FPN convs
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} for backbone {name}; choose one of {', '.join(NORMS)}")
    if isinstance(freeze_at, bool) or not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
        raise ValueError(f"freeze_at must be an integer from 0 (train all) to 5 (freeze the whole "
                         f"body), got {freeze_at!r}")
    out_features = _check_out_features(name, out_features)

    constructor, cut = ARCHITECTURES[name]
    model = constructor()
    load_pretrained(model, name, weights)
    stages = cut(model)
    body = Body(stages, out_features)
    for i, stage_name in enumerate(STAGE_NAMES):
        stage = body.stage(stage_name)
        if stage is None:
            continue
        frozen = i < freeze_at
        setattr(body, stage_name, convert_norm(stage, "FrozenBN" if frozen else norm))
        if frozen:
            for p in body.stage(stage_name).parameters():
                p.requires_grad_(False)

    pyramid = None
    if fpn:
        pyramid = FPN({f: stages.channels[f] for f in out_features}, fpn_channels,
                      norm=fpn_norm, top_block=fpn_top_block)
    return Backbone(body, pyramid, stages.channels)


def _check_out_features(name: str, out_features: Sequence[str]) -> list[str]:
    if isinstance(out_features, str):
        out_features = [out_features]
    bad = [f for f in out_features if f not in FEATURE_NAMES]
    if bad or not out_features:
        raise ValueError(f"out_features {list(out_features)!r} of backbone {name} must be a non-empty "
                         f"list drawn from {', '.join(FEATURE_NAMES)}")
    if len(set(out_features)) != len(out_features):
        raise ValueError(f"out_features {list(out_features)!r} of backbone {name} repeat a name")
    return sorted(out_features, key=FEATURE_STRIDES.get)  # fine to coarse

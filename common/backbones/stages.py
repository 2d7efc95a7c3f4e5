"""The stages every backbone body is cut into, and the body that runs them.

Shape shorthand: N images, C channels, H x W input size.

A torchvision classification network is cut into a ``stem`` and four stages ``c2..c5``; the
output of stage ``ck`` has stride ``2**k``. ``c1`` (stride 2) is tapped inside the stem, after
its first ``c1_at`` layers:

    name                 stem                         c1 (stride 2)            c2..c5
    resnet18/34/50/101   conv1 bn1 relu maxpool       after relu (conv1 out)   layer1..layer4
    vgg16                conv1_1..pool1               after pool1              pool2..pool5 blocks
    mobilenet_v3_large   features[0:2]                after features[1]        features[2:4], [4:7], [7:13], [13:17]
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

STAGE_NAMES = ("stem", "c2", "c3", "c4", "c5")  # freeze order: freeze_at=k freezes the first k
FEATURE_NAMES = ("c1", "c2", "c3", "c4", "c5")
FEATURE_STRIDES = {"c1": 2, "c2": 4, "c3": 8, "c4": 16, "c5": 32}


@dataclass
class Stages:
    """A classification network cut into stages (what each architecture file returns)."""

    stem: nn.Sequential
    c2: nn.Module
    c3: nn.Module
    c4: nn.Module
    c5: nn.Module
    channels: dict[str, int]  # output channels of c1..c5
    c1_at: int                # c1 is the output of stem[:c1_at]


class Body(nn.Module):
    """Runs the stem and stages c2..c5 and returns the requested features.

    Stages after the last requested feature are not kept (``self.c5`` is None when only
    c1..c4 are asked for), so every parameter of the body gets a gradient.
    """

    def __init__(self, stages: Stages, out_features: list[str]):
        super().__init__()
        self.out_features = list(out_features)
        self.c1_at = stages.c1_at
        last = max(FEATURE_NAMES.index(f) for f in out_features)
        self.stem = stages.stem
        for i, name in enumerate(FEATURE_NAMES[1:], start=1):
            setattr(self, name, getattr(stages, name) if i <= last else None)

    def stage(self, name: str) -> nn.Module | None:
        """The module called ``name`` (``stem`` or ``c2..c5``), None when it was not kept."""
        return getattr(self, name)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (N, 3, H, W) normalised -> {ck: (N, C_k, H / 2**k, W / 2**k)} fine to coarse."""
        out = OrderedDict()
        for i, layer in enumerate(self.stem):
            x = layer(x)
            if i + 1 == self.c1_at and "c1" in self.out_features:
                out["c1"] = x
        for name in FEATURE_NAMES[1:]:
            stage = getattr(self, name)
            if stage is None:
                break
            x = stage(x)
            if name in self.out_features:
                out[name] = x
        return out

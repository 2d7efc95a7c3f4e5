"""MobileNetV3-Large (Howard et al. 2019) cut into stages at its stride changes.

Shape shorthand: N images, H x W input size. torchvision ``features`` indices:

    stem  [0:2]    first conv + first inverted residual   c1 = (N, 16, H/2, W/2)
    c2    [2:4]    (N, 24, H/4, W/4)
    c3    [4:7]    (N, 40, H/8, W/8)
    c4    [7:13]   (N, 112, H/16, W/16)
    c5    [13:17]  (N, 960, H/32, W/32), ending with the 1x1 conv to 960 channels
"""
from __future__ import annotations

from torch import nn
from torchvision.models import MobileNetV3

from .stages import Stages

_CUTS = (0, 2, 4, 7, 13, 17)


def mobilenet_stages(model: MobileNetV3) -> Stages:
    """Cut torchvision's MobileNetV3-Large (weights already loaded) into stem and c2..c5."""
    f = model.features
    # renumbered from 0 in each stage: features.2 is c2.0
    parts = [nn.Sequential(*f[a:b]) for a, b in zip(_CUTS[:-1], _CUTS[1:])]
    channels = {"c1": 16, "c2": 24, "c3": 40, "c4": 112, "c5": 960}
    return Stages(*parts, channels=channels, c1_at=len(parts[0]))

"""VGG16 (Simonyan & Zisserman 2015) cut at its max-pools, and its fc6/fc7 for FCN.

Shape shorthand: N images, H x W input size.

``ck`` is the output after the k-th max-pool (torchvision ``features`` indices):

    stem  conv1_1, conv1_2, pool1  [0:5]     c1 = (N, 64, H/2, W/2)
    c2    conv2_x, pool2           [5:10]    (N, 128, H/4, W/4)
    c3    conv3_x, pool3           [10:17]   (N, 256, H/8, W/8)
    c4    conv4_x, pool4           [17:24]   (N, 512, H/16, W/16)
    c5    conv5_x, pool5           [24:31]   (N, 512, H/32, W/32)

VGG16 has no normalisation layers, so the ``norm`` choice does not change it; freezing only
turns ``requires_grad`` off. The classifier is not part of the backbone; FCN gets the
pretrained fc6/fc7 from :func:`load_vgg16_classifier`.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import skip_init
from torchvision.models import VGG, vgg16

from .stages import Stages
from .weights import load_pretrained

_CUTS = (0, 5, 10, 17, 24, 31)  # features[_CUTS[i]:_CUTS[i+1]] is stem, c2, ..., c5


def vgg_stages(model: VGG) -> Stages:
    """Cut torchvision's VGG16 (weights already loaded) into stem and stages c2..c5."""
    f = model.features
    # renumbered from 0 in each stage: features.5 (conv2_1) is c2.0
    parts = [nn.Sequential(*f[a:b]) for a, b in zip(_CUTS[:-1], _CUTS[1:])]
    channels = {"c1": 64, "c2": 128, "c3": 256, "c4": 512, "c5": 512}
    return Stages(*parts, channels=channels, c1_at=len(parts[0]))


def load_vgg16_classifier(weights: str | Path | None = None, *, as_conv: bool = False) -> nn.Sequential:
    """VGG16's fc6 and fc7 with their ReLU and dropout, with ``weights`` loaded (see weights.py).

    as_conv=False: ``Sequential(fc6 Linear(512*7*7, 4096), relu6, drop6, fc7 Linear(4096, 4096),
    relu7, drop7)`` taking (N, 25088), the flattened (N, 512, 7, 7) pool5.
    as_conv=True: the same weights "convolutionalised" (Long et al. 2015): fc6 becomes
    Conv2d(512, 4096, 7) and fc7 Conv2d(4096, 4096, 1), taking pool5 (N, 512, h, w) to
    (N, 4096, h - 6, w - 6); on a 7x7 pool5 it equals the linear version.
    """
    model = vgg16()
    load_pretrained(model, "vgg16", weights)
    fc6, fc7 = model.classifier[0], model.classifier[3]
    if as_conv:
        fc6, fc7 = _linear_to_conv(fc6, 512, 7), _linear_to_conv(fc7, 4096, 1)
    return nn.Sequential(OrderedDict(fc6=fc6, relu6=nn.ReLU(inplace=True), drop6=nn.Dropout(),
                                     fc7=fc7, relu7=nn.ReLU(inplace=True), drop7=nn.Dropout()))


def _linear_to_conv(fc: nn.Linear, in_channels: int, kernel: int) -> nn.Conv2d:
    conv = skip_init(nn.Conv2d, in_channels, fc.out_features, kernel)  # overwritten just below
    with torch.no_grad():
        # torchvision flattens (C, 7, 7) row-major, so (out, C*k*k) -> (out, C, k, k) lines up
        conv.weight.copy_(fc.weight.view(fc.out_features, in_channels, kernel, kernel))
        conv.bias.copy_(fc.bias)
    return conv

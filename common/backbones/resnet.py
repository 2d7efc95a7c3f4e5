"""ResNet-18/34/50/101 (He et al. 2016) cut into stages.

Shape shorthand: N images, H x W input size.

    stem  conv1 7x7/2, bn1, relu, maxpool 3x3/2    c1 = relu output (N, 64, H/2, W/2)
    c2    layer1                                    (N, 64 | 256, H/4, W/4)
    c3    layer2                                    (N, 128 | 512, H/8, W/8)
    c4    layer3                                    (N, 256 | 1024, H/16, W/16)
    c5    layer4                                    (N, 512 | 2048, H/32, W/32)

(basic-block ResNet-18/34 | bottleneck ResNet-50/101). Parameter names read
``stem.conv1.weight``, ``c3.0.conv1.weight`` (torchvision's ``layer2.0.conv1.weight``).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import Bottleneck

from .stages import Stages


def resnet_stages(model: ResNet) -> Stages:
    """Cut a torchvision ResNet (weights already loaded) into stem and stages c2..c5."""
    stem = nn.Sequential(OrderedDict(conv1=model.conv1, bn1=model.bn1, relu=model.relu,
                                     maxpool=model.maxpool))
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    expansion = Bottleneck.expansion if isinstance(model.layer1[0], Bottleneck) else 1
    channels = {"c1": model.conv1.out_channels}
    for k, layer in enumerate(layers, start=2):
        channels[f"c{k}"] = _out_channels(layer[-1], expansion)
    return Stages(stem, *layers, channels=channels, c1_at=3)


def _out_channels(block: nn.Module, expansion: int) -> int:
    last_conv = block.conv3 if expansion > 1 else block.conv2
    return last_conv.out_channels

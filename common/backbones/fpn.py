"""Feature Pyramid Network (Lin et al. 2017) on top of a backbone body.

Shape shorthand: N images, C_k input channels of level k, F = ``out_channels`` (256),
H_k x W_k the size of level k (stride 2**k).

For input features ``ck`` (fine to coarse) it returns ``pk`` of F channels each:

    inner_5 = lateral_5(c5)                                      1x1 conv
    inner_k = lateral_k(ck) + upsample_nearest(inner_{k+1})      top-down, to ck's size
    pk      = output_k(inner_k)                                  3x3 conv
    p6      = max_pool(p5, kernel 1, stride 2)                   when ``top_block``

Convs use Kaiming-uniform init with a=1 and zero bias, as the reference implementations do.
With ``norm="GN"`` each conv is followed by GroupNorm (32 groups, fewer if F demands) and has
no bias.
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from .norm import gn_groups


class FPN(nn.Module):
    """in_channels: {"ck": C_k} fine to coarse; forward maps {"ck": (N, C_k, H_k, W_k)} to
    {"pk": (N, F, H_k, W_k)} (+ "p{last+1}": (N, F, ceil(H/2), ceil(W/2)) when top_block)."""

    def __init__(self, in_channels: dict[str, int], out_channels: int = 256,
                 norm: str | None = None, top_block: bool = True):
        super().__init__()
        if norm not in (None, "GN"):
            raise ValueError(f"FPN norm must be None or 'GN', got {norm!r}")
        self.in_features = list(in_channels)
        self.out_channels = out_channels
        self.top_block = top_block
        self.lateral = nn.ModuleDict()
        self.output = nn.ModuleDict()
        for name, c in in_channels.items():
            level = "p" + name[1:]
            self.lateral[level] = _conv(c, out_channels, 1, norm)
            self.output[level] = _conv(out_channels, out_channels, 3, norm)
        self.out_features = [f"p{n[1:]}" for n in self.in_features]
        if top_block:
            self.out_features.append(f"p{int(self.in_features[-1][1:]) + 1}")

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        names = self.in_features
        outs = []
        inner = None
        for name in reversed(names):  # coarse to fine
            level = "p" + name[1:]
            lateral = self.lateral[level](features[name])
            if inner is not None:
                # nearest upsampling to the finer map's exact size (handles odd sizes)
                lateral = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            inner = lateral
            outs.append(self.output[level](inner))
        outs.reverse()  # back to fine to coarse
        if self.top_block:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.out_features, outs))


def _conv(cin: int, cout: int, k: int, norm: str | None) -> nn.Module:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=norm is None)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if norm is None:
        return conv
    return nn.Sequential(conv, nn.GroupNorm(gn_groups(cout), cout))

"""Fully Convolutional Networks (Long, Shelhamer & Darrell, CVPR 2015): FCN-32s, FCN-16s, FCN-8s.

Shape shorthand: N images, C channels, K classes (background included), H x W the (padded)
input, H/s x W/s a feature map of stride s.

    c5 (N, C5, H/32, W/32) -> classifier head (N, Ch, H/32, W/32) -> score_fr (N, K, H/32, W/32)
    FCN-16s: up x2 (learned, bilinear init) + score_c4(c4)  -> (N, K, H/16, W/16)
    FCN-8s:  ... up x2 + score_c3(c3)                         -> (N, K, H/8,  W/8)
    final upsampling by the last stride (transposed conv, bilinear init) -> (N, K, H, W)

The classifier head is the backbone's classifier "convolutionalised":
- VGG16 (:class:`ConvClassifier`): fc6 as a 7x7 conv (padding 3, so the map keeps its size
  instead of the paper's pad-100-and-crop), fc7 as a 1x1 conv, ReLU + dropout after each; the
  ImageNet fc6/fc7 come from ``common.backbones.load_vgg16_classifier(as_conv=True)``.
- ResNet (:class:`ConvHead`): a 3x3 conv-BN-ReLU + dropout (ResNet's classifier is one linear
  layer after global pooling, nothing worth convolutionalising).
New score layers start at zero, as in the paper (uniform logits); with ``model.prior_init`` the
build sets ``score_fr``'s bias to the log class prior, so training starts from "background
everywhere" at the loss of the class balance.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """(C, C, k, k) weight of a transposed conv that does per-channel bilinear upsampling.

    With stride f and kernel 2f (padding f/2) the transposed conv scales a map by exactly f.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - (og - center).abs() / factor                         # (k,)
    filt = filt1d[:, None] * filt1d[None, :]                           # (k, k)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt                    # one filter per channel, no mixing
    return weight


def upsampler(channels: int, factor: int, learnable: bool = True) -> nn.ConvTranspose2d:
    """A transposed conv scaling (N, C, h, w) to (N, C, h*f, w*f), initialised to bilinear."""
    up = nn.ConvTranspose2d(channels, channels, kernel_size=2 * factor, stride=factor,
                            padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    up.weight.requires_grad_(learnable)
    return up


class ConvClassifier(nn.Sequential):
    """VGG's fc6/fc7 as convolutions: (N, C, h, w) -> (N, width, h, w)."""

    def __init__(self, in_channels: int, width: int = 4096, dropout: float = 0.5):
        super().__init__(
            nn.Conv2d(in_channels, width, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout2d(dropout),  # fc6
            nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout),                # fc7
        )
        self.out_channels = width

    def load_classifier(self, classifier: nn.Module) -> None:
        """Copy VGG16's convolutionalised fc6/fc7 (``common.backbones.load_vgg16_classifier(...,
        as_conv=True)``: Conv2d(512, 4096, 7) and Conv2d(4096, 4096, 1)) into this padded head."""
        conv6, conv7 = self[0], self[3]
        fc6, fc7 = classifier.fc6, classifier.fc7
        if fc6.weight.shape != conv6.weight.shape or fc7.weight.shape != conv7.weight.shape:
            raise ValueError(f"cannot load VGG16 fc6/fc7 of shapes {tuple(fc6.weight.shape)}, "
                             f"{tuple(fc7.weight.shape)} into an FCN head of width {self.out_channels}; "
                             f"set model.head_channels=4096 to use the pretrained classifier")
        with torch.no_grad():
            for dst, src in ((conv6, fc6), (conv7, fc7)):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)


class ConvHead(nn.Sequential):
    """The ResNet FCN head: 3x3 conv-BN-ReLU + dropout, (N, C, h, w) -> (N, width, h, w)."""

    def __init__(self, in_channels: int, width: int = 512, dropout: float = 0.1):
        super().__init__(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.out_channels = width


class FCN(nn.Module):
    """FCN-32s / 16s / 8s on any backbone of the common contract.

    backbone: returns features including ``top`` and every name in ``skips``
    head:     classifier head on ``top`` with ``out_channels``
    skips:    () for FCN-32s, ("c4",) for 16s, ("c4", "c3") for 8s (VGG: pool4, pool3)
    learn_final_upsample: the paper keeps the last upsampling fixed bilinear; True learns it too
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, *, top: str = "c5",
                 skips: tuple[str, ...] = ("c4", "c3"), learn_final_upsample: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.top = top
        self.skips = tuple(skips)
        strides = backbone.out_strides
        for name in (top, *self.skips):
            if name not in strides:
                raise ValueError(f"FCN needs backbone feature {name!r}; the backbone returns "
                                 f"{list(strides)}")
        self.score_fr = _zero_conv(head.out_channels, num_classes)
        self.score_skips = nn.ModuleList(_zero_conv(backbone.out_channels[s], num_classes) for s in self.skips)
        self.up_skips = nn.ModuleList()
        stride = strides[top]
        for s in self.skips:
            factor = stride // strides[s]
            self.up_skips.append(upsampler(num_classes, factor))
            stride = strides[s]
        self.final_stride = stride
        self.up_final = upsampler(num_classes, stride, learnable=learn_final_upsample)
        self.pixel_mean = backbone.pixel_mean
        self.pixel_std = backbone.pixel_std
        self.size_divisibility = max(int(backbone.size_divisibility), strides[top])

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) normalised, H and W multiples of the top stride -> (N, K, H, W) logits."""
        feats = self.backbone(x)
        score = self.score_fr(self.head(feats[self.top]))             # (N, K, H/32, W/32)
        for name, score_skip, up in zip(self.skips, self.score_skips, self.up_skips):
            score = up(score) + score_skip(feats[name])               # (N, K, H/s, W/s), s = 16 then 8
        return self.up_final(score)                                   # (N, K, H, W)


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv

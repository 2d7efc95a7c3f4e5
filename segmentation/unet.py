"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) and a U-Net on a pretrained ResNet encoder.

Shape shorthand: N images, C channels, K classes (background included), H x W the (padded)
input; level l of the encoder has stride 2^l.

Classic U-Net (:class:`UNet`), ``depth`` = 4 poolings:
    enc0 = block(x)            (N, w,    H,    W)
    encl = block(pool(enc_l-1)) (N, w*2^l, H/2^l, W/2^l)     l = 1..depth (the bottom)
    decl = block(cat(upconv(dec_l+1), enc_l))               l = depth-1..0
    logits = conv1x1(dec0)     (N, K, H, W)
``block`` is two 3x3 conv-BN-ReLU with padding 1 (the paper used unpadded convs and cropped
the skips; padding keeps output = input size, so H, W only need to be multiples of 2^depth).
The up-convolution is the paper's 2x2 transposed conv with stride 2, halving the channels.

ResNet U-Net (:class:`ResNetUNet`): the encoder is a ``common.backbones`` ResNet returning
c1..c5 (strides 2..32); the decoder upsamples bilinearly, concatenates the next finer c_k and
applies ``block``; a last x2 upsampling + block works at full resolution before the 1x1 scorer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU, padding 1: (N, Cin, h, w) -> (N, Cout, h, w)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """The classic encoder-decoder; ``width`` = 64 and ``depth`` = 4 is the paper's network."""

    def __init__(self, num_classes: int, width: int = 64, depth: int = 4, in_channels: int = 3):
        super().__init__()
        chans = [width * 2 ** level for level in range(depth + 1)]     # [w, 2w, ..., 2^depth w]
        self.encoders = nn.ModuleList([conv_block(in_channels, chans[0])] +
                                      [conv_block(chans[i - 1], chans[i]) for i in range(1, depth + 1)])
        self.upconvs = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth))
        self.decoders = nn.ModuleList(conv_block(2 * chans[i], chans[i]) for i in range(depth))
        self.score = nn.Conv2d(chans[0], num_classes, 1)
        self.pixel_mean = IMAGENET_MEAN
        self.pixel_std = IMAGENET_STD
        self.size_divisibility = 2 ** depth

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) normalised, H and W multiples of 2^depth -> (N, K, H, W) logits."""
        skips = []
        for level, enc in enumerate(self.encoders):
            x = enc(x if level == 0 else F.max_pool2d(x, 2))          # (N, w*2^l, H/2^l, W/2^l)
            skips.append(x)
        x = skips.pop()                                                # the bottom
        for level in reversed(range(len(self.decoders))):
            x = self.upconvs[level](x)                                 # (N, w*2^l, H/2^l, W/2^l)
            x = self.decoders[level](torch.cat([x, skips[level]], dim=1))  # channels: up ++ skip
        return self.score(x)


class ResNetUNet(nn.Module):
    """U-Net decoder on a pretrained ResNet encoder (``backbone`` returns c1..c5).

    decoder_channels: widths of the decoder blocks from stride 16 down to stride 1.
    """

    def __init__(self, backbone: nn.Module, num_classes: int,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)):
        super().__init__()
        names = list(backbone.out_channels)                             # fine to coarse: c1..c5
        if len(decoder_channels) != len(names):
            raise ValueError(f"ResNetUNet: {len(names)} encoder features {names} need "
                             f"{len(names)} decoder widths, got {list(decoder_channels)}")
        self.backbone = backbone
        self.names = names
        skip_chans = [backbone.out_channels[n] for n in reversed(names[:-1])] + [0]  # coarse to fine, then none
        blocks, cin = [], backbone.out_channels[names[-1]]
        for skip, cout in zip(skip_chans, decoder_channels):
            blocks.append(conv_block(cin + skip, cout))
            cin = cout
        self.decoders = nn.ModuleList(blocks)
        self.score = nn.Conv2d(cin, num_classes, 1)
        self.pixel_mean = backbone.pixel_mean
        self.pixel_std = backbone.pixel_std
        self.size_divisibility = max(int(backbone.size_divisibility), backbone.out_strides[names[-1]])
        self.first_stride = backbone.out_strides[names[0]]

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) normalised -> (N, K, H, W) logits."""
        size = x.shape[-2:]
        feats = self.backbone(x)
        skips = [feats[n] for n in reversed(self.names)]                # coarse to fine
        y = skips[0]
        for i, dec in enumerate(self.decoders):
            if i + 1 < len(skips):
                skip = skips[i + 1]
                y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                y = dec(torch.cat([y, skip], dim=1))                    # channels: decoder ++ skip
            else:                                                       # the finest feature to full size
                y = dec(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return self.score(y)

"""A trained segmenter as one traceable function of one image, for ONNX and TorchScript export.

Shape shorthand: H x W the input image, Hp x Wp it padded to the model's divisibility, K classes.

``ExportableSegmentor(model)`` wraps a ``SemanticSegmentor``:
    image (3, H, W) float32 RGB in [0, 1] -> labels (H, W) int64 class indices (0..K-1)
with the eager model's padding (its mirror image, or the pixel mean), normalisation, input scale
and crop, the sizes taken from the input's shape so that the traced graph serves every size.
The input scale s = 1/f (f a whole number) shrinks the image with the eager model's
antialiased bilinear filter written as a strided convolution (ONNX has no antialiased resize in
the exporter): the same tent weights, renormalised at the borders. Mirror padding reflects (the eager model replicates the edge instead when the padding is as
wide as the image, i.e. only for images smaller than ``size_divisibility``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEG_OUTPUTS = ("labels",)


def tent_kernel(f: int, channels: int = 3) -> Tensor:
    """(channels, 1, 2f, 2f) weights of bilinear antialiased shrinking by f: the tent of half-width f
    around each output centre f*i + (f-1)/2, taps from f*i - f//2."""
    offsets = -(f // 2) + torch.arange(2 * f, dtype=torch.float32) - (f - 1) / 2  # tap - centre
    w = (1 - offsets.abs() / f).clamp(min=0)                                   # (2f,)
    return (w[:, None] * w[None, :]).expand(channels, 1, -1, -1).contiguous()  # a constant shape for ONNX


def shrink(x: Tensor, kernel: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, H/f, W/f) with ``kernel = tent_kernel(f)``: ``F.interpolate(x,
    scale_factor=1/f, mode="bilinear", antialias=True)`` as a strided depthwise convolution,
    renormalised where the tent leaves the image. H and W must be multiples of f."""
    f = kernel.shape[-1] // 2
    pad = (f // 2, f - f // 2, f // 2, f - f // 2)                             # output = H / f
    num = F.conv2d(F.pad(x, pad), kernel, stride=f, groups=kernel.shape[0])
    den = F.conv2d(F.pad(torch.ones_like(x[:, :1]), pad), kernel[:1], stride=f)   # weights inside the image
    return num / den


class ExportableSegmentor(nn.Module):
    """``forward(image (3, H, W)) -> (labels (H, W),)``; see the module docstring."""

    def __init__(self, model: nn.Module):
        super().__init__()
        factor = 1.0 / model.input_scale
        if abs(factor - round(factor)) > 1e-6:
            raise ValueError(f"model.input_scale = {model.input_scale} cannot be exported: it must be 1/f "
                             "for a whole number f (0.5, 0.25, ...)")
        self.model = model.eval()
        self.register_buffer("kernel", tent_kernel(round(factor)), persistent=False)
        self.outputs = SEG_OUTPUTS

    def forward(self, image: Tensor) -> tuple[Tensor]:
        m = self.model
        h, w = image.shape[-2:]
        div = m.size_divisibility
        ph, pw = (div - h % div) % div, (div - w % div) % div
        if m.mirror_padding:
            x = F.pad(image[None], (0, pw, 0, ph), mode="reflect")            # (1, 3, Hp, Wp)
        else:
            mean = m._mean[0]                                                 # (3, 1, 1)
            x = (F.pad(image - mean, (0, pw, 0, ph)) + mean)[None]            # padding = the mean
        x = (x - m._mean) / m._std
        if m.input_scale != 1.0:
            size = x.shape[-2:]
            x = shrink(x, self.kernel)                                          # (1, 3, s Hp, s Wp)
            logits = F.interpolate(m.net(x), size=size, mode="bilinear", align_corners=False)
        else:
            logits = m.net(x)                                                 # (1, K, Hp, Wp)
        return (logits[0, :, :h, :w].argmax(dim=0),)                          # (H, W)


def load_segmentor(checkpoint: str | Path, config: str | Path | None = None, overrides=(),
                   data: str | Path | None = None):
    """(SemanticSegmentor in eval mode on CPU, SegConfig, val dataset) of a tools/train_seg.py
    checkpoint. The config is ``config`` or the one the checkpoint stores, with ``overrides``;
    the classes come from the config's val split (``data`` replaces ``data.root``)."""
    import yaml

    from common.config import ConfigError, apply_override, load_config, merge
    from common.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
    from segmentation.build import build_dataset, build_model, resolve_root
    from segmentation.config import SegConfig

    state = load_checkpoint(checkpoint)
    overrides = list(overrides) + ([f"data.root={data}"] if data else [])
    if config is not None:
        cfg = load_config(SegConfig, config, overrides)
    elif state.get("config_yaml"):
        try:
            stored = yaml.safe_load(state["config_yaml"]) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"the config stored in {checkpoint} is not valid YAML ({e})") from None
        cfg = merge(SegConfig(), stored, source=f"the config stored in {checkpoint}")
        for item in overrides:
            cfg = apply_override(cfg, item)
    else:
        raise CheckpointError(f"checkpoint {checkpoint} stores no config; pass --config")
    # the checkpoint holds every weight: nothing is fetched
    cfg = replace(cfg, model=replace(cfg.model, backbone=replace(cfg.model.backbone, weights=None)))
    val = build_dataset(cfg.data, cfg.data.val_split, train=False, root=resolve_root(cfg.data))
    model = build_model(cfg.model, val.num_classes, ignore_index=val.ignore_index)
    load_model_state(model, state.get("model", state), f"checkpoint {checkpoint}")
    return model.eval(), cfg, val

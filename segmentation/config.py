"""Segmentation configs: dataclass defaults (a small U-Net on the shapes dataset; the default
CPU recipe, ``configs/segmentation/unet_shapes_cpu.yaml``, spells out its own settings) that a
YAML in ``configs/segmentation/`` changes only where it differs; ``key=value`` overrides via
``common.config.load_config(SegConfig, path, overrides)``. Only ``build.py`` reads them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.engine.config import SolverConfig


@dataclass
class BackboneConfig:
    name: str = "resnet18"  # resnet18|resnet34|resnet50|resnet101|vgg16 (common.backbones)
    weights: str | None = None  # None (random init), "imagenet" or a path to a torchvision .pth
    freeze_at: int = 0  # 0 trains everything; k freezes stem and c2..ck
    norm: str = "BN"  # FrozenBN | BN | GN | SyncBN for the stages that train


@dataclass
class ModelConfig:
    arch: Literal["fcn", "unet", "unet_resnet"] = "unet"  # the dense network
    fcn_variant: Literal["32s", "16s", "8s"] = "8s"  # FCN: which skips (none; c4; c4 + c3)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # FCN and unet_resnet encoders
    head_channels: int = 512  # FCN classifier head width (VGG16 fc6/fc7: 4096 to load them)
    head_dropout: float = 0.1  # dropout after the FCN head (the paper: 0.5 on VGG)
    learn_final_upsample: bool = False  # FCN: learn the last bilinear upsampler too
    unet_width: int = 16  # U-Net channels at full resolution (paper: 64)
    unet_depth: int = 4  # U-Net poolings (paper: 4)
    decoder_channels: tuple[int, ...] = (128, 64, 32, 32, 16)  # unet_resnet decoder widths, stride 16 -> 1
    input_scale: float = 1.0  # the network runs on images resized by this; logits resized back
    mirror_padding: bool = True  # fill each image's batch padding with its mirror image (segmentor.py)
    loss: Literal["ce", "focal", "dice", "ce+dice"] = "ce"  # pixel loss (segmentation/losses.py)
    class_weighting: Literal["none", "median_freq", "log"] = "none"  # CE/focal weights from train frequencies
    prior_init: bool = True  # classifier bias starts at ln(class pixel share) of the training set
    focal_gamma: float = 2.0  # focal loss exponent
    dice_weight: float = 1.0  # weight of the Dice term in "ce+dice"


@dataclass
class DataConfig:
    format: Literal["semantic_dir", "voc", "coco"] = "semantic_dir"  # dataset layout (segmentation/data.py)
    root: str | None = None  # dataset directory; None = the shapes dataset (ensure_shapes_dataset)
    train_split: str = "train"  # split name (semantic_dir/voc) or JSON stem (coco)
    val_split: str = "val"
    crop_size: int = 128  # training crop side in pixels (0 = whole images)
    scale_range: tuple[float, float] = (0.75, 1.25)  # training random scale
    hflip: bool = True  # training horizontal flips
    color_jitter: float = 0.2  # training colour jitter strength (0 = off)
    repeat_threshold: float = 0.0  # repeat-factor resampling threshold t (0 = off)
    num_workers: int = 0  # DataLoader workers
    skip_bad_images: bool = False  # leave out images (or label maps) the start-up dataset check finds bad (listed in RUN/skipped_images.txt) instead of stopping
    num_vis: int = 4  # val images drawn with their predictions at evaluation


@dataclass
class SegConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=lambda: SolverConfig(
        optimizer="adamw", base_lr=5e-3, weight_decay=1e-4, max_iters=600, warmup_iters=30,
        schedule="cosine", steps=(), ims_per_batch=8, checkpoint_period=300, eval_period=300,
        log_period=20, best_metric="mIoU"))  # unet_shapes_cpu.yaml sets its own schedule

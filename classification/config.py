"""Dataclass config of ``tools/train_cls.py``; only ``classification/build.py`` reads it.

The number of classes comes from the dataset (its class folders), not from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from common.engine.config import SolverConfig


@dataclass
class DataConfig:
    root: Optional[str] = None  # train/<class>/*, val/<class>/* (ImageNet layout); None = the built-in source task
    builtin_root: str = "datasets/source_cls"  # where the built-in source task is generated on first use
    image_size: int = 64  # side of the square training crop and of the evaluation centre crop
    # random resized crop: area fraction range; None = by data: ImageNet's (0.08, 1) for a --data folder,
    # (0.35, 1) for the built-in source task, whose one figure fills 45-90 % of a 72 px image (an 8 %
    # crop often holds none of it)
    crop_scale: Optional[tuple[float, float]] = None
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # random resized crop: aspect ratio range
    hflip: bool = True  # random horizontal flips in training
    eval_resize: float = 1.14  # evaluation: shorter side resized to image_size * this, then centre crop (256/224)
    num_workers: int = 2  # DataLoader workers


@dataclass
class ClsConfig:
    arch: str = "resnet18"  # resnet18|resnet34|resnet50|resnet101|vgg16|mobilenet_v3_large (common.backbones)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=lambda: SolverConfig(
        optimizer="sgd", base_lr=0.0125, momentum=0.9, weight_decay=1e-4, max_iters=2000, warmup_iters=50,
        schedule="cosine", steps=(), ims_per_batch=32, checkpoint_period=500, eval_period=500,
        log_period=20, best_metric="top1", clip_grad_norm=0.0))
    # a CPU-sized schedule: 16 min on 2 cores, 86 % top-1 on the built-in task and a backbone that
    # transfers (README, "Transfer learning"). base_lr follows the ImageNet rule 0.1 * batch / 256
    # (0.05 diverged at first and reached only 23 % top-1 on the source task in 200 iterations)
    eval_batch_size: int = 64  # images per evaluation batch

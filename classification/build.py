"""ClsConfig -> datasets and model. The only module of ``classification`` that reads a config."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from classification.config import ClsConfig, DataConfig
from classification.data import ClassificationDataError, ClassificationTransforms, ImageFolderDataset
from classification.model import ImageClassifier
from classification.source_data import ensure_source_dataset
from common.backbones import ARCHITECTURES


def resolve_root(cfg: DataConfig) -> Path:
    """``data.root``, or the built-in source task (generated on first use)."""
    if cfg.root is None:
        return ensure_source_dataset(cfg.builtin_root)
    return Path(cfg.root)


IMAGENET_CROP_SCALE = (0.08, 1.0)
BUILTIN_CROP_SCALE = (0.35, 1.0)


def with_data_defaults(cfg: ClsConfig) -> tuple[ClsConfig, str]:
    """``data.crop_scale`` chosen by the data when left at None (see ``DataConfig``); the config
    to record and one line saying what was chosen ("" when the user set it)."""
    if cfg.data.crop_scale is not None:
        return cfg, ""
    builtin = cfg.data.root is None
    scale = BUILTIN_CROP_SCALE if builtin else IMAGENET_CROP_SCALE
    why = "the built-in task's figures fill 45-90 % of each image" if builtin else "ImageNet's"
    note = f"random resized crops keep {scale[0]:g}-{scale[1]:g} of the image area ({why}; data.crop_scale sets it)"
    return replace(cfg, data=replace(cfg.data, crop_scale=scale)), note


def build_datasets(cfg: ClsConfig, root: Path) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """The train and val splits of ``root``; both must list the same classes."""
    d = with_data_defaults(cfg)[0].data
    common = dict(image_size=d.image_size, crop_scale=d.crop_scale, crop_ratio=d.crop_ratio, hflip=d.hflip,
                  eval_resize=d.eval_resize)
    train = ImageFolderDataset(root / "train", ClassificationTransforms(True, **common))
    val = ImageFolderDataset(root / "val", ClassificationTransforms(False, **common))
    if train.class_names != val.class_names:
        only_train = sorted(set(train.class_names) - set(val.class_names))
        only_val = sorted(set(val.class_names) - set(train.class_names))
        raise ClassificationDataError(f"{root}: train/ and val/ have different class folders (only in "
                                      f"train: {only_train or 'none'}; only in val: {only_val or 'none'})")
    return train, val


def check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def build_model(arch: str, num_classes: int) -> ImageClassifier:
    """torchvision's ``arch`` classification network with a ``num_classes`` head, random init."""
    check_arch(arch)
    constructor, _ = ARCHITECTURES[arch]
    return ImageClassifier(constructor(num_classes=num_classes))

"""Config -> objects for segmentation. The only module of the package that reads a config.

    train_ds, val_ds = build_datasets(cfg.data)
    stats = class_pixel_stats_of(train_ds)              # one pass over the training label maps
    model = build_model(cfg.model, train_ds.num_classes, class_weight=build_class_weight(cfg.model, stats),
                        class_prior=build_class_prior(cfg.model, stats))
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.samplers import repeat_factors, repeat_indices
from common.dataset_check import CheckResult, check_splits, report_checks
from segmentation.config import DataConfig, ModelConfig
from segmentation.data import (LabelSplit, SegDataError, SemSegDataset, build_transforms, load_coco_semantic,
                               semantic_dir_split, voc_split)
from segmentation.fcn import FCN, ConvClassifier, ConvHead
from segmentation.losses import class_pixel_stats, class_prior_bias, class_weights
from segmentation.segmentor import SemanticSegmentor
from segmentation.unet import ResNetUNet, UNet

FCN_SKIPS = {"32s": (), "16s": ("c4",), "8s": ("c4", "c3")}


def build_model(cfg: ModelConfig, num_classes: int, *, class_weight: torch.Tensor | None = None,
                class_prior: torch.Tensor | None = None, ignore_index: int = 255) -> SemanticSegmentor:
    """A :class:`SemanticSegmentor` around an FCN-32s/16s/8s, a U-Net or a ResNet U-Net.

    class_prior: (K,) bias for the final classifier (``losses.class_prior_bias``), or None to
    keep its initialisation.
    """
    from common.backbones import build_backbone

    b = cfg.backbone
    if cfg.arch == "fcn":
        skips = FCN_SKIPS[cfg.fcn_variant]
        backbone = build_backbone(b.name, weights=b.weights, freeze_at=b.freeze_at, norm=b.norm,
                                  out_features=("c5", *skips))
        c5 = backbone.out_channels["c5"]
        if b.name == "vgg16":
            head = ConvClassifier(c5, cfg.head_channels, cfg.head_dropout)
            if b.weights is not None and cfg.head_channels == 4096:
                from common.backbones import load_vgg16_classifier
                head.load_classifier(load_vgg16_classifier(b.weights, as_conv=True))
        else:
            head = ConvHead(c5, cfg.head_channels, cfg.head_dropout)
        net = FCN(backbone, head, num_classes, top="c5", skips=skips,
                  learn_final_upsample=cfg.learn_final_upsample)
    elif cfg.arch == "unet":
        net = UNet(num_classes, width=cfg.unet_width, depth=cfg.unet_depth)
    elif cfg.arch == "unet_resnet":
        backbone = build_backbone(b.name, weights=b.weights, freeze_at=b.freeze_at, norm=b.norm,
                                  out_features=("c1", "c2", "c3", "c4", "c5"))
        net = ResNetUNet(backbone, num_classes, tuple(cfg.decoder_channels))
    else:  # the config loader already restricts the values
        raise ValueError(f"model.arch = {cfg.arch!r} must be fcn, unet or unet_resnet")
    return wrap_net(net, cfg, num_classes, class_weight=class_weight, class_prior=class_prior,
                    ignore_index=ignore_index)


def wrap_net(net: torch.nn.Module, cfg: ModelConfig, num_classes: int, *,
             class_weight: torch.Tensor | None = None, class_prior: torch.Tensor | None = None,
             ignore_index: int = 255) -> SemanticSegmentor:
    """``net`` (normalised images -> logits) with its classifier bias at ``class_prior`` (if given)
    inside a :class:`SemanticSegmentor` with ``cfg``'s loss, input scale and padding."""
    if class_prior is not None:
        init_classifier_bias(net, class_prior)
    return SemanticSegmentor(net, num_classes, loss=cfg.loss, class_weight=class_weight,
                             focal_gamma=cfg.focal_gamma, dice_weight=cfg.dice_weight,
                             ignore_index=ignore_index, input_scale=cfg.input_scale,
                             mirror_padding=cfg.mirror_padding)


def layout_of(cfg: DataConfig) -> str:
    """What a dataset folder of ``cfg.format`` holds (for messages)."""
    t, v = cfg.train_split, cfg.val_split
    return {"semantic_dir": f"semantic.json, {t}/, {t}_semantic/, {v}/ and {v}_semantic/",
            "voc": "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/",
            "coco": f"{t}.json, {v}.json, {t}/ and {v}/"}.get(cfg.format, "?")
def read_checkpoint(checkpoint: str | Path, config: str | Path | None = None, overrides=()):
    """(state dict, SegConfig) of a checkpoint written by tools/train_seg.py: the config is
    ``config`` (a YAML path) or else the one the checkpoint stores, with the ``key=value``
    ``overrides`` on top; its backbone ``weights`` is cleared (the checkpoint holds every weight:
    nothing is fetched)."""
    from dataclasses import replace

    from common.config import stored_config
    from common.engine.checkpoint import CheckpointError, load_checkpoint
    from segmentation.config import SegConfig

    state = load_checkpoint(checkpoint)
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"checkpoint {checkpoint} has no 'model' weights (it holds: "
                              f"{', '.join(sorted(state)) or 'nothing'})")
    # runs made before the skeleton stored output_dir and device in the config
    cfg = stored_config(SegConfig, state, checkpoint, config, overrides, retired_keys=("output_dir", "device"))
    return state, replace(cfg, model=replace(cfg.model, backbone=replace(cfg.model.backbone, weights=None)))


def resolve_root(cfg: DataConfig) -> Path:
    """The dataset directory: ``cfg.root`` or the built-in shapes dataset (generated if missing)."""
    if cfg.root is not None:
        root = Path(cfg.root)
        if root.is_file():
            raise SegDataError(f"dataset folder {root} is a file, not a folder; a data.format={cfg.format} "
                               f"dataset folder holds {layout_of(cfg)}")
        if not root.is_dir():
            raise SegDataError(f"dataset folder {root} does not exist (a data.format={cfg.format} dataset "
                               f"folder holds {layout_of(cfg)})")
        return root
    from common.shapes import ensure_shapes_dataset
    return ensure_shapes_dataset()


def check_data(cfg: DataConfig, root: Path, run_dir: Path | None, splits: tuple[str, ...] | None = None,
               cache_dir: Path | None = None) -> CheckResult:
    """The start-up dataset check of ``splits`` (default: train and val) with ``common.dataset_check``,
    before any work: every image decoded once; for data.format=coco every annotation checked (as
    for the detectors), for semantic_dir and voc every label map decoded and checked against its
    image's size and the classes. Stops with every problem listed unless ``data.skip_bad_images``
    (then the images to leave out, listed in ``run_dir``); results are cached."""
    splits = splits or (cfg.train_split, cfg.val_split)
    if cfg.format == "coco":
        return check_splits([(root / f"{s}.json", root / s) for s in splits], skip_bad_images=cfg.skip_bad_images,
                            run_dir=run_dir, cache_dir=cache_dir)
    return report_checks(lambda: [label_split(cfg, root, s).check(cache_dir) for s in splits],
                         skip_bad_images=cfg.skip_bad_images, run_dir=run_dir)


def label_split(cfg: DataConfig, root: Path, split: str) -> LabelSplit:
    """A split of the label-map layouts (data.format semantic_dir or voc) as listed on disk."""
    if cfg.format == "semantic_dir":
        return semantic_dir_split(root, split)
    if cfg.format == "voc":
        return voc_split(root, split)
    raise ValueError(f"data.format = {cfg.format!r} has no label-map files (semantic_dir and voc have)")


def build_dataset(cfg: DataConfig, split: str, train: bool, root: Path | None = None,
                  checked: CheckResult | None = None) -> SemSegDataset:
    """One split with the training or evaluation transforms (``checked``: what :func:`check_data`
    found; its bad images are left out)."""
    root = resolve_root(cfg) if root is None else Path(root)
    checked = checked or CheckResult()
    tf = build_transforms(train, cfg.crop_size, tuple(cfg.scale_range), cfg.hflip, cfg.color_jitter)
    if cfg.format in ("semantic_dir", "voc"):
        s = label_split(cfg, root, split)
        return s.dataset(tf, checked.skip_ids(s.source))
    if cfg.format == "coco":
        ann = root / f"{split}.json"
        return load_coco_semantic(ann, root / split, tf, checked.skip_ids(ann))
    raise ValueError(f"data.format = {cfg.format!r} must be semantic_dir, voc or coco")


def build_datasets(cfg: DataConfig, root: Path | None = None,
                   checked: CheckResult | None = None) -> tuple[SemSegDataset, SemSegDataset]:
    root = resolve_root(cfg) if root is None else Path(root)
    return (build_dataset(cfg, cfg.train_split, True, root, checked),
            build_dataset(cfg, cfg.val_split, False, root, checked))


def init_classifier_bias(net: torch.nn.Module, bias: torch.Tensor) -> None:
    """Set the bias of the network's last scoring conv (U-Nets: ``score``, FCN: ``score_fr``;
    FCN's skip scorers start at zero, so its logits start at ``bias`` too)."""
    conv = getattr(net, "score", None) or getattr(net, "score_fr", None)
    if conv is None or conv.bias is None or conv.bias.shape != bias.shape:
        raise ValueError(f"{type(net).__name__} has no scoring conv with a bias of shape {tuple(bias.shape)} "
                         "to start at the class prior; set model.prior_init=false")
    with torch.no_grad():
        conv.bias.copy_(bias)


def class_pixel_stats_of(train_ds: SemSegDataset) -> tuple[np.ndarray, np.ndarray]:
    """``losses.class_pixel_stats`` over every training label map (read once, before transforms)."""
    return class_pixel_stats((train_ds.read_label(i) for i in range(len(train_ds))),
                             train_ds.num_classes, train_ds.ignore_index)


def needs_class_stats(cfg: ModelConfig) -> bool:
    return cfg.class_weighting != "none" or cfg.prior_init


def build_class_weight(cfg: ModelConfig, stats) -> torch.Tensor | None:
    """Loss weights from :func:`class_pixel_stats_of` (``model.class_weighting``), or None."""
    if cfg.class_weighting == "none":
        return None
    return class_weights(*stats, method=cfg.class_weighting)


def build_class_prior(cfg: ModelConfig, stats) -> torch.Tensor | None:
    """The classifier's starting bias ln(class share) (``model.prior_init``), or None."""
    return class_prior_bias(stats[0]) if cfg.prior_init else None


def build_train_indices(cfg: DataConfig, train_ds: SemSegDataset, seed: int = 0) -> list[int]:
    """Indices the training sampler draws from: each image once, or repeated by class rarity."""
    if cfg.repeat_threshold <= 0:
        return list(range(len(train_ds)))
    present = []
    for i in range(len(train_ds)):
        lab = train_ds.read_label(i)
        present.append({int(c) for c in np.unique(lab) if c != train_ds.ignore_index})
    return repeat_indices(repeat_factors(present, cfg.repeat_threshold), seed)

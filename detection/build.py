"""Config -> objects for detection. The only module that reads ``ModelConfig``.

Faster, Mask and Keypoint R-CNN (and mask + keypoint) are configurations of the same parts;
FPN, C4 (res5 box head on single-level pooling) and VGG16 variants differ only in which
features feed which part.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.config import ConfigError, stored_config
from common.dataset_check import CheckResult, check_splits
from common.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from detection.box_coder import BoxCoder
from detection.anchors import AnchorGenerator, anchors_for_boxes
from detection.box_head import (ConvFCHead, FastRCNNPredictor, Res5Head, compress_fc_layers,
                                inverse_sqrt_frequency_weights)
from detection.config import DataConfig, DetConfig, ModelConfig, RPNConfig
from detection.data import CocoDetection, DatasetError, DatasetMeta, build_transforms, load_coco_json, meta_from_coco
from detection.generalized_rcnn import GeneralizedRCNN
from detection.keypoint_head import KeypointRCNNHead
from detection.mask_head import MaskRCNNHead
from detection.poolers import RoIPooler
from detection.rcnn import RCNN
from detection.roi_heads import RoIHeads
from detection.rpn import RPN, RPNHead


def build_model(model_cfg: ModelConfig, num_classes: int, num_keypoints: int = 0,
                keypoint_flip_indices: list[int] | None = None, *,
                keypoint_classes: list[int] | None = None, class_counts: list[int] | None = None,
                backbone: nn.Module | None = None) -> GeneralizedRCNN | RCNN:
    """Build the detector described by ``model_cfg`` for a dataset with ``num_classes`` classes
    and ``num_keypoints`` keypoints. ``backbone``: an already built Backbone to use instead of
    ``common.backbones.build_backbone(model_cfg.backbone...)`` (tests, custom backbones).
    ``keypoint_classes``: labels whose detections get keypoints at inference (None: all), from
    ``DatasetMeta.keypoint_classes``. ``class_counts``: training instances per class, for
    ``box_head.class_weighting`` (needed only when it is on, and only for training)."""
    cfg = model_cfg
    if num_classes < 1:
        raise ValueError(f"build_model: num_classes must be >= 1, got {num_classes}")
    if cfg.meta_architecture == "rcnn":
        return build_rcnn(cfg, num_classes, backbone)
    for key, weight in (("rpn", cfg.rpn.loss_weight), ("mask_head", cfg.mask_head.loss_weight),
                        ("keypoint_head", cfg.keypoint_head.loss_weight)):
        if not weight >= 0:  # NaN too
            raise ValueError(f"model.{key}.loss_weight must be >= 0, got {weight}")
    if cfg.keypoint_on and num_keypoints < 1:
        raise ValueError("build_model: model.keypoint_on is true but the dataset has no keypoints "
                         f"(num_keypoints={num_keypoints})")
    if backbone is None:
        from common.backbones import build_backbone

        b = cfg.backbone
        out_features = tuple(b.out_features)
        if cfg.box_head.kind == "res5" and "c5" not in out_features:
            out_features += ("c5",)  # built with the body, then moved into the box head
        backbone = build_backbone(b.name, weights=b.weights, freeze_at=b.freeze_at, norm=b.norm,
                                  out_features=out_features, fpn=b.fpn, fpn_channels=b.fpn_channels)
    if cfg.backbone.vgg_conv5_stride16:
        drop_vgg_pool5(backbone)
    res5 = take_res5(backbone) if cfg.box_head.kind == "res5" else None
    rpn = build_rpn(cfg, backbone) if cfg.proposal_generator == "rpn" else None
    roi_heads = build_roi_heads(cfg, backbone, num_classes, num_keypoints if cfg.keypoint_on else 0, res5,
                                keypoint_classes, class_counts)
    model = GeneralizedRCNN(backbone, rpn, roi_heads, num_classes, num_keypoints if cfg.keypoint_on else 0,
                            keypoint_flip_indices, channels_last=cfg.channels_last)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last is True else model


def adapt_bn_to_data(model: nn.Module, dataset: CocoDetection, images: int, seed: int = 0) -> str:
    """``model.backbone.adapt_bn_images``: the running statistics of the backbone's BN / FrozenBN
    layers become those of ``images`` training images (a seeded sample, each passed alone at its
    training size, augmentation included, so no padding enters the statistics): AdaBN, for a
    pretrained backbone whose statistics come from other data. Runs on the model's device.
    Returns the line train_det prints: how many layers, images, and how far the means moved."""
    from common.backbones.norm import adapt_bn_statistics, bn_layers

    if images < 0:
        raise ConfigError(f"model.backbone.adapt_bn_images = {images} must be >= 0 (0 keeps the backbone's "
                          "BatchNorm statistics)")
    body, backbone = model.backbone.body, model.backbone
    layers = bn_layers(body)
    if not layers:
        return "model.backbone.adapt_bn_images: the backbone has no BatchNorm layers to adapt (GroupNorm?)"
    before = [(m.running_mean.clone(), m.running_var.clone(), m.eps) for m in layers]
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:images].tolist()
    device = next(body.parameters(), torch.empty(0)).device

    def inputs():
        for i in order:
            image, _ = dataset[i]
            yield image.unsqueeze(0).to(device).float().div_(255.0)

    was_training = backbone.training
    backbone.eval()
    try:
        adapt_bn_statistics(body, inputs(), lambda x: body(backbone.normalize(x)))
    finally:
        backbone.train(was_training)
    shift = sum(float(((m.running_mean - mean).abs() * torch.rsqrt(var + eps)).mean())
                for m, (mean, var, eps) in zip(layers, before)) / len(layers)
    return (f"backbone BatchNorm statistics from {len(order)} training images (model.backbone.adapt_bn_images, "
            f"AdaBN): {len(layers)} layers, their means moved by {shift:.2f} of the previous standard "
            "deviations on average")


def build_rcnn(cfg: ModelConfig, num_classes: int, backbone: nn.Module | None = None) -> RCNN:
    """R-CNN (2014): the backbone's last stage, averaged over space, is each warped proposal's feature."""
    b, r, rh = cfg.backbone, cfg.rcnn, cfg.roi_heads
    if cfg.mask_on or cfg.keypoint_on:
        raise ValueError("model.meta_architecture = 'rcnn' has no mask or keypoint branch; set model.mask_on "
                         "and model.keypoint_on to false")
    if backbone is None:
        if b.fpn:
            raise ValueError("model.meta_architecture = 'rcnn' pools the backbone's last stage; set "
                             "model.backbone.fpn: false")
        from common.backbones import build_backbone

        backbone = build_backbone(b.name, weights=b.weights, freeze_at=b.freeze_at, norm=b.norm,
                                  out_features=tuple(b.out_features), fpn=False)
    return RCNN(backbone, num_classes, warp_size=r.warp_size, context_pad=r.context_pad,
                proposals_per_image=r.proposals_per_image, batch_size=r.batch_size,
                positive_fraction=r.positive_fraction, fg_iou=r.fg_iou, feature_batch=r.feature_batch,
                classifier=r.classifier, score_thresh=rh.score_thresh, nms_thresh=rh.nms_thresh,
                detections_per_img=rh.detections_per_img)


def _check_features(backbone: nn.Module, names: tuple[str, ...], key: str) -> tuple[int, list[int]]:
    """Channels (equal across ``names``) and strides of the named backbone outputs."""
    missing = [n for n in names if n not in backbone.out_channels]
    if missing or not names:
        raise ValueError(f"model.{key} = {list(names)} but the backbone outputs {list(backbone.out_features)}")
    channels = {backbone.out_channels[n] for n in names}
    if len(channels) != 1:
        raise ValueError(f"model.{key} = {list(names)} have different channel counts {sorted(channels)}; "
                         "use an FPN or a single level")
    return channels.pop(), [int(backbone.out_strides[n]) for n in names]


def take_res5(backbone: nn.Module) -> nn.Module:
    """Move the backbone's c5 stage into the box head (C4 models): the backbone then stops at c4
    (``common.backbones.Body`` stops at a missing stage) and the stage runs per RoI instead.
    Its parameters are then named ``roi_heads.box_head.res5.*``."""
    body = getattr(backbone, "body", None)
    res5 = getattr(body, "c5", None) if body is not None else None
    if not isinstance(res5, nn.Module) or getattr(backbone, "fpn", None) is not None:
        raise ValueError("model.box_head.kind = 'res5' needs a backbone without FPN whose body has a c5 "
                         "stage (backbone.body.c5)")
    body.c5 = None
    for names in (backbone.out_features, getattr(body, "out_features", [])):
        if "c5" in names:
            names.remove("c5")
    backbone.out_channels.pop("c5", None)
    backbone.out_strides.pop("c5", None)
    return res5


def drop_vgg_pool5(backbone: nn.Module) -> None:
    """VGG16 as in Fast/Faster R-CNN: c5 is conv5_3 (stride 16); the last max-pool is removed."""
    c5 = getattr(getattr(backbone, "body", None), "c5", None)
    if not isinstance(c5, nn.Sequential) or not isinstance(c5[-1], nn.MaxPool2d) or backbone.fpn is not None:
        raise ValueError("model.backbone.vgg_conv5_stride16 needs a vgg16 backbone with c5 and no FPN")
    backbone.body.c5 = c5[:-1]
    backbone.out_strides["c5"] = 16


def build_rpn(cfg: ModelConfig, backbone: nn.Module) -> RPN:
    r = cfg.rpn
    channels, strides = _check_features(backbone, tuple(r.in_features), "rpn.in_features")
    if len(r.anchor_sizes) != len(strides):
        raise ValueError(f"model.rpn.anchor_sizes has {len(r.anchor_sizes)} levels but model.rpn.in_features "
                         f"has {len(strides)}")
    anchors = AnchorGenerator(r.anchor_sizes, r.aspect_ratios, strides, r.anchor_offset)
    counts = set(anchors.num_anchors_per_location)
    if len(counts) != 1:
        raise ValueError(f"model.rpn: every level needs the same number of anchors per location "
                         f"(the head is shared), got {anchors.num_anchors_per_location}")
    return RPN(list(r.in_features), anchors, RPNHead(channels, counts.pop()),
               iou_thresholds=r.iou_thresholds, batch_size_per_image=r.batch_size_per_image,
               positive_fraction=r.positive_fraction,
               pre_nms_topk=(r.pre_nms_topk_train, r.pre_nms_topk_test),
               post_nms_topk=(r.post_nms_topk_train, r.post_nms_topk_test), nms_thresh=r.nms_thresh,
               min_size=r.min_size, smooth_l1_beta=r.smooth_l1_beta, loss_weight=r.loss_weight)


@torch.no_grad()
def _output_channels(module: nn.Module, in_channels: int, size: int) -> int:
    """Channels a stage produces, found by running it once on zeros (train/eval mode restored)."""
    was_training = module.training
    module.eval()
    out = module(torch.zeros(1, in_channels, size, size, device=next(module.parameters()).device))
    module.train(was_training)
    return int(out.shape[1])


class _Flatten(nn.Module):
    """(R, C, S, S) -> (R, C * S * S), then ``fcs``; exposes ``out_dim`` like the other heads."""

    def __init__(self, fcs: nn.Module, out_dim: int):
        super().__init__()
        self.fcs = fcs
        self.out_dim = out_dim

    def forward(self, x):
        return self.fcs(x.flatten(1))


def vgg16_fc_head(cfg: ModelConfig, channels: int) -> nn.Module:
    """VGG16's fc6/fc7 on 7x7 pooled conv5_3 features (ImageNet weights when backbone.weights is set)."""
    from common.backbones import load_vgg16_classifier

    if channels != 512 or cfg.box_head.pooler_resolution != 7:
        raise ValueError("model.box_head.kind = 'vgg16_fc' needs 512-channel VGG16 features pooled to 7x7, got "
                         f"{channels} channels and pooler_resolution {cfg.box_head.pooler_resolution}")
    return _Flatten(load_vgg16_classifier(cfg.backbone.weights), 4096)


def build_roi_heads(cfg: ModelConfig, backbone: nn.Module, num_classes: int, num_keypoints: int,
                    res5: nn.Module | None, keypoint_classes: list[int] | None = None,
                    class_counts: list[int] | None = None) -> RoIHeads:
    rh, bh = cfg.roi_heads, cfg.box_head
    class_weights = None
    if bh.class_weighting == "inverse_sqrt" and class_counts is not None:
        if len(class_counts) != num_classes:
            raise ValueError(f"build_model: {len(class_counts)} class counts for {num_classes} classes")
        class_weights = inverse_sqrt_frequency_weights(class_counts)
    if rh.mask_rois_per_image < 0:
        raise ValueError(f"model.roi_heads.mask_rois_per_image must be >= 0 (0: no cap), got {rh.mask_rois_per_image}")
    if not 0.0 <= rh.bg_iou_floor <= rh.iou_thresholds[0]:
        raise ValueError(f"model.roi_heads.bg_iou_floor must be in [0, iou_thresholds[0] = {rh.iou_thresholds[0]}] "
                         f"(the background band is [bg_iou_floor, iou_thresholds[0])), got {rh.bg_iou_floor}")
    channels, strides = _check_features(backbone, tuple(rh.in_features), "roi_heads.in_features")
    scales = [1.0 / s for s in strides]
    box_pooler = RoIPooler(bh.pooler_resolution, scales, bh.pooler_sampling_ratio, bh.pooler_kind, bh.pooler_aligned)
    if res5 is not None:
        box_head = Res5Head(res5, _output_channels(res5, channels, bh.pooler_resolution))
    elif bh.kind == "vgg16_fc":
        box_head = vgg16_fc_head(cfg, channels)
    else:
        box_head = ConvFCHead(channels, bh.pooler_resolution, bh.fc_dim, bh.num_fcs, bh.num_convs,
                              bh.conv_dim, bh.norm)
    kwargs = {}
    if cfg.mask_on:
        m = cfg.mask_head
        kwargs["mask_pooler"] = RoIPooler(m.pooler_resolution, scales, m.pooler_sampling_ratio, "align", True)
        mask_classes = 1 if m.class_agnostic else num_classes
        kwargs["mask_loss_weight"] = m.loss_weight
        if res5 is not None:  # C4: the mask branch shares res5 and adds only the deconv
            kwargs["mask_head"] = MaskRCNNHead(box_head.out_dim, mask_classes, m.conv_dim, m.num_convs, m.norm,
                                               trunk=res5)
        else:
            kwargs["mask_head"] = MaskRCNNHead(channels, mask_classes, m.conv_dim, m.num_convs, m.norm)
    if num_keypoints > 0:
        k = cfg.keypoint_head
        kwargs["keypoint_pooler"] = RoIPooler(k.pooler_resolution, scales, k.pooler_sampling_ratio, "align", True)
        kwargs["keypoint_head"] = KeypointRCNNHead(channels, num_keypoints, k.conv_dim, k.num_convs, k.norm)
        kwargs["keypoint_subpixel"] = k.subpixel
        kwargs["keypoint_loss_weight"] = k.loss_weight
        kwargs["keypoint_classes"] = keypoint_classes
    return RoIHeads(num_classes, list(rh.in_features), box_pooler, box_head,
                    FastRCNNPredictor(box_head.out_dim, num_classes),
                    box_coder=BoxCoder(tuple(bh.bbox_reg_weights)), iou_thresholds=rh.iou_thresholds,
                    bg_iou_floor=rh.bg_iou_floor,
                    batch_size_per_image=rh.batch_size_per_image, positive_fraction=rh.positive_fraction,
                    add_gt_as_proposals=rh.add_gt_as_proposals,
                    mask_rois_per_image=rh.mask_rois_per_image, smooth_l1_beta=bh.smooth_l1_beta,
                    classifier=bh.classifier,
                    score_thresh=rh.score_thresh, nms_thresh=rh.nms_thresh,
                    detections_per_img=rh.detections_per_img, branch_score_thresh=rh.branch_score_thresh,
                    aux_grad_cap=rh.aux_grad_cap, class_weights=class_weights, **kwargs)


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class DataPaths:
    """The annotation files and image folders a run reads."""

    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path


def resolve_data_paths(data_cfg: DataConfig, data_dir: str | None = None) -> DataPaths:
    """Where the data is: explicit ``train_json``/``val_json`` + image folders, else a folder in
    the synthetic layout (``--data DIR`` or ``data.root``). The built-in synthetic dataset is
    generated on first use when the root is the default one and does not exist yet."""
    d = data_cfg
    if d.train_json or d.val_json:
        pairs = {"data.train_json": d.train_json, "data.train_images": d.train_images,
                 "data.val_json": d.val_json, "data.val_images": d.val_images}
        missing = [k for k, v in pairs.items() if not v]
        if missing:
            raise DatasetError(f"explicit data paths need all four of train_json, train_images, val_json, "
                               f"val_images; missing: {', '.join(missing)}")
        paths = DataPaths(Path(d.train_json), Path(d.train_images), Path(d.val_json), Path(d.val_images))
    else:
        root = Path(data_dir or d.root)
        if data_dir is None and d.root == DataConfig.root and not (root / "val.json").is_file():
            from common.shapes import ensure_shapes_dataset

            print(f"generating the built-in synthetic dataset in {root} (first use)")
            ensure_shapes_dataset(root)
        if root.is_file():
            raise DatasetError(f"dataset folder {root} is a file, not a folder; a dataset folder holds "
                               "train.json, val.json, train/ and val/ (or give data.train_json, "
                               "data.train_images, data.val_json and data.val_images)")
        paths = DataPaths(root / "train.json", root / "train", root / "val.json", root / "val")
    for name in ("train_json", "val_json"):
        if not getattr(paths, name).is_file():
            raise DatasetError(f"annotation file not found: {getattr(paths, name)} (data.{name}; a dataset "
                               "folder must hold train.json, val.json, train/ and val/)")
    for name in ("train_images", "val_images"):
        if not getattr(paths, name).is_dir():
            raise DatasetError(f"image folder not found: {getattr(paths, name)} (data.{name})")
    return paths


def check_data(cfg: DetConfig, paths: DataPaths, run_dir: Path | None) -> CheckResult:
    """The start-up dataset check of both splits (``common.dataset_check``): every image decoded,
    every annotation checked, before the first iteration. Stops with every problem listed unless
    ``data.skip_bad_images`` (then the images to leave out, listed in ``run_dir``)."""
    return check_splits([(paths.train_json, paths.train_images), (paths.val_json, paths.val_images)],
                        skip_bad_images=cfg.data.skip_bad_images, run_dir=run_dir)


def build_datasets(cfg: DetConfig, paths: DataPaths,
                   checked: CheckResult | None = None) -> tuple[CocoDetection, CocoDetection]:
    """The training set (augmented, empty images dropped per config) and the val set (resize only).

    Masks and keypoints are read only when the model uses them. ``checked``: what
    :func:`check_data` found, whose bad images are left out.
    """
    d = cfg.data
    checked = checked or CheckResult()
    use = dict(use_masks=cfg.model.mask_on, use_keypoints=cfg.model.keypoint_on)
    train = CocoDetection(paths.train_json, paths.train_images, filter_empty=d.filter_empty,
                          skip_image_ids=checked.skip_ids(paths.train_json), **use)
    if len(train) == 0:
        raise DatasetError(empty_training_set_message(train))
    if d.keypoint_flip_map:
        train.meta = with_flip_map(train.meta, d.keypoint_flip_map, paths.train_json)
    val = CocoDetection(paths.val_json, paths.val_images, filter_empty=False,
                        skip_image_ids=checked.skip_ids(paths.val_json), **use)
    val.meta = replace(val.meta, keypoint_flip_map=train.meta.keypoint_flip_map)
    set_transforms(cfg, train, val)
    if reads_proposal_files(cfg.model):  # Fast R-CNN and R-CNN: resized and flipped with the image
        for ds, path, split in ((train, d.train_proposals, "train"), (val, d.val_proposals, "val")):
            attach_proposals(ds, path, proposals_to_read(cfg), f"data.{split}_proposals", split,
                             reader=proposal_reader(cfg.model))
    if val.meta.category_ids != train.meta.category_ids:
        raise DatasetError(f"{paths.val_json} has categories {val.meta.category_ids} but {paths.train_json} "
                           f"has {train.meta.category_ids}; train and val must share one category list")
    return train, val


def set_transforms(cfg: DetConfig, train: CocoDetection, val: CocoDetection) -> None:
    """The training augmentation and the val resize, at the sizes ``cfg.data`` gives."""
    d = cfg.data
    train.transforms = build_transforms(train.meta, train=True, min_size=d.min_size, max_size=d.max_size,
                                        hflip_prob=d.hflip_prob, scale_jitter=d.scale_jitter,
                                        color_jitter=d.color_jitter, seed=cfg.solver.seed)
    val.transforms = build_transforms(val.meta, train=False, min_size=d.test_min_size, max_size=d.max_size)


def with_flip_map(meta: DatasetMeta, pairs, source) -> DatasetMeta:
    """``meta`` with the keypoint flip pairs of ``data.keypoint_flip_map`` (names checked)."""
    pairs = [tuple(p) for p in pairs]
    for a, b in pairs:
        if a not in meta.keypoint_names or b not in meta.keypoint_names or a == b:
            raise DatasetError(f"data.keypoint_flip_map pair ({a!r}, {b!r}) does not name two keypoints of "
                               f"{source} (its keypoints: {meta.keypoint_names})")
    return replace(meta, keypoint_flip_map=pairs)


def empty_training_set_message(train: CocoDetection) -> str:
    """Why a training set has no image left, naming the file and the setting that dropped them."""
    listed = len(train.coco.dataset["images"])
    if not listed:
        return f"{train.ann_file} lists no images (after leaving out skipped ones); nothing to train on"
    reasons = "; ".join(f"{n} {why}" for why, n in train.dropped_empty.most_common())
    no_key = " (it has no annotations at all)" if not train.coco.dataset["annotations"] else ""
    return (f"{train.ann_file}: none of its {listed} images is left for training{no_key}: data.filter_empty=true "
            f"drops images without a usable instance, and {reasons}; set data.filter_empty=false to train "
            f"on them as background only")


def reads_proposal_files(model_cfg: ModelConfig) -> bool:
    """Whether the detector takes precomputed proposals (``proposal_boxes`` per image) instead of
    making its own: Fast R-CNN (``proposal_generator: precomputed``) and R-CNN."""
    return model_cfg.proposal_generator == "precomputed" or model_cfg.meta_architecture == "rcnn"


def proposal_reader(model_cfg: ModelConfig) -> str:
    """Why the detector reads proposal files, as the messages about those files say it."""
    if model_cfg.meta_architecture == "rcnn":
        return "R-CNN (model.meta_architecture: rcnn) reads precomputed proposals"
    return "model.proposal_generator is 'precomputed' (Fast R-CNN)"


def proposals_to_read(cfg: DetConfig) -> int:
    """Best proposals per image read from a proposal file (0 = all): ``data.max_proposals``, and for
    R-CNN no more than the ``model.rcnn.proposals_per_image`` it warps (reading more would only
    transform boxes it never looks at). Training, feature caching, evaluation and prediction all
    read this many, so they see the same proposals."""
    limits = [n for n in (cfg.data.max_proposals,
                          cfg.model.rcnn.proposals_per_image if cfg.model.meta_architecture == "rcnn" else 0) if n > 0]
    return min(limits) if limits else 0


def attach_proposals(dataset: CocoDetection, path: str, max_proposals: int, key: str = "data.val_proposals",
                     split: str = "val", reader: str = "model.proposal_generator is 'precomputed' (Fast R-CNN)"
                     ) -> None:
    """Read the precomputed proposals of every image of ``dataset`` (Fast R-CNN, R-CNN) into
    ``dataset.proposals``; targets then carry ``proposal_boxes``, which the dataset's transforms
    resize and flip with the image. A file made for other images or other image files is refused
    (``detection.proposals.check_header``); ``reader`` (:func:`proposal_reader`) starts the
    message for an empty ``key``."""
    from detection.proposals import check_header, load_proposals, read_header

    if not path:
        raise DatasetError(f"{reader} but {key} is empty; make the file with tools/compute_proposals.py "
                           f"--data DIR --split {split} --out FILE.json and set {key}=FILE.json")
    images = {i: dataset.image_root / dataset.coco.imgs[i]["file_name"] for i in dataset.ids}
    check_header(read_header(path), path, images)
    dataset.proposals = load_proposals(path, dataset.ids, max_proposals)


def adapt_to_dataset(cfg: DetConfig, train: CocoDetection, val: CocoDetection) -> tuple[DetConfig, list[str]]:
    """The settings that depend on the data, chosen at start-up from the training set: the mask /
    keypoint branch off when the dataset has no masks / keypoints (so one config trains on any
    COCO-format dataset), the image size (``data.size_from_images``: the transforms of ``train``
    and ``val`` follow it), the anchors from the training boxes (``model.rpn.auto_anchors``), how
    keypoints flip. Returns the config (what ``config.yaml`` records) and a line per choice
    (warnings start with "warning:")."""
    hw = image_sizes(train)
    size_note = ""
    if cfg.data.size_from_images:
        data, size_note = size_from_images(cfg.data, hw)
        if size_note:
            cfg = replace(cfg, data=data)
            set_transforms(cfg, train, val)
    model_cfg, notes = cfg.model, []
    if model_cfg.mask_on and not train.has_masks:
        model_cfg = replace(model_cfg, mask_on=False)
        notes.append(f"{train.ann_file} has no instance masks: the mask head is off")
    if model_cfg.keypoint_on and not train.has_keypoints:
        model_cfg = replace(model_cfg, keypoint_on=False)
        notes.append(f"{train.ann_file} has no keypoints: the keypoint head is off")
    if model_cfg.keypoint_on:
        notes += flip_map_notes(train.meta)
    scale, short = training_scales(cfg.data, hw)
    sides, h_over_w = box_sides_at_training_size(train, scale)
    if model_cfg.rpn.auto_anchors and model_cfg.proposal_generator == "rpn":
        rpn, note = anchors_from_data(model_cfg.rpn, sides, h_over_w, short)
        model_cfg = replace(model_cfg, rpn=rpn)
        notes.append(note)
    notes += image_size_notes(cfg.data, hw, scale, short, sides, size_note)
    return replace(cfg, model=model_cfg), notes


def size_from_images(data: DataConfig, hw: np.ndarray) -> tuple[DataConfig, str]:
    """``data.min_size`` is the most the images are enlarged to: when the training images' median
    short side (``hw``: :func:`image_sizes`) is smaller, every size (``min_size``, ``max_size``,
    ``test_min_size``) shrinks by that ratio, since an enlargement adds compute, not detail.
    Returns the data config and what was chosen ('' when nothing changed)."""
    if len(hw) == 0:
        return data, ""
    native = float(np.median(hw.min(axis=1)))
    largest = max(data.min_size)
    if native >= largest:
        return data, ""
    f = native / largest
    sizes = tuple(dict.fromkeys(max(1, round(s * f)) for s in data.min_size))
    resized = replace(data, min_size=sizes, max_size=max(1, round(data.max_size * f)),
                      test_min_size=max(1, round(data.test_min_size * f)))
    return resized, (f"the training images' median short side, below data.min_size={largest}: "
                     f"data.size_from_images does not enlarge them")


TINY_SIDE = 8.0  # px at the training size: below this a box spans less than two cells of the finest (stride-4) map
TINY_SHARE = 0.05  # warn when more than this share of the training boxes is that small


def image_sizes(train: CocoDetection) -> np.ndarray:
    """(N, 2) height and width on disk of every training image."""
    return np.array([(train.coco.imgs[i]["height"], train.coco.imgs[i]["width"]) for i in train.ids],
                    np.float64).reshape(-1, 2)


def training_scales(data: DataConfig, hw: np.ndarray) -> tuple[np.ndarray, float]:
    """(the resize factors (N,) of images ``hw`` (:func:`image_sizes`) under ``data.min_size`` /
    ``data.max_size``, the mean training short side)."""
    short = float(np.mean(data.min_size))
    return np.minimum(short / hw.min(axis=1), data.max_size / hw.max(axis=1)), short


def box_sides_at_training_size(train: CocoDetection, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sqrt(w * h) of every training box as the model sees it, its h / w); ``scale``: the resize
    factor of every image (:func:`training_scales`)."""
    boxes, index = train.instance_boxes()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.sqrt(w * h) * scale[index], h / np.maximum(w, 1e-6)


def image_size_notes(data: DataConfig, hw: np.ndarray, scale: np.ndarray, short: float,
                     sides: np.ndarray, why: str = "") -> list[str]:
    """The image size is the config's (``data.min_size``, ``data.max_size``), a compute budget, or
    smaller images' own (``why``: :func:`size_from_images`): one line on how it relates to the
    images on disk (``hw``: :func:`image_sizes`; ``scale``, ``short``: :func:`training_scales`), and
    a warning when it shrinks many of the boxes (``sides`` at the training size) to a few pixels (a larger size
    trades steps for them: each step costs about (size / now)^2 as much)."""
    if len(hw) == 0:
        return []
    native = hw.min(axis=1)
    notes = [f"image size: short side {short:.0f} px ({why or 'data.min_size'}; long side at most {data.max_size}) for "
             f"training images of short side {np.median(native):.0f} px median ({native.min():.0f}-{native.max():.0f}), "
             f"resized x{np.median(scale):.2f} median"]
    tiny = float((sides < TINY_SIDE).mean()) if len(sides) else 0.0
    if tiny > TINY_SHARE:
        notes.append(f"warning: {tiny:.0%} of the training boxes are under {TINY_SIDE:g} px at this size "
                     f"(5th percentile {np.percentile(sides, 5):.1f} px), too small for the finest feature map to "
                     f"see well; a larger data.min_size / data.max_size / data.test_min_size helps them at about "
                     f"(new / {short:.0f})^2 the cost of a step")
    return notes


def anchors_from_data(rpn: RPNConfig, sides: np.ndarray, h_over_w: np.ndarray, short: float) -> tuple[RPNConfig, str]:
    """Anchor sizes and aspect ratios (``detection.anchors.anchors_for_boxes``) for the training
    boxes as the model sees them (:func:`box_sides_at_training_size`, at short side ``short``)."""
    if len(sides) == 0:
        return rpn, "anchors: as configured (no training boxes to derive them from)"
    strides = [2 ** int(f[1:]) for f in rpn.in_features]  # c<k> / p<k> has stride 2^k
    sizes, ratios = anchors_for_boxes(torch.as_tensor(sides), torch.as_tensor(h_over_w), strides)
    lo, hi = np.percentile(sides, [5, 99])
    same = sizes == tuple(tuple(s) for s in rpn.anchor_sizes) and (ratios,) == tuple(tuple(r) for r in rpn.aspect_ratios)
    note = (f"anchors from {len(sides)} training boxes (5th-99th percentile side {lo:.0f}-{hi:.0f} px at "
            f"{short:.0f} px): sizes {'/'.join(f'{s[0]:g}' for s in sizes)}, aspect ratios "
            f"{'/'.join(f'{r:g}' for r in ratios)}{' (as configured)' if same else ''}")
    return replace(rpn, anchor_sizes=sizes, aspect_ratios=(ratios,)), note


def flip_map_notes(meta: DatasetMeta) -> list[str]:
    """One line on the keypoint flip pairs in use; a warning naming sided keypoints without a mirror."""
    from detection.data.keypoint_flip import sided_keypoints

    pairs = meta.keypoint_flip_map
    notes = [f"keypoint flip pairs: {', '.join(f'{a}<->{b}' for a, b in pairs)}" if pairs
             else "keypoint flip pairs: none (every keypoint keeps its name under a horizontal flip)"]
    paired = {n for p in pairs for n in p}
    lonely = [n for n in sided_keypoints(meta.keypoint_names) if n not in paired]
    if lonely:
        notes.append(f"warning: keypoints {lonely} look sided but have no flip pair, so a flipped image "
                     "teaches them on the wrong side; give the pairs with "
                     "data.keypoint_flip_map='[[left_name, right_name], ...]' or set data.hflip_prob=0")
    return notes


def repeat_factor_indices(data: DataConfig, train: CocoDetection, seed: int) -> tuple[list[int] | None, str]:
    """The items of the training stream under repeat-factor sampling (``data.repeat_threshold``),
    or None (each image once), and a line saying what it did."""
    if data.repeat_threshold <= 0:
        return None, ""
    from common.samplers import class_repeat_factors, repeat_factors, repeat_indices

    present = train.classes_per_image()
    indices = repeat_indices(repeat_factors(present, data.repeat_threshold, ignore_classes=()), seed)
    per_class = class_repeat_factors(present, data.repeat_threshold, ignore_classes=())
    names = train.meta.class_names
    return indices, (f"repeat-factor sampling (t={data.repeat_threshold:g}): an epoch is {len(indices)} draws "
                     f"from {len(train)} images; images holding a class repeat by "
                     + ", ".join(f"{names[c]} {r:.2f}" for c, r in per_class.items()))


def iou_types_for(model_cfg: ModelConfig) -> tuple[str, ...]:
    """The COCO evaluation types a model produces."""
    return ("bbox",) + (("segm",) if model_cfg.mask_on else ()) + (("keypoints",) if model_cfg.keypoint_on else ())


# ---------------------------------------------------------------------------------------------
# a trained detector back from its checkpoint (tools/eval_coco.py, tools/predict.py)


def read_checkpoint(checkpoint: str | Path, config: str | Path | None = None, overrides=()):
    """(state dict, DetConfig, DatasetMeta or None) of a checkpoint written by tools/train_det.py.

    The config is ``config`` (a YAML path) or else the one stored in the checkpoint, with the
    ``key=value`` ``overrides`` on top; its backbone ``weights`` is cleared (the checkpoint holds
    every weight: nothing is fetched). The DatasetMeta is the checkpoint's ``metadata["dataset"]``
    (None for a checkpoint without metadata: the caller then takes it from the data).
    """
    state = load_checkpoint(checkpoint)
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"checkpoint {checkpoint} has no 'model' weights (it holds: "
                              f"{', '.join(sorted(state)) or 'nothing'})")
    cfg = stored_config(DetConfig, state, checkpoint, config, overrides)
    cfg = replace(cfg, model=replace(cfg.model, backbone=replace(cfg.model.backbone, weights=None)))
    meta_dict = (state.get("metadata") or {}).get("dataset")
    meta = DatasetMeta.from_dict(meta_dict) if meta_dict else None
    return state, cfg, meta


def meta_for_old_checkpoint(checkpoint: str | Path, ann: str | Path,
                             ann_meta: DatasetMeta | None = None) -> DatasetMeta:
    """The classes and keypoints of a checkpoint written without dataset metadata, read from the
    COCO annotation file ``ann`` (or ``ann_meta``, where the caller has read it already) with a line
    saying so; a missing ``ann`` is one DatasetError."""
    if ann_meta is None:
        if not Path(ann).is_file():
            raise DatasetError(f"checkpoint {checkpoint} has no dataset metadata (class names) and "
                               f"{ann} does not exist to read them from")
        ann_meta = meta_from_coco(load_coco_json(ann), str(ann))
    print(f"note: {checkpoint} has no dataset metadata; classes are read from {ann}")
    return ann_meta


def branches_in_use(weights: dict, model_cfg: ModelConfig, checkpoint: str | Path) -> dict:
    """The checkpoint's weights without those of a part the config turns off, with a line saying
    so: a mask / keypoint branch (``model.keypoint_on=false`` at inference: no keypoints, and no
    time spent on them), or the RPN of a Faster / Mask R-CNN run with
    ``model.proposal_generator=precomputed`` (its box head on proposals from a file, e.g.
    selective search: the Faster R-CNN paper's test-time proposal swap)."""
    dropped = [(f"roi_heads.{branch}_head.", f"model.{branch}_on=false: the {branch} head")
               for branch, on in (("mask", model_cfg.mask_on), ("keypoint", model_cfg.keypoint_on)) if not on]
    if model_cfg.proposal_generator == "precomputed":
        dropped.append(("proposal_generator.", "model.proposal_generator=precomputed (proposals from "
                        "data.val_proposals): the RPN"))
    for prefix, what in dropped:
        if any(k.removeprefix("module.").startswith(prefix) for k in weights):
            weights = {k: v for k, v in weights.items() if not k.removeprefix("module.").startswith(prefix)}
            print(f"note: {what} of {checkpoint} is left out")
    return weights


def build_detector(state: dict, cfg, meta, checkpoint: str | Path, device="cpu"):
    """(model in eval mode on ``device``, cfg as built): ``cfg.model`` for ``meta``'s classes and
    keypoints, with the checkpoint's weights (a checkpoint of another architecture is one
    CheckpointError listing the keys that do not fit)."""
    model_cfg = cfg.model
    if model_cfg.keypoint_on and meta.num_keypoints == 0:
        model_cfg = replace(model_cfg, keypoint_on=False)
    torch.manual_seed(0)  # the initial weights are all overwritten; seeded so nothing rides on chance
    try:
        model = build_model(model_cfg, meta.num_classes, meta.num_keypoints, meta.flip_indices,
                            keypoint_classes=meta.keypoint_classes or None)
    except ValueError as e:
        raise ConfigError(f"cannot build the model for {checkpoint}: {e}") from None
    load_model_state(model, branches_in_use(state["model"], model_cfg, checkpoint), f"checkpoint {checkpoint}")
    if model_cfg.box_head.svd_rank > 0:  # test-time truncated SVD (Fast R-CNN), after the weights are in
        replaced = compress_fc_layers(model.roi_heads.box_head, model_cfg.box_head.svd_rank)
        print(f"truncated SVD (rank {model_cfg.box_head.svd_rank}) of the box head's "
              f"{', '.join(replaced) or 'no layer (the rank saves nothing)'}")
    return model.to(device).eval(), replace(cfg, model=model_cfg)

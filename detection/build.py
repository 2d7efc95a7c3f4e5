"""Config -> objects for detection. The only module that reads ``ModelConfig``.

Faster, Mask and Keypoint R-CNN (and mask + keypoint) are configurations of the same parts;
FPN, C4 (res5 box head on single-level pooling) and VGG16 variants differ only in which
features feed which part.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from torch import nn

from common.config import ConfigError, apply_override, load_config, merge
from common.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from detection.anchors import AnchorGenerator
from detection.box_coder import BoxCoder
from detection.box_head import ConvFCHead, FastRCNNPredictor, Res5Head
from detection.config import DataConfig, DetConfig, ModelConfig
from detection.data import CocoDetection, DatasetError, DatasetMeta, build_transforms
from detection.generalized_rcnn import GeneralizedRCNN
from detection.keypoint_head import KeypointRCNNHead
from detection.mask_head import MaskRCNNHead
from detection.poolers import RoIPooler
from detection.rcnn import RCNN
from detection.roi_heads import RoIHeads
from detection.rpn import RPN, RPNHead


def build_model(model_cfg: ModelConfig, num_classes: int, num_keypoints: int = 0,
                keypoint_flip_indices: list[int] | None = None, *,
                keypoint_classes: list[int] | None = None,
                backbone: nn.Module | None = None) -> GeneralizedRCNN | RCNN:
    """Build the detector described by ``model_cfg`` for a dataset with ``num_classes`` classes
    and ``num_keypoints`` keypoints. ``backbone``: an already built Backbone to use instead of
    ``common.backbones.build_backbone(model_cfg.backbone...)`` (tests, custom backbones).
    ``keypoint_classes``: labels whose detections get keypoints at inference (None: all), from
    ``DatasetMeta.keypoint_classes``."""
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
                                keypoint_classes)
    return GeneralizedRCNN(backbone, rpn, roi_heads, num_classes, num_keypoints if cfg.keypoint_on else 0,
                           keypoint_flip_indices)


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
                    res5: nn.Module | None, keypoint_classes: list[int] | None = None) -> RoIHeads:
    rh, bh = cfg.roi_heads, cfg.box_head
    if rh.mask_rois_per_image < 0:
        raise ValueError(f"model.roi_heads.mask_rois_per_image must be >= 0 (0: no cap), got {rh.mask_rois_per_image}")
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
                    batch_size_per_image=rh.batch_size_per_image, positive_fraction=rh.positive_fraction,
                    add_gt_as_proposals=rh.add_gt_as_proposals,
                    mask_rois_per_image=rh.mask_rois_per_image, smooth_l1_beta=bh.smooth_l1_beta,
                    score_thresh=rh.score_thresh, nms_thresh=rh.nms_thresh,
                    detections_per_img=rh.detections_per_img, **kwargs)


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
        paths = DataPaths(root / "train.json", root / "train", root / "val.json", root / "val")
    for name in ("train_json", "val_json"):
        if not getattr(paths, name).is_file():
            raise DatasetError(f"annotation file not found: {getattr(paths, name)} (data.{name}; a dataset "
                               "folder must hold train.json, val.json, train/ and val/)")
    for name in ("train_images", "val_images"):
        if not getattr(paths, name).is_dir():
            raise DatasetError(f"image folder not found: {getattr(paths, name)} (data.{name})")
    return paths


def build_datasets(cfg: DetConfig, paths: DataPaths) -> tuple[CocoDetection, CocoDetection]:
    """The training set (augmented, empty images dropped per config) and the val set (resize only).

    Masks and keypoints are read only when the model uses them.
    """
    d = cfg.data
    use = dict(use_masks=cfg.model.mask_on, use_keypoints=cfg.model.keypoint_on)
    train = CocoDetection(paths.train_json, paths.train_images, filter_empty=d.filter_empty, **use)
    train.transforms = build_transforms(train.meta, train=True, min_size=d.min_size, max_size=d.max_size,
                                        hflip_prob=d.hflip_prob, scale_jitter=d.scale_jitter,
                                        color_jitter=d.color_jitter, seed=cfg.solver.seed)
    val = CocoDetection(paths.val_json, paths.val_images, filter_empty=False, **use)
    val.transforms = build_transforms(val.meta, train=False, min_size=d.test_min_size, max_size=d.max_size)
    if val.meta.category_ids != train.meta.category_ids:
        raise DatasetError(f"{paths.val_json} has categories {val.meta.category_ids} but {paths.train_json} "
                           f"has {train.meta.category_ids}; train and val must share one category list")
    return train, val


def adapt_to_dataset(model_cfg: ModelConfig, train: CocoDetection) -> tuple[ModelConfig, list[str]]:
    """Turn off the mask / keypoint branch when the dataset has no masks / keypoints, so one config
    trains on any COCO-format dataset. Returns the config and a note per change."""
    notes = []
    if model_cfg.mask_on and not train.has_masks:
        model_cfg = replace(model_cfg, mask_on=False)
        notes.append(f"{train.ann_file} has no instance masks: the mask head is off")
    if model_cfg.keypoint_on and not train.has_keypoints:
        model_cfg = replace(model_cfg, keypoint_on=False)
        notes.append(f"{train.ann_file} has no keypoints: the keypoint head is off")
    return model_cfg, notes


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
    if config is not None:
        cfg = load_config(DetConfig, config, list(overrides))
    elif state.get("config_yaml"):
        source = f"the config stored in {checkpoint}"
        try:
            data = yaml.safe_load(state["config_yaml"]) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source} is not valid YAML ({e})") from None
        cfg = merge(DetConfig(), data, source=source)
        for item in overrides:
            cfg = apply_override(cfg, item)
    else:
        raise CheckpointError(f"checkpoint {checkpoint} stores no config; pass --config")
    cfg = replace(cfg, model=replace(cfg.model, backbone=replace(cfg.model.backbone, weights=None)))
    meta_dict = (state.get("metadata") or {}).get("dataset")
    meta = DatasetMeta.from_dict(meta_dict) if meta_dict else None
    return state, cfg, meta


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
    load_model_state(model, state["model"], f"checkpoint {checkpoint}")
    return model.to(device).eval(), replace(cfg, model=model_cfg)

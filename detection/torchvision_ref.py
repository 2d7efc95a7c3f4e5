"""torchvision's Mask R-CNN behind our model contract: the reference tools/benchmark.py measures.

Shape shorthand: N images, M gt instances, R detections in one image, K classes.

``TorchvisionDetector`` wraps any ``torchvision.models.detection`` model so that it takes our
``forward(images: ImageList, targets) -> (predictions, losses)`` with our field and loss names; the
builders make the torchvision models the benchmark compares with ours:

    torchvision_r18_fpn(model_cfg, ...)   every setting its constructor exposes copied from our recipe
    torchvision_r18_fpn_stock(...)        what a torchvision user builds on ResNet-18-FPN (its defaults)
    torchvision_r18_lean(...)             the lean recipe of the time-budget comparison (issue 11)
    torchvision_r50_fpn(...)              stock maskrcnn_resnet50_fpn, from scratch (GPU mode)

All are from scratch (no downloads) with every layer trainable.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from common.image_list import ImageList

# torchvision's loss names -> ours (ARCHITECTURE.md), so logs and NaN messages read the same
TV_LOSS_NAMES = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_box",
                 "loss_classifier": "loss_cls", "loss_box_reg": "loss_box", "loss_mask": "loss_mask"}


def to_torchvision_targets(targets: list[dict]) -> list[dict]:
    """Our targets -> torchvision's: boxes (M, 4) xyxy, labels (M,) in 1..K (0 is background),
    masks (M, H, W) uint8 when present. Same frame (the image the model sees)."""
    out = []
    for t in targets:
        tv = {"boxes": t["gt_boxes"], "labels": t["gt_classes"] + 1}
        if "gt_masks" in t:
            tv["masks"] = t["gt_masks"]
        out.append(tv)
    return out


def from_torchvision_prediction(pred: dict) -> dict:
    """torchvision's detections -> our prediction fields: labels 1..K -> pred_classes 0..K-1,
    masks (R, 1, H, W) probabilities -> pred_masks (R, H, W). Same frame as its input image."""
    out = {"pred_boxes": pred["boxes"], "scores": pred["scores"], "pred_classes": pred["labels"] - 1}
    if "masks" in pred:
        out["pred_masks"] = pred["masks"][:, 0]  # (R, 1, H, W) -> (R, H, W)
    return out


class TorchvisionDetector(nn.Module):
    """A torchvision detection model with our ``forward(images, targets) -> (predictions, losses)``.

    torchvision computes losses in train mode only, so in eval mode ``losses`` is always empty
    (no validation loss through this wrapper). Its own transform still normalises, resizes (a
    no-op when the image already has its min_size) and pads, as it does for any user.
    """

    def __init__(self, model: nn.Module, loss_weights: dict[str, float] | None = None):
        super().__init__()
        self.model = model
        self.loss_weights = dict(loss_weights or {})  # our loss name -> multiplier (missing: 1)

    def forward(self, images: ImageList, targets: list[dict] | None = None) -> tuple[list[dict], dict]:
        # (N, 3, Hp, Wp) padded batch -> N unpadded (3, h, w) images, torchvision's input
        batch = [im[:, :h, :w] for im, (h, w) in zip(images.tensor, images.image_sizes)]
        if self.training:
            if targets is None:
                raise ValueError("TorchvisionDetector in train mode needs targets")
            losses = self.model(batch, to_torchvision_targets(targets))
            losses = {TV_LOSS_NAMES.get(k, k): v for k, v in losses.items()}
            return [], {k: v * self.loss_weights.get(k, 1.0) for k, v in losses.items()}
        return [from_torchvision_prediction(p) for p in self.model(batch)], {}

    def backbone_features(self, images: ImageList):
        """The backbone + FPN alone on a batch (torchvision's own normalisation and padding)."""
        batch, _ = self.model.transform([im[:, :h, :w] for im, (h, w) in zip(images.tensor, images.image_sizes)])
        return self.model.backbone(batch.tensors)


def torchvision_r18_fpn_stock(num_classes: int, min_size: int, max_size: int,
                              pixel_mean, pixel_std) -> TorchvisionDetector:
    """torchvision's MaskRCNN as a torchvision user builds it on ResNet-18-FPN: its own
    ``resnet_fpn_backbone`` (plain BN, FPN 256 wide) and every RPN / RoI-head setting left at
    torchvision's defaults (2000/1000 proposals, 512 sampled RoIs, 1024-wide box head, 4x256 mask
    convs). Only image size (and, in the benchmark, batch and schedule) are shared."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=nn.BatchNorm2d)
    model = MaskRCNN(backbone, num_classes=num_classes + 1, min_size=min_size, max_size=max_size,
                     image_mean=list(pixel_mean), image_std=list(pixel_std))
    return TorchvisionDetector(model)


def torchvision_r18_lean(num_classes: int, size: int, pixel_mean, pixel_std) -> TorchvisionDetector:
    """The lean torchvision recipe of the time-budget comparison: MaskRCNN on
    ``resnet_fpn_backbone("resnet18", norm_layer=GroupNorm with 32 groups)``, anchors 16-256 with ratios
    0.5/1/2, min_size = max_size = ``size``, RPN pre/post-NMS 600/300 (train) and 300/100 (test),
    128 RPN and 64 RoI samples per image, 50 detections. (Its solver: AdamW, see tools/benchmark.py.)"""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    # GroupNorm with 32 groups (torchvision.ops.misc has no GroupNorm wrapper: torch's, as norm_layer(C))
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=partial(nn.GroupNorm, 32))
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    model = MaskRCNN(backbone, num_classes=num_classes + 1, min_size=size, max_size=size,
                     image_mean=list(pixel_mean), image_std=list(pixel_std), rpn_anchor_generator=anchors,
                     rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                     rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                     rpn_batch_size_per_image=128, box_batch_size_per_image=64, box_detections_per_img=50)
    return TorchvisionDetector(model)


def torchvision_r18_fpn(model_cfg, num_classes: int, min_size: int, max_size: int,
                        pixel_mean, pixel_std) -> TorchvisionDetector:
    """torchvision's MaskRCNN on its ResNet-18-FPN (plain BN) with every setting its constructor
    exposes copied from our ``ModelConfig``: FPN width, anchors, RPN pre/post-NMS top-k, thresholds
    and samples, RoI samples and thresholds, box head width, mask head convs, RoIAlign sampling,
    detections per image and our loss weights. What stays different is fixed by torchvision: its
    RPN also runs on a max-pooled level (given 2x the largest anchor), and its mask head trains on
    every sampled foreground RoI (no ``roi_heads.mask_rois_per_image`` cap)."""
    from torchvision.models import resnet18
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    c = model_cfg
    if c.box_head.num_convs or c.box_head.num_fcs != 2 or c.mask_head.class_agnostic:
        raise ValueError("the torchvision side copies a 2-FC box head and a class-specific mask head; "
                         "the recipe's box_head/mask_head differ")
    # torchvision's own ResNet-18 + FPN classes with our recipe's FPN width (resnet_fpn_backbone fixes 256)
    backbone = BackboneWithFPN(resnet18(weights=None, norm_layer=nn.BatchNorm2d),
                               return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               in_channels_list=[64, 128, 256, 512], out_channels=c.backbone.fpn_channels)
    channels = backbone.out_channels
    levels = ["0", "1", "2", "3"]  # p2..p5; the extra "pool" level only feeds the RPN
    sizes = tuple(tuple(int(s) for s in level) for level in c.rpn.anchor_sizes)
    sizes += ((2 * sizes[-1][0],),)  # the max-pooled level torchvision always adds
    ratios = tuple(c.rpn.aspect_ratios) * len(sizes) if len(c.rpn.aspect_ratios) == 1 else tuple(c.rpn.aspect_ratios)
    bh, mh, res = c.box_head, c.mask_head, c.box_head.pooler_resolution
    model = MaskRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size,
        image_mean=list(pixel_mean), image_std=list(pixel_std),
        rpn_anchor_generator=AnchorGenerator(sizes, ratios),
        rpn_pre_nms_top_n_train=c.rpn.pre_nms_topk_train, rpn_pre_nms_top_n_test=c.rpn.pre_nms_topk_test,
        rpn_post_nms_top_n_train=c.rpn.post_nms_topk_train, rpn_post_nms_top_n_test=c.rpn.post_nms_topk_test,
        rpn_nms_thresh=c.rpn.nms_thresh, rpn_bg_iou_thresh=c.rpn.iou_thresholds[0],
        rpn_fg_iou_thresh=c.rpn.iou_thresholds[1], rpn_batch_size_per_image=c.rpn.batch_size_per_image,
        rpn_positive_fraction=c.rpn.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(levels, res, bh.pooler_sampling_ratio),
        box_head=TwoMLPHead(channels * res * res, bh.fc_dim),
        box_predictor=FastRCNNPredictor(bh.fc_dim, num_classes + 1),
        box_score_thresh=c.roi_heads.score_thresh, box_nms_thresh=c.roi_heads.nms_thresh,
        box_detections_per_img=c.roi_heads.detections_per_img,
        box_bg_iou_thresh=c.roi_heads.iou_thresholds[0], box_fg_iou_thresh=c.roi_heads.iou_thresholds[1],
        box_batch_size_per_image=c.roi_heads.batch_size_per_image,
        box_positive_fraction=c.roi_heads.positive_fraction, bbox_reg_weights=tuple(bh.bbox_reg_weights),
        mask_roi_pool=MultiScaleRoIAlign(levels, mh.pooler_resolution, mh.pooler_sampling_ratio),
        mask_head=MaskRCNNHeads(channels, [mh.conv_dim] * mh.num_convs, 1),
        mask_predictor=MaskRCNNPredictor(mh.conv_dim, mh.conv_dim, num_classes + 1),
    )
    weights = {"loss_rpn_cls": c.rpn.loss_weight, "loss_rpn_box": c.rpn.loss_weight,
               "loss_mask": c.mask_head.loss_weight}
    return TorchvisionDetector(model, weights)


def torchvision_r50_fpn(num_classes: int) -> TorchvisionDetector:
    """torchvision's stock maskrcnn_resnet50_fpn, from scratch (800 px, trainable BN)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return TorchvisionDetector(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                     num_classes=num_classes + 1))

"""Dataclass configs of the detection models. Defaults are the R50-FPN Faster R-CNN COCO recipe
of Detectron2 (random-init backbone unless ``backbone.weights`` is set); the YAMLs in
``configs/detection/`` hold only what differs. Only ``detection/build.py`` reads these.

``num_classes`` and ``num_keypoints`` are not here: they come from the dataset.
``DetConfig`` is the whole training config: model + data + solver (shared with segmentation) + test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from common.engine.config import SolverConfig


@dataclass
class BackboneConfig:
    name: str = "resnet50"  # resnet18|resnet34|resnet50|resnet101|vgg16|mobilenet_v3_large
    weights: Optional[str] = None  # None (random init), "imagenet", or a path to a torchvision .pth
    freeze_at: int = 2  # 0 trains all; k freezes the stem and stages c2..ck
    norm: str = "FrozenBN"  # FrozenBN | BN | GN | SyncBN
    adapt_bn_images: int = 0  # > 0: before training, the BN / FrozenBN running statistics become
    # those of this many training images (AdaBN; the pretrained affine parameters stay); 0 keeps them
    out_features: tuple[str, ...] = ("c2", "c3", "c4", "c5")  # stages the backbone returns (before FPN)
    fpn: bool = True  # add an FPN: outputs p2..p5 (+ p6)
    fpn_channels: int = 256  # FPN output channels
    vgg_conv5_stride16: bool = False  # VGG16: c5 is conv5_3 without pool5 (stride 16), as in Faster R-CNN


@dataclass
class RPNConfig:
    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")  # feature maps the RPN runs on
    anchor_sizes: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))  # per level, pixels
    aspect_ratios: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),)  # h/w; one entry = all levels
    auto_anchors: bool = False  # replace anchor_sizes / aspect_ratios at start-up by ones derived from
    # the training boxes (one size per level, doubling; detection.anchors.anchors_for_boxes)
    anchor_offset: float = 0.0  # anchor centres at (i + offset) * stride
    iou_thresholds: tuple[float, float] = (0.3, 0.7)  # (low, high): < low background, >= high object
    batch_size_per_image: int = 256  # anchors sampled per image for the loss
    positive_fraction: float = 0.5  # at most this fraction of sampled anchors are positive
    pre_nms_topk_train: int = 2000  # proposals kept per level before NMS, training
    pre_nms_topk_test: int = 1000  # ... at test time
    post_nms_topk_train: int = 1000  # proposals kept per image after NMS, training
    post_nms_topk_test: int = 1000  # ... at test time
    nms_thresh: float = 0.7  # NMS IoU threshold on proposals
    min_size: float = 0.0  # proposals with a side <= this (pixels) are dropped
    smooth_l1_beta: float = 0.0  # box loss: smooth-L1 beta (0 = L1)
    loss_weight: float = 1.0  # multiplies loss_rpn_cls and loss_rpn_box


@dataclass
class ROIHeadsConfig:
    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5")  # feature maps RoIs are pooled from
    iou_thresholds: tuple[float, float] = (0.5, 0.5)  # (low, high): < low background, >= high foreground
    bg_iou_floor: float = 0.0  # background needs IoU >= this: the background band is [bg_iou_floor, low),
    # RoIs below it are not sampled (the Fast R-CNN paper: 0.1, so the band is [0.1, 0.5))
    batch_size_per_image: int = 512  # RoIs sampled per image for the losses
    positive_fraction: float = 0.25  # at most this fraction of sampled RoIs are foreground
    add_gt_as_proposals: bool = True  # gt boxes join the proposals at training time
    mask_rois_per_image: int = 0  # cap on the foreground RoIs per image the mask and keypoint heads
    # train on, a random subset of the sampled ones (0 = all): many sampled RoIs for the cheap box head
    # without paying for them in the costly mask/keypoint convs
    aux_grad_cap: float = 1.0  # the mask and keypoint branches' gradient into the shared features is
    # capped at this times the box branch's, so no auxiliary loss takes the backbone (0 = off;
    # detection/gradient_balance.py)
    score_thresh: float = 0.05  # detections below this class score are dropped
    nms_thresh: float = 0.5  # per-class NMS IoU threshold
    detections_per_img: int = 100  # detections kept per image
    branch_score_thresh: float = 0.0  # at inference the mask / keypoint heads run only on detections scoring at least this (the others get an empty mask and zero keypoints); 0 = on every detection


@dataclass
class BoxHeadConfig:
    kind: Literal["fc", "res5", "vgg16_fc"] = "fc"  # fc: convs + FCs (FPN); res5: the backbone's c5
    # stage run per RoI (C4); vgg16_fc: VGG16's fc6/fc7 (4096-d, ImageNet weights from backbone.weights)
    pooler_resolution: int = 7  # pooled size S (14 for res5: it halves it)
    pooler_sampling_ratio: int = 0  # RoIAlign samples per bin side (0 = adaptive)
    pooler_kind: Literal["align", "pool"] = "align"  # RoIAlign or RoIPool (Fast/Faster R-CNN papers)
    pooler_aligned: bool = True  # half-pixel-corrected RoIAlign
    num_convs: int = 0  # 3x3 convs before the FCs
    conv_dim: int = 256  # their channels
    num_fcs: int = 2  # FC layers
    fc_dim: int = 1024  # FC width
    norm: Literal["", "GN", "BN"] = ""  # norm after each conv
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # delta weights
    smooth_l1_beta: float = 0.0  # box loss: smooth-L1 beta (0 = L1, detectron2's default, which its
    # published R50-FPN AP was trained with; the Fast R-CNN paper and the CPU shapes recipe use 1.0)
    class_weighting: Literal["none", "inverse_sqrt"] = "none"  # classification loss weights from the
    # training instances per class: inverse_sqrt gives class c sqrt(median count / count_c)
    classifier: Literal["softmax", "svm"] = "softmax"  # svm: one-vs-rest linear SVMs (hinge loss) on the
    # class scores instead of softmax + cross-entropy (Fast R-CNN's comparison, trained in-network)
    svd_rank: int = 0  # test time: truncated SVD of the box head's FC layers to this rank (Fast R-CNN:
    # fewer multiplies for a small AP loss); applied when a checkpoint is loaded for evaluation (0 = off)


@dataclass
class MaskHeadConfig:
    pooler_resolution: int = 14  # pooled size; masks are twice this
    pooler_sampling_ratio: int = 0  # RoIAlign samples per bin side (0 = adaptive)
    num_convs: int = 4  # 3x3 convs before the deconv (0 for the C4 res5 head)
    conv_dim: int = 256  # their channels (and the deconv's)
    norm: Literal["", "GN", "BN"] = ""  # norm after each conv
    class_agnostic: bool = False  # one mask for all classes instead of one per class
    loss_weight: float = 1.0  # multiplies loss_mask


@dataclass
class KeypointHeadConfig:
    pooler_resolution: int = 14  # pooled size; heatmaps are 4x this
    pooler_sampling_ratio: int = 0  # RoIAlign samples per bin side (0 = adaptive)
    num_convs: int = 8  # 3x3 convs before the deconv
    conv_dim: int = 512  # their channels
    norm: Literal["", "GN", "BN"] = ""  # norm after each conv
    subpixel: bool = True  # refine heatmap peaks with a parabola fit
    loss_weight: float = 1.0  # multiplies loss_keypoint


@dataclass
class RCNNConfig:
    """R-CNN (Girshick et al. 2014): warped proposals through the backbone, SVMs and box regressors
    fitted on cached features. Test-time NMS, score threshold and detections per image are
    ``roi_heads.nms_thresh / score_thresh / detections_per_img``."""

    warp_size: int = 64  # side of the square every proposal is warped to, pixels (the paper: 227)
    context_pad: int = 16  # context around the box in the warped frame, pixels (the paper's p = 16)
    proposals_per_image: int = 500  # best-first proposals of the file used per image (training and test)
    batch_size: int = 128  # warped windows per fine-tuning step, over all images of the batch
    positive_fraction: float = 0.25  # at most this fraction of them foreground (32 of 128)
    fg_iou: float = 0.5  # fine-tuning: IoU with a gt box at which a proposal takes that box's class
    classifier: Literal["svm", "softmax"] = "svm"  # test-time scores: per-class SVMs or the fine-tuned softmax
    feature_images: int = 0  # training images whose features are cached for SVMs and regressors (0 = all)
    feature_batch: int = 256  # warped windows per forward pass when computing features
    feat_norm: float = 20.0  # features are scaled so that their mean L2 norm is this (the paper's code)
    svm_neg_iou: float = 0.3  # SVM negatives: proposals with IoU below this with every gt box of the class
    svm_C: float = 0.001  # SVM cost of a margin violation (the paper's code: 0.001)
    svm_pos_weight: float = 2.0  # positives' cost multiplier (the paper's code: 2)
    svm_bias_mult: float = 10.0  # the bias is a weight on a constant feature of this value (liblinear)
    svm_retrain_limit: int = 2000  # new hard negatives per class before the SVM is retrained
    reg_iou: float = 0.6  # box regression: proposals with at least this IoU with a gt box
    reg_lambda: float = 1000.0  # ridge penalty of the box regressors (the paper: 1000)


@dataclass
class ModelConfig:
    meta_architecture: Literal["generalized_rcnn", "rcnn"] = "generalized_rcnn"  # rcnn: R-CNN (2014),
    # trained in stages by tools/train_det.py (fine-tune, features, SVMs, regressors); the other
    # keys below apply to generalized_rcnn (Fast/Faster/Mask/Keypoint R-CNN) except backbone and
    # the roi_heads test-time settings
    rcnn: RCNNConfig = field(default_factory=RCNNConfig)  # R-CNN settings (meta_architecture: rcnn)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # feature extractor
    proposal_generator: Literal["rpn", "precomputed"] = "rpn"  # precomputed: Fast R-CNN
    rpn: RPNConfig = field(default_factory=RPNConfig)  # region proposal network
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)  # proposal sampling, inference
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)  # box branch
    mask_on: bool = False  # add the mask branch (Mask R-CNN)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)  # mask branch
    keypoint_on: bool = False  # add the keypoint branch (Keypoint R-CNN)
    channels_last: bool | Literal["eval"] = False  # conv weights and images in channels_last (NHWC) memory, oneDNN's
    # faster layout on a CPU: true in training and evaluation; "eval": NCHW while training, NHWC while in eval mode
    # (the default recipe's evaluation during training ~1.5x faster on 2 CPU cores; the same predictions up to rounding)
    keypoint_head: KeypointHeadConfig = field(default_factory=KeypointHeadConfig)  # keypoint branch


@dataclass
class DataConfig:
    root: str = "datasets/shapes"  # a dataset in the synthetic layout (train.json, val.json, train/, val/); the built-in one is generated here on first use
    train_json: str = ""  # a COCO annotation file for training; with train_images it replaces root
    train_images: str = ""  # the folder its file_names are relative to
    val_json: str = ""  # a COCO annotation file for evaluation; with val_images it replaces root
    val_images: str = ""  # the folder its file_names are relative to
    min_size: tuple[int, ...] = (800,)  # training short side in pixels, one drawn per image
    max_size: int = 1333  # cap on the long side in pixels
    test_min_size: int = 800  # short side at test time
    size_from_images: bool = False  # min_size is the most images are enlarged to: smaller training images (median
    # short side) shrink min_size, max_size and test_min_size alike at start-up (an enlargement adds compute, not detail)
    hflip_prob: float = 0.5  # horizontal flip probability (keypoints swap by the dataset's flip map)
    keypoint_flip_map: tuple[tuple[str, str], ...] = ()  # (left, right) keypoint names that swap under
    # a flip; empty: the JSON's "flip_map", else pairs found from the names (left_X / right_X ...)
    scale_jitter: Optional[tuple[float, float]] = None  # extra random rescale (lo, hi) after resizing
    color_jitter: float = 0.0  # brightness/contrast/saturation/hue jitter strength in [0, 1]
    filter_empty: bool = True  # drop training images that have no (non-crowd) instance
    repeat_threshold: float = 0.0  # repeat-factor sampling (LVIS): an image whose rarest class is in
    # a fraction f < t of the training images is seen sqrt(t / f) times as often (0 = off)
    skip_bad_images: bool = False  # leave out images the start-up dataset check finds bad (listed in RUN/skipped_images.txt) instead of stopping
    num_workers: int = 2  # DataLoader worker processes
    aspect_ratio_grouping: bool = True  # batch landscape with landscape and portrait with portrait
    train_proposals: str = ""  # model.proposal_generator=precomputed (Fast R-CNN) and R-CNN: proposal file
    # of the training images (tools/compute_proposals.py --split train; format in datasets/README.md)
    val_proposals: str = ""  # ... of the val images (--split val)
    max_proposals: int = 2000  # best proposals per image read from those files (0 = all)


@dataclass
class TestConfig:
    ims_per_batch: int = 4  # images per batch at evaluation
    amp: bool | Literal["off", "bf16", "fp16", "auto"] = False  # mixed precision at evaluation, as solver.amp (boxes, NMS and mask pasting stay float32)
    eval_images: int = 0  # evaluate on the first N val images during training (0 = all); the final evaluation uses all
    val_loss_batches: int = 10  # batches of val images for the validation loss (0 = off)
    num_vis: int = 8  # val images drawn with their predictions at the end of training
    vis_score_thresh: float = 0.5  # predictions drawn need at least this score
    coco_backend: Literal["pycocotools", "faster_coco_eval"] = "pycocotools"  # COCOeval implementation:
    # faster_coco_eval (pip install faster-coco-eval) gives the same metrics, minutes faster on COCO val


@dataclass
class DetConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the detector
    data: DataConfig = field(default_factory=DataConfig)  # where the images come from and how they are augmented
    solver: SolverConfig = field(default_factory=SolverConfig)  # optimizer, schedule, checkpoints
    test: TestConfig = field(default_factory=TestConfig)  # evaluation and drawing

    def bn_samples_per_step(self) -> int:
        """What the backbone's BatchNorm sees per training step and process: R-CNN's warped windows
        (``model.rcnn.batch_size``), else the images (``solver.ims_per_batch``)."""
        return self.model.rcnn.batch_size if self.model.meta_architecture == "rcnn" else self.solver.ims_per_batch

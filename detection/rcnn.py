"""R-CNN (Girshick et al., CVPR 2014): every proposal warped to a fixed size and run through the CNN.

Shape shorthand: N images, R proposals of one image, B warped windows, S the warp size,
D feature dimensions (the backbone's last stage, averaged over space), K classes (background
is label K).

Test time, per image: the file's best ``proposals_per_image`` proposals are each dilated so that,
warped to S x S, the box covers [p, S - p] (p = ``context_pad``, the paper's 16 px of context),
cut from the image (outside the image: the mean colour, 0 after normalisation) and warped
anisotropically; the backbone turns each into a D-vector; per-class linear SVMs score it and
per-class ridge regressors move its box; per-class NMS keeps the best.

Training is four stages (``tools/train_det.py`` runs them; ``detection/rcnn_stages.py`` holds
the last three): (1) fine-tune the backbone as a (K + 1)-way softmax classifier on warped windows
(IoU >= 0.5 with a gt box: that box's class, else background; ``batch_size`` windows per step,
``positive_fraction`` of them foreground) -- that is this module's ``forward`` with targets,
``loss_cls``; (2) cache the features of gt boxes and proposals of the training images; (3) an
SVM per class with hard-negative mining; (4) a box regressor per class. The SVM and regressor
weights are buffers, so the state dict holds the whole detector. Until the SVMs are fitted
(``svm_fitted``) the scores come from the softmax, and until the regressors are fitted the
boxes are the proposals.

Scores: with SVMs, ``sigmoid(svm score)``: the ranking of the SVM, 0.5 on its decision boundary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image, roi_align

from detection.bbox_regression import RCNN_BOX_CODER
from detection.box_ops import pairwise_iou
from detection.sampler import sample_balanced
from common.image_list import ImageList


def context_boxes(boxes: Tensor, warp_size: int, context_pad: int) -> Tensor:
    """(R, 4) xyxy boxes -> (R, 4) the regions to warp: each box dilated so that, once the region
    is warped to ``warp_size`` x ``warp_size``, the box covers [context_pad, warp_size - context_pad]
    in both directions (so the context is ``context_pad / (warp_size - 2 * context_pad)`` of
    the box's width on the left and on the right, and likewise in height)."""
    inner = warp_size - 2 * context_pad
    if inner <= 0:
        raise ValueError(f"context_pad {context_pad} leaves no room for the box in a {warp_size} px warp")
    wh = boxes[:, 2:] - boxes[:, :2]  # (R, 2)
    pad = wh * (context_pad / inner)  # (R, 2) context in image pixels, x and y
    return torch.cat([boxes[:, :2] - pad, boxes[:, 2:] + pad], dim=1)


def warp_regions(images: Tensor, rois: Tensor, warp_size: int, context_pad: int) -> Tensor:
    """(N, 3, H, W) normalised images, (B, 5) rois (image index, x0, y0, x1, y1 in that image's
    frame) -> (B, 3, S, S) warped windows. Bilinear sampling (averaged over several samples per
    output pixel when shrinking); pixels outside the image are 0, the mean colour."""
    regions = torch.cat([rois[:, :1], context_boxes(rois[:, 1:], warp_size, context_pad)], dim=1)
    return roi_align(images, regions.to(images.dtype), output_size=(warp_size, warp_size), spatial_scale=1.0,
                     sampling_ratio=0, aligned=True)


def label_windows(proposals: Tensor, gt_boxes: Tensor, gt_classes: Tensor, fg_iou: float,
                  num_classes: int) -> tuple[Tensor, Tensor]:
    """Fine-tuning windows of one image: (boxes (M + R, 4), labels (M + R,)): the gt boxes and the
    proposals, each labelled with the class of the gt box it overlaps most if that IoU is at
    least ``fg_iou``, else background (``num_classes``)."""
    boxes = torch.cat([gt_boxes, proposals])
    labels = torch.full((len(boxes),), num_classes, dtype=torch.int64, device=boxes.device)
    if len(gt_boxes):
        best_iou, best_gt = pairwise_iou(gt_boxes, boxes).max(dim=0)  # (M + R,)
        fg = best_iou >= fg_iou
        labels[fg] = gt_classes[best_gt[fg]]
    return boxes, labels


class RCNN(nn.Module):
    """``forward(images, targets) -> (predictions, losses)``; proposals come in
    ``targets[i]["proposal_boxes"]`` (R, 4) in the model's frame, in train and eval mode."""

    def __init__(self, backbone: nn.Module, num_classes: int, *, warp_size: int = 64, context_pad: int = 16,
                 proposals_per_image: int = 500, batch_size: int = 128, positive_fraction: float = 0.25,
                 fg_iou: float = 0.5, feature_batch: int = 256, classifier: str = "svm",
                 score_thresh: float = 0.05, nms_thresh: float = 0.3, detections_per_img: int = 100):
        super().__init__()
        if classifier not in ("svm", "softmax"):
            raise ValueError(f"model.rcnn.classifier must be 'svm' or 'softmax', got {classifier!r}")
        if warp_size - 2 * context_pad <= 0:
            raise ValueError(f"model.rcnn.context_pad = {context_pad} leaves no room for the box in a "
                             f"{warp_size} px warp (needs warp_size > 2 * context_pad)")
        self.backbone = backbone
        self.feature_name = backbone.out_features[-1]
        dim = backbone.out_channels[self.feature_name]
        self.num_classes = num_classes
        self.num_keypoints = 0
        self.cls_score = nn.Linear(dim, num_classes + 1)  # fine-tuning classifier, background last
        self.warp_size, self.context_pad = warp_size, context_pad
        self.proposals_per_image, self.feature_batch = proposals_per_image, feature_batch
        self.batch_size, self.positive_fraction, self.fg_iou = batch_size, positive_fraction, fg_iou
        self.classifier = classifier
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        # stages 3 and 4 fill these (detection/rcnn_stages.py); they travel in the state dict
        self.register_buffer("feature_scale", torch.tensor(1.0))  # features * this feed SVMs and regressors
        self.register_buffer("svm_weight", torch.zeros(num_classes, dim))  # (K, D)
        self.register_buffer("svm_bias", torch.zeros(num_classes))  # (K,)
        self.register_buffer("svm_fitted", torch.tensor(False))
        self.register_buffer("reg_weight", torch.zeros(num_classes, dim, 4))  # (K, D, 4) -> t_x, t_y, t_w, t_h
        self.register_buffer("reg_bias", torch.zeros(num_classes, 4))  # (K, 4)
        self.register_buffer("reg_fitted", torch.tensor(False))

    # ---- features ----------------------------------------------------------------------------
    def window_features(self, images: Tensor, boxes: list[Tensor]) -> Tensor:
        """(N, 3, H, W) normalised images, N lists of (R_i, 4) boxes -> (B, D) pooled features of
        the warped windows in the order of the boxes, ``feature_batch`` windows per forward pass."""
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])  # (B, 5)
        out = [images.new_zeros((0, self.cls_score.in_features))]
        for start in range(0, len(rois), self.feature_batch):
            windows = warp_regions(images, rois[start:start + self.feature_batch], self.warp_size,
                                   self.context_pad)  # (b, 3, S, S)
            feats = self.backbone(windows)[self.feature_name]  # (b, D, s, s)
            out.append(feats.mean(dim=(2, 3)))  # global average pool -> (b, D)
        return torch.cat(out)

    # ---- the model ---------------------------------------------------------------------------
    def forward(self, images: ImageList, targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """images: ImageList (N, 3, Hp, Wp) in [0, 1]; targets: N dicts with ``proposal_boxes``
        (and ``gt_boxes`` / ``gt_classes`` for the loss).

        Returns predictions (N dicts in the model's frame; [] in train mode) and losses
        (``loss_cls`` of the fine-tuning classifier whenever targets carry ``gt_boxes``).
        """
        if targets is None or len(targets) != len(images) or any("proposal_boxes" not in t for t in targets):
            raise ValueError("R-CNN needs precomputed proposals: pass one target per image with "
                             "targets[i]['proposal_boxes'] (an (R, 4) tensor)")
        for i, t in enumerate(targets):
            p = t["proposal_boxes"]
            if p.ndim != 2 or p.shape[1] != 4 or not torch.isfinite(p).all():
                raise ValueError(f"image id {t.get('image_id', f'#{i} in the batch')}: proposal_boxes must be "
                                 f"a finite (R, 4) tensor, got shape {tuple(p.shape)}")
        x = self.backbone.normalize(images.tensor)
        device = x.device
        proposals = [t["proposal_boxes"].to(device, torch.float32)[: self.proposals_per_image] for t in targets]
        losses: dict[str, Tensor] = {}
        if all("gt_boxes" in t for t in targets):
            boxes, labels = self.sample_windows(proposals, targets)
            logits = self.cls_score(self.window_features(x, boxes))  # (B, K + 1)
            losses["loss_cls"] = F.cross_entropy(logits, labels) if len(labels) else logits.sum() * 0
        elif self.training:
            raise ValueError("R-CNN in train mode needs targets with gt_boxes and gt_classes")
        predictions = []
        if not self.training:
            predictions = [self.detect(x[i:i + 1], p, size) for i, (p, size) in enumerate(zip(proposals, images.image_sizes))]
        return predictions, losses

    def sample_windows(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
                       ) -> tuple[list[Tensor], Tensor]:
        """``batch_size`` windows over the batch, ``positive_fraction`` foreground at most:
        (N lists of (B_i, 4) boxes, (B,) labels in the same order)."""
        per_image = [label_windows(p, t["gt_boxes"].to(p), t["gt_classes"].to(p.device), self.fg_iou,
                                   self.num_classes) for p, t in zip(proposals, targets)]
        labels = torch.cat([lab for _, lab in per_image])  # (sum, )
        image_of = torch.cat([torch.full((len(lab),), i, device=labels.device) for i, (_, lab) in enumerate(per_image)])
        pos, neg = sample_balanced(labels < self.num_classes, labels == self.num_classes, self.batch_size,
                                   self.positive_fraction)
        keep = torch.cat([pos, neg]).sort().values  # grouped by image, as window_features orders them
        boxes = torch.cat([b for b, _ in per_image])[keep]
        return [boxes[image_of[keep] == i] for i in range(len(per_image))], labels[keep]

    def class_scores(self, feats: Tensor) -> Tensor:
        """(R, D) features -> (R, K) class scores: sigmoid of the SVMs once they are fitted (and
        ``classifier`` is "svm"), else the fine-tuned softmax without the background column."""
        if self.classifier == "svm" and bool(self.svm_fitted):
            return torch.sigmoid(feats * self.feature_scale @ self.svm_weight.T + self.svm_bias)
        return F.softmax(self.cls_score(feats), dim=1)[:, : self.num_classes]

    def regress(self, feats: Tensor, proposals: Tensor) -> Tensor:
        """(R, D) features, (R, 4) proposals -> (R, K, 4) one box per class (the proposal itself
        until the regressors are fitted)."""
        if not bool(self.reg_fitted):
            return proposals[:, None, :].expand(-1, self.num_classes, -1)
        deltas = torch.einsum("rd,kdt->rkt", feats * self.feature_scale, self.reg_weight) + self.reg_bias  # (R, K, 4)
        return RCNN_BOX_CODER.decode(deltas.reshape(len(proposals), -1), proposals).view(len(proposals), -1, 4)

    @torch.no_grad()
    def detect(self, image: Tensor, proposals: Tensor, image_size: tuple[int, int]) -> dict[str, Tensor]:
        """One normalised image (1, 3, Hp, Wp) and its (R, 4) proposals -> its predictions."""
        feats = self.window_features(image, [proposals])  # (R, D)
        scores = self.class_scores(feats)  # (R, K)
        boxes = clip_boxes_to_image(self.regress(feats, proposals), image_size)  # (R, K, 4)
        classes = torch.arange(self.num_classes, device=scores.device).expand_as(scores)  # (R, K)
        boxes, scores, classes = boxes.reshape(-1, 4), scores.reshape(-1), classes.reshape(-1)
        keep = (scores > self.score_thresh) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.detections_per_img]
        return {"pred_boxes": boxes[keep], "scores": scores[keep], "pred_classes": classes[keep]}

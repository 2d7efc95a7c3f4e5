"""RoI heads: sample proposals against the ground truth, then the box branch and the optional
mask and keypoint branches. Training uses sampled proposals (the mask and keypoint branches only
the positive ones); inference runs the box branch on all proposals and the mask/keypoint branches
on the final detections.

Shape shorthand: N images, R_i proposals of image i, R = sum R_i, M_i gt instances, K classes
(labels 0..K-1, background K), P keypoints, C channels, S pooled size, H x W an image.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from detection.box_coder import BoxCoder
from detection.box_head import FastRCNNPredictor, fast_rcnn_inference, fast_rcnn_losses
from detection.box_ops import pairwise_iou
from detection.gradient_balance import TrunkGradientBalance
from detection.keypoint_head import heatmaps_to_keypoints, keypoint_loss, keypoint_targets
from detection.mask_head import mask_loss, mask_probs, mask_targets
from detection.matcher import BETWEEN_THRESHOLDS, match
from detection.poolers import RoIPooler
from detection.sampler import sample_balanced


@torch.no_grad()
def sample_proposals(proposal_boxes: Tensor, gt_boxes: Tensor, gt_classes: Tensor, num_classes: int,
                     iou_thresholds: tuple[float, float], batch_size: int, positive_fraction: float,
                     add_gt_as_proposals: bool = True, bg_iou_floor: float = 0.0) -> dict[str, Tensor]:
    """Label one image's proposals and sample a balanced training set of them.

    proposal_boxes (R_i, 4), gt_boxes (M, 4), gt_classes (M,) -> dict of S sampled RoIs
    (positives first): "proposal_boxes" (S, 4), "gt_classes" (S,) in 0..K (K = background),
    "matched_idxs" (S,) index into the gt (0 for background: check gt_classes).
    ``iou_thresholds`` = (low, high): IoU >= high is foreground, in [``bg_iou_floor``, low)
    background, the rest ignored (the Fast R-CNN paper: high = low = 0.5, bg_iou_floor = 0.1).
    """
    if add_gt_as_proposals:
        proposal_boxes = torch.cat((proposal_boxes, gt_boxes.to(proposal_boxes.dtype)))
    low, high = iou_thresholds
    matches = match(pairwise_iou(gt_boxes, proposal_boxes), high, low, False, bg_iou_floor)  # (R_i,)
    if len(gt_boxes) > 0:
        labels = gt_classes[matches.clamp(min=0)].clone()
    else:
        labels = torch.full_like(matches, num_classes)
    labels[matches < 0] = num_classes
    labels[matches == BETWEEN_THRESHOLDS] = -1
    pos, neg = sample_balanced((labels >= 0) & (labels < num_classes), labels == num_classes,
                               batch_size, positive_fraction)
    idx = torch.cat((pos, neg))
    return {"proposal_boxes": proposal_boxes[idx], "gt_classes": labels[idx],
            "matched_idxs": matches[idx].clamp(min=0)}


class RoIHeads(nn.Module):
    """Box branch (+ optional mask / keypoint branches). ``forward`` returns (predictions, losses)."""

    def __init__(self, num_classes: int, in_features: list[str], box_pooler: RoIPooler, box_head: nn.Module,
                 box_predictor: FastRCNNPredictor, *, box_coder: BoxCoder = BoxCoder((10.0, 10.0, 5.0, 5.0)),
                 iou_thresholds: tuple[float, float] = (0.5, 0.5), bg_iou_floor: float = 0.0,
                 batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, add_gt_as_proposals: bool = True, mask_rois_per_image: int = 0,
                 smooth_l1_beta: float = 1.0, classifier: str = "softmax", score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, branch_score_thresh: float = 0.0,
                 mask_pooler: RoIPooler | None = None, mask_head: nn.Module | None = None,
                 mask_loss_weight: float = 1.0,
                 keypoint_pooler: RoIPooler | None = None, keypoint_head: nn.Module | None = None,
                 keypoint_subpixel: bool = True, keypoint_loss_weight: float = 1.0,
                 keypoint_classes: list[int] | None = None, aux_grad_cap: float = 1.0,
                 class_weights: Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.in_features = list(in_features)
        self.box_pooler, self.box_head, self.box_predictor = box_pooler, box_head, box_predictor
        self.box_coder = box_coder
        self.iou_thresholds = tuple(iou_thresholds)
        self.bg_iou_floor = bg_iou_floor
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.add_gt_as_proposals = add_gt_as_proposals
        self.mask_rois_per_image = mask_rois_per_image
        self.smooth_l1_beta = smooth_l1_beta
        if classifier not in ("softmax", "svm"):
            raise ValueError(f"box classifier must be 'softmax' or 'svm', got {classifier!r}")
        self.classifier = classifier
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        # inference: the mask / keypoint heads cost in proportion to the detections they see
        self.branch_score_thresh = branch_score_thresh
        self.mask_pooler, self.mask_head = mask_pooler, mask_head
        self.mask_loss_weight = mask_loss_weight
        self.keypoint_pooler, self.keypoint_head = keypoint_pooler, keypoint_head
        self.keypoint_subpixel = keypoint_subpixel
        self.keypoint_loss_weight = keypoint_loss_weight
        # labels whose detections get keypoints at inference (None: every detection)
        self.keypoint_classes = None if keypoint_classes is None else list(keypoint_classes)
        # the mask / keypoint branches pull on the shared features at most aux_grad_cap times as
        # hard as the box branch (detection/gradient_balance.py)
        self.balance = TrunkGradientBalance(aux_grad_cap)
        # (K + 1,) weights of the classification loss (rare classes count more), or None; training
        # only, so not part of the checkpoint
        self.register_buffer("class_weights", class_weights, persistent=False)

    @property
    def mask_on(self) -> bool:
        return self.mask_head is not None

    @property
    def keypoint_on(self) -> bool:
        return self.keypoint_head is not None

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """features: name -> (N, C, Hl, Wl); proposals: N tensors (R_i, 4) xyxy (no gradient).

        Losses when ``targets`` (with gt_boxes / gt_classes, + gt_masks / gt_keypoints for those
        branches) are given; predictions (per-image dicts) when not training.
        """
        feats = [features[f] for f in self.in_features]
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = self._losses(feats, proposals, targets)
        predictions: list[dict[str, Tensor]] = []
        if not self.training:
            predictions = self._predict(feats, proposals, image_sizes)
        return predictions, losses

    def _keypoints_share_mask_pooling(self) -> bool:
        """The keypoint pooler is set as the mask pooler's: the keypoint RoIs' features are rows of
        the mask pooling (in training and at inference), not pooled again."""
        return self.keypoint_pooler.settings() == self.mask_pooler.settings()

    def _losses(self, feats: list[Tensor], proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        k = self.num_classes
        sampled = [sample_proposals(p, t["gt_boxes"], t["gt_classes"], k, self.iou_thresholds,
                                    self.batch_size_per_image, self.positive_fraction, self.add_gt_as_proposals,
                                    self.bg_iou_floor)
                   for p, t in zip(proposals, targets)]
        boxes = [s["proposal_boxes"] for s in sampled]
        pooled = self.balance.reference(self.box_pooler(feats, boxes))  # (sampled RoIs, C, S, S)
        class_logits, box_deltas = self.box_predictor(self.box_head(pooled))
        target_deltas = []
        for s, t in zip(sampled, targets):
            fg = s["gt_classes"] < k
            d = torch.zeros_like(s["proposal_boxes"])                     # (S_i, 4); background unused
            d[fg] = self.box_coder.encode(t["gt_boxes"][s["matched_idxs"][fg]], s["proposal_boxes"][fg])
            target_deltas.append(d)
        losses = fast_rcnn_losses(class_logits, box_deltas, torch.cat([s["gt_classes"] for s in sampled]),
                                  torch.cat(target_deltas), self.smooth_l1_beta, self.class_weights,
                                  self.classifier)
        # the mask and keypoint branches learn from foreground RoIs only, at most mask_rois_per_image
        # of them (the sampler puts positives first, in random order: the first ones are a random subset)
        fg = [s["gt_classes"] < k for s in sampled]
        if self.mask_rois_per_image > 0:
            fg = [f & (torch.arange(len(f), device=f.device) < self.mask_rois_per_image) for f in fg]
        pooled = None  # (F, C, S, S) the foreground RoIs' mask pooling, reused by an identical keypoint pooler
        if self.mask_on:
            pos_boxes = [s["proposal_boxes"][f] for s, f in zip(sampled, fg)]
            pooled = self.mask_pooler(feats, pos_boxes)
            logits = self.mask_head(self.balance.cap(pooled))              # (F, K, S, S)
            size = logits.shape[-1]
            tgt = torch.cat([mask_targets(t["gt_masks"], s["matched_idxs"][f], s["proposal_boxes"][f], size)
                             for s, f, t in zip(sampled, fg, targets)])
            losses["loss_mask"] = self.mask_loss_weight * mask_loss(
                logits, torch.cat([s["gt_classes"][f] for s, f in zip(sampled, fg)]), tgt)
        if self.keypoint_on:
            kp_boxes, kp_idx, kp_gt, kp_rows = [], [], [], []
            for s, f, t in zip(sampled, fg, targets):
                idx = s["matched_idxs"][f]
                has_kp = (t["gt_keypoints"][idx][..., 2] > 0).any(dim=1)  # skip instances without keypoints
                kp_boxes.append(s["proposal_boxes"][f][has_kp])
                kp_idx.append(idx[has_kp])
                kp_gt.append(t["gt_keypoints"])
                kp_rows.append(has_kp)
            if pooled is not None and self._keypoints_share_mask_pooling():
                # one RoIAlign (and one backward through it) for both branches; each branch's pull
                # on the shared features is still capped on its own
                kp_feats = pooled[torch.cat(kp_rows)]
            else:
                kp_feats = self.keypoint_pooler(feats, kp_boxes)
            heatmaps = self.keypoint_head(self.balance.cap(kp_feats))       # (F', P, S, S)
            size = heatmaps.shape[-1]
            per_image = [keypoint_targets(g, i, b, size) for g, i, b in zip(kp_gt, kp_idx, kp_boxes)]
            losses["loss_keypoint"] = self.keypoint_loss_weight * keypoint_loss(
                heatmaps, torch.cat([p[0] for p in per_image]), torch.cat([p[1] for p in per_image]))
        return losses

    @torch.no_grad()
    def _predict(self, feats: list[Tensor], proposals: list[Tensor],
                 image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        class_logits, box_deltas = self.box_predictor(self.box_head(self.box_pooler(feats, proposals)))
        dets = fast_rcnn_inference(class_logits, box_deltas, proposals, image_sizes, self.box_coder,
                                   self.score_thresh, self.nms_thresh, self.detections_per_img, self.classifier)
        boxes = [d["pred_boxes"] for d in dets]
        counts = [len(b) for b in boxes]
        all_boxes = torch.cat(boxes)                                      # (D, 4) the batch's detections
        classes = torch.cat([d["pred_classes"] for d in dets])            # (D,)
        run = torch.cat([d["scores"] for d in dets]) >= self.branch_score_thresh  # (D,) go through the branches
        pooled = None  # mask-pooled features of the `run` detections, reused by an identical keypoint pooler
        if self.mask_on:
            probs = all_boxes.new_zeros((len(all_boxes), 1, 1))            # empty masks where the head does not run
            if bool(run.any()):
                pooled = self.mask_pooler(feats, [b[r] for b, r in zip(boxes, run.split(counts))])
                sub = mask_probs(self.mask_head(pooled), classes[run])     # (D', S, S)
                probs = all_boxes.new_zeros((len(all_boxes), *sub.shape[1:]))
                probs[run] = sub
            # pasted into an image only by rescale_predictions, once, at the size that is wanted
            for d, p in zip(dets, probs.split(counts)):
                d["pred_mask_probs"] = p
        if self.keypoint_on:
            num_kp = self.keypoint_head.num_keypoints
            # only detections of classes that have keypoints go through the (costly) keypoint head
            if self.keypoint_classes is None:
                sel = torch.ones_like(classes, dtype=torch.bool)
            else:
                sel = torch.isin(classes, torch.as_tensor(self.keypoint_classes, device=classes.device))
            sel = sel & run
            kp = all_boxes.new_zeros((len(all_boxes), num_kp, 3))         # (D, P, 3); zeros where no keypoints
            if bool(sel.any()):
                if pooled is not None and self._keypoints_share_mask_pooling():
                    kp_feats = pooled[sel[run]]
                else:
                    kp_feats = self.keypoint_pooler(feats, [b[s] for b, s in zip(boxes, sel.split(counts))])
                kp[sel] = heatmaps_to_keypoints(self.keypoint_head(kp_feats), all_boxes[sel], self.keypoint_subpixel)
            for d, k in zip(dets, kp.split(counts)):
                d["pred_keypoints"] = k
        return dets

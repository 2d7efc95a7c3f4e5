"""Region Proposal Network (Faster R-CNN): objectness and box deltas for every anchor, then
the best-scoring decoded anchors become proposals.

Shape shorthand: N images, L feature levels, A anchors per location, Hl x Wl the size of
level l, T = sum_l Hl * Wl * A anchors per image, M gt boxes, R proposals per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from detection.anchors import AnchorGenerator
from detection.box_coder import BoxCoder
from detection.box_ops import nonempty, pairwise_iou
from detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match
from detection.sampler import sample_balanced
from common.image_list import ImageList


class RPNHead(nn.Module):
    """A 3x3 conv shared across levels, then 1x1 convs for objectness (A) and deltas (4A)."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """L maps (N, C, Hl, Wl) -> L logits (N, A, Hl, Wl) and L deltas (N, 4A, Hl, Wl)."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.objectness(t))
            deltas.append(self.deltas(t))
        return logits, deltas


def flatten_level(logits: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """(N, A, H, W), (N, 4A, H, W) -> (N, H*W*A), (N, H*W*A, 4), in the anchors' (H, W, A) order."""
    n, a, h, w = logits.shape
    logits = logits.permute(0, 2, 3, 1).reshape(n, -1)                       # (N, H*W*A)
    deltas = deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)  # (N, H*W*A, 4)
    return logits, deltas


def label_anchors(anchors: Tensor, gt_boxes: Tensor, iou_thresholds: tuple[float, float],
                  allow_low_quality_matches: bool = True) -> tuple[Tensor, Tensor]:
    """Assign one image's anchors to its ground truth.

    anchors (T, 4), gt_boxes (M, 4) xyxy -> labels (T,) float32: 1 object, 0 background,
    -1 ignored; matched_gt_boxes (T, 4): the matched gt box (zeros where there is none).
    """
    low, high = iou_thresholds
    matches = match(pairwise_iou(gt_boxes, anchors), high, low, allow_low_quality_matches)
    labels = torch.ones(len(anchors), dtype=torch.float32, device=anchors.device)
    labels[matches == BELOW_LOW_THRESHOLD] = 0.0
    labels[matches == BETWEEN_THRESHOLDS] = -1.0
    if len(gt_boxes) == 0:
        return labels, torch.zeros_like(anchors)
    return labels, gt_boxes[matches.clamp(min=0)]


def subsample_labels(labels: Tensor, batch_size: int, positive_fraction: float) -> Tensor:
    """(T,) labels 1/0/-1 -> the same with every anchor left out of the sample set to -1."""
    pos, neg = sample_balanced(labels == 1, labels == 0, batch_size, positive_fraction)
    out = torch.full_like(labels, -1.0)
    out[pos] = 1.0
    out[neg] = 0.0
    return out


def rpn_losses(objectness_logits: Tensor, pred_deltas: Tensor, labels: Tensor, target_deltas: Tensor,
               smooth_l1_beta: float = 0.0) -> dict[str, Tensor]:
    """Objectness BCE over sampled anchors and smooth-L1 (L1 when beta = 0) over positive anchors,
    both divided by the number of sampled anchors.

    objectness_logits (N, T), pred_deltas (N, T, 4), labels (N, T) with 1/0/-1 (-1: not sampled),
    target_deltas (N, T, 4) -> {"loss_rpn_cls", "loss_rpn_box"} scalars.
    """
    objectness_logits, pred_deltas = objectness_logits.float(), pred_deltas.float()  # losses in float32
    sampled = labels >= 0
    positive = labels == 1
    normalizer = sampled.sum().clamp(min=1).float()
    loss_cls = F.binary_cross_entropy_with_logits(objectness_logits[sampled], labels[sampled],
                                                  reduction="sum") / normalizer
    pred, target = pred_deltas[positive], target_deltas[positive]
    if smooth_l1_beta > 0:
        loss_box = F.smooth_l1_loss(pred, target, beta=smooth_l1_beta, reduction="sum")
    else:
        loss_box = F.l1_loss(pred, target, reduction="sum")
    # keep both heads' outputs in the graph when nothing is sampled/positive (DDP)
    loss_cls = loss_cls + objectness_logits.sum() * 0.0
    loss_box = loss_box / normalizer + pred_deltas.sum() * 0.0
    return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}


@torch.no_grad()
def find_top_proposals(anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor],
                       image_sizes: list[tuple[int, int]], box_coder: BoxCoder, pre_nms_topk: int,
                       post_nms_topk: int, nms_thresh: float, min_size: float = 0.0) -> list[dict[str, Tensor]]:
    """Select proposals: top ``pre_nms_topk`` per level, decode, clip, drop tiny boxes, NMS per
    level, then the top ``post_nms_topk`` of the image.

    anchors: L tensors (Tl, 4); logits: L tensors (N, Tl); deltas: L tensors (N, Tl, 4).
    Returns N dicts {"proposal_boxes": (R, 4) xyxy, "objectness_logits": (R,)}, R <= post_nms_topk,
    sorted by decreasing objectness.
    """
    n = logits[0].shape[0]
    boxes_all, scores_all, levels_all = [], [], []
    for lvl, (a, lg, dl) in enumerate(zip(anchors, logits, deltas)):
        k = min(pre_nms_topk, lg.shape[1])
        scores, idx = lg.float().topk(k, dim=1)                                  # (N, k)
        picked = dl.gather(1, idx[..., None].expand(-1, -1, 4))            # (N, k, 4)
        ref = a[idx]                                                       # (N, k, 4)
        boxes = box_coder.decode(picked.reshape(-1, 4), ref.reshape(-1, 4)).view(n, k, 4)
        boxes_all.append(boxes)
        scores_all.append(scores)
        levels_all.append(torch.full((k,), lvl, dtype=torch.int64, device=lg.device))
    boxes_all = torch.cat(boxes_all, dim=1)    # (N, sum k, 4)
    scores_all = torch.cat(scores_all, dim=1)  # (N, sum k)
    levels = torch.cat(levels_all)             # (sum k,)
    out = []
    for i, size in enumerate(image_sizes):
        boxes, scores, lvl = clip_boxes_to_image(boxes_all[i], size), scores_all[i], levels
        keep = nonempty(boxes, min_size) & torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = batched_nms(boxes, scores, lvl, nms_thresh)[:post_nms_topk]
        out.append({"proposal_boxes": boxes[keep], "objectness_logits": scores[keep]})
    return out


class RPN(nn.Module):
    """Anchors + head + proposal selection + losses. ``forward`` returns (proposals, losses)."""

    def __init__(self, in_features: list[str], anchor_generator: AnchorGenerator, head: RPNHead, *,
                 box_coder: BoxCoder = BoxCoder((1.0, 1.0, 1.0, 1.0)),
                 iou_thresholds: tuple[float, float] = (0.3, 0.7), batch_size_per_image: int = 256,
                 positive_fraction: float = 0.5, pre_nms_topk: tuple[int, int] = (2000, 1000),
                 post_nms_topk: tuple[int, int] = (1000, 1000), nms_thresh: float = 0.7,
                 min_size: float = 0.0, smooth_l1_beta: float = 0.0, loss_weight: float = 1.0):
        """``pre_nms_topk``/``post_nms_topk`` are (train, test) values, per level / per image."""
        super().__init__()
        self.in_features = list(in_features)
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = box_coder
        self.iou_thresholds = tuple(iou_thresholds)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = tuple(pre_nms_topk)
        self.post_nms_topk = tuple(post_nms_topk)
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight

    def forward(self, images: ImageList, features: dict[str, Tensor],
                gt_boxes: list[Tensor] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """features: name -> (N, C, Hl, Wl); gt_boxes: N tensors (M, 4) or None.

        Returns N proposal dicts (train or test top-k by ``self.training``; no gradient) and the
        losses (only when ``gt_boxes`` is given).
        """
        feats = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feats)                 # L x (Tl, 4)
        raw_logits, raw_deltas = self.head(feats)
        flat = [flatten_level(lg, dl) for lg, dl in zip(raw_logits, raw_deltas)]
        logits = [f[0] for f in flat]                          # L x (N, Tl)
        deltas = [f[1] for f in flat]                          # L x (N, Tl, 4)
        stage = 0 if self.training else 1
        proposals = find_top_proposals(anchors, [l.detach() for l in logits], [d.detach() for d in deltas],
                                       images.image_sizes, self.box_coder, self.pre_nms_topk[stage],
                                       self.post_nms_topk[stage], self.nms_thresh, self.min_size)
        losses: dict[str, Tensor] = {}
        if gt_boxes is not None:
            all_anchors = torch.cat(anchors)                   # (T, 4)
            labels, targets = [], []
            for boxes in gt_boxes:
                lab, matched = label_anchors(all_anchors, boxes, self.iou_thresholds)
                lab = subsample_labels(lab, self.batch_size_per_image, self.positive_fraction)
                pos = lab == 1
                target = torch.zeros_like(all_anchors)         # only positives are regressed
                target[pos] = self.box_coder.encode(matched[pos], all_anchors[pos])
                labels.append(lab)
                targets.append(target)
            losses = rpn_losses(torch.cat(logits, dim=1), torch.cat(deltas, dim=1), torch.stack(labels),
                                torch.stack(targets), self.smooth_l1_beta)
            losses = {k: v * self.loss_weight for k, v in losses.items()}
        return proposals, losses

"""R-CNN's class-specific bounding-box regression (Girshick et al. 2014, appendix C).

Shape shorthand: R proposals, M gt boxes, D feature dimensions.

A proposal P is moved towards its ground-truth box G by four functions of P's features:
    t_x = (G_x - P_x) / P_w    t_y = (G_y - P_y) / P_h    (centres)
    t_w = log(G_w / P_w)       t_h = log(G_h / P_h)
(``BoxCoder((1, 1, 1, 1))``), each a ridge regression on the features (penalty lambda = 1000 in
the paper) fitted per class on the proposals whose IoU with a gt box is at least 0.6 (that gt
box and its class). The paper's code also whitens the targets before the ridge solve; with one
shared penalty for the four outputs that changes nothing (ridge is linear in the targets), so
it is left out. Features are scaled as for the SVMs (mean norm ``feat_norm``) by the caller.
"""
from __future__ import annotations

import torch
from torch import Tensor

from detection.box_coder import BoxCoder
from detection.box_ops import pairwise_iou

RCNN_BOX_CODER = BoxCoder((1.0, 1.0, 1.0, 1.0))


def regression_targets(proposals: Tensor, gt_boxes: Tensor) -> Tensor:
    """(R, 4) proposals and (R, 4) their gt boxes, xyxy -> (R, 4) targets (t_x, t_y, t_w, t_h)."""
    return RCNN_BOX_CODER.encode(gt_boxes, proposals)


def regression_samples(proposals: Tensor, gt_boxes: Tensor, gt_classes: Tensor, min_iou: float
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """The proposals a regressor trains on: (indices (S,) into R, their targets (S, 4), their
    classes (S,)), each proposal paired with the gt box it overlaps most, kept if IoU >= min_iou."""
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return (torch.zeros(0, dtype=torch.int64), proposals.new_zeros((0, 4)),
                torch.zeros(0, dtype=torch.int64))
    best_iou, best_gt = pairwise_iou(gt_boxes, proposals).max(dim=0)  # (R,), (R,)
    idx = (best_iou >= min_iou).nonzero().squeeze(1)
    return idx, regression_targets(proposals[idx], gt_boxes[best_gt[idx]]), gt_classes[best_gt[idx]]


def fit_ridge(x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """(S, D) features, (S, T) targets -> (W (D, T), b (T,)) minimising |x W + b - y|^2 + lam |W|^2
    (the bias is not penalised). Solved in float64 by the normal equations."""
    if len(x) == 0:
        raise ValueError("fit_ridge: no samples")
    xd, yd = x.double(), y.double()
    mx, my = xd.mean(0), yd.mean(0)
    xc, yc = xd - mx, yd - my
    gram = xc.T @ xc + lam * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, xc.T @ yc)  # (D, T)
    return w.float(), (my - mx @ w).float()

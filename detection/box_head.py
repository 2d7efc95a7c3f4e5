"""The Fast R-CNN box branch: a head that turns pooled RoI features into a vector, a predictor
(K + 1 class logits and class-specific deltas), its losses and its inference.

Shape shorthand: R RoIs, C channels, S pooled size, D head output dim, K classes (labels
0..K-1, background K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from common.backbones import gn_groups
from detection.box_coder import BoxCoder
from detection.box_ops import nonempty


def conv_norm_relu(in_ch: int, out_ch: int, norm: str) -> nn.Sequential:
    """3x3 conv (no bias when normalised) + optional GroupNorm (common.backbones.gn_groups) / BatchNorm + ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=norm == "")]
    if norm == "GN":
        layers.append(nn.GroupNorm(gn_groups(out_ch), out_ch))
    elif norm == "BN":
        layers.append(nn.BatchNorm2d(out_ch))
    elif norm != "":
        raise ValueError(f"head norm must be '', 'GN' or 'BN', got {norm!r}")
    layers.append(nn.ReLU(inplace=True))
    nn.init.kaiming_normal_(layers[0].weight, mode="fan_out", nonlinearity="relu")
    if layers[0].bias is not None:
        nn.init.zeros_(layers[0].bias)
    return nn.Sequential(*layers)


def conv_stack(in_ch: int, out_ch: int, num_convs: int, norm: str) -> tuple[nn.Sequential, int]:
    """``num_convs`` x :func:`conv_norm_relu` (empty for 0) and the channels it outputs."""
    layers = [conv_norm_relu(in_ch if k == 0 else out_ch, out_ch, norm) for k in range(num_convs)]
    return nn.Sequential(*layers), (out_ch if num_convs else in_ch)


class ConvFCHead(nn.Module):
    """``num_convs`` 3x3 convs then ``num_fcs`` FC layers ("2fc" of FPN: 0 convs, 2 FCs)."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024, num_fcs: int = 2,
                 num_convs: int = 0, conv_dim: int = 256, norm: str = ""):
        super().__init__()
        self.convs, ch = conv_stack(in_channels, conv_dim, num_convs, norm)
        fcs, dim = [], ch * resolution * resolution
        for _ in range(num_fcs):
            fc = nn.Linear(dim, fc_dim)
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
            fcs += [fc, nn.ReLU(inplace=True)]
            dim = fc_dim
        self.fcs = nn.Sequential(*fcs)
        self.out_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, D)."""
        return self.fcs(self.convs(x).flatten(1))


class Res5Head(nn.Module):
    """The C4 head of Faster/Mask R-CNN: the backbone's last stage (res5, stride 2 inside) run
    on each 14x14 RoI, then global average pooling."""

    def __init__(self, res5: nn.Module, out_channels: int):
        super().__init__()
        self.res5 = res5
        self.out_dim = out_channels

    def features(self, x: Tensor) -> Tensor:
        """(R, C4, S, S) -> (R, C5, S/2, S/2), the map the C4 mask head shares."""
        return self.res5(x)

    def forward(self, x: Tensor) -> Tensor:
        """(R, C4, S, S) -> (R, C5)."""
        return self.res5(x).mean(dim=(2, 3))


class FastRCNNPredictor(nn.Module):
    """Linear class scores (K + 1, background last) and class-specific deltas (4K)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, D) -> class logits (R, K + 1), deltas (R, 4K)."""
        return self.cls_score(x), self.bbox_pred(x)


def svm_hinge_loss(class_scores: Tensor, gt_classes: Tensor) -> Tensor:
    """One-vs-rest linear SVMs on the K class scores: mean over RoIs of sum_c max(0, 1 - y_c s_c),
    y_c = +1 for the RoI's class and -1 for the others (a background RoI is a negative for all K;
    the background column K is not used).

    class_scores (R, K + 1), gt_classes (R,) int64 in 0..K -> scalar.
    """
    k = class_scores.shape[1] - 1
    y = -torch.ones_like(class_scores[:, :k])                                # (R, K)
    fg = gt_classes < k
    y[fg.nonzero().squeeze(1), gt_classes[fg]] = 1.0
    return F.relu(1.0 - y * class_scores[:, :k]).sum(dim=1).mean() + class_scores[:, k].sum() * 0.0


def class_scores(class_logits: Tensor, classifier: str = "softmax") -> Tensor:
    """(R, K + 1) logits -> (R, K) per-class scores in [0, 1]: softmax probabilities without the
    background, or for ``classifier="svm"`` the sigmoid of each class's SVM score (monotone, so
    rankings and AP are the SVMs')."""
    k = class_logits.shape[1] - 1
    if classifier == "svm":
        return torch.sigmoid(class_logits[:, :k])
    return F.softmax(class_logits, dim=-1)[:, :k]


def fast_rcnn_losses(class_logits: Tensor, box_deltas: Tensor, gt_classes: Tensor, target_deltas: Tensor,
                     smooth_l1_beta: float = 0.0, class_weights: Tensor | None = None,
                     classifier: str = "softmax") -> dict[str, Tensor]:
    """Cross-entropy over K + 1 classes (``classifier="svm"``: :func:`svm_hinge_loss`), and
    smooth-L1 (L1 when ``smooth_l1_beta`` is 0) on the deltas of the gt class of each foreground
    RoI; both averaged over all R sampled RoIs.

    class_logits (R, K + 1), box_deltas (R, 4K), gt_classes (R,) int64 in 0..K (K = background),
    target_deltas (R, 4) -> {"loss_cls", "loss_box"}. ``class_weights`` (K + 1,): per-class
    weights of the cross-entropy (a weighted mean, so the loss keeps its scale), or None.
    """
    class_logits, box_deltas = class_logits.float(), box_deltas.float()  # losses in float32
    num_rois = max(len(gt_classes), 1)
    k = class_logits.shape[1] - 1
    if len(gt_classes) == 0:
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return {"loss_cls": zero, "loss_box": zero.clone()}
    if classifier == "svm":
        loss_cls = svm_hinge_loss(class_logits, gt_classes)
    else:
        loss_cls = F.cross_entropy(class_logits, gt_classes, weight=class_weights, reduction="mean")
    fg = (gt_classes < k).nonzero().squeeze(1)
    deltas = box_deltas.view(len(box_deltas), k, 4)[fg, gt_classes[fg]]  # (F, 4) the gt class's deltas
    if smooth_l1_beta > 0:
        loss_box = F.smooth_l1_loss(deltas, target_deltas[fg], beta=smooth_l1_beta, reduction="sum")
    else:
        loss_box = F.l1_loss(deltas, target_deltas[fg], reduction="sum")
    return {"loss_cls": loss_cls, "loss_box": loss_box / num_rois + box_deltas.sum() * 0.0}


def inverse_sqrt_frequency_weights(counts: list[int]) -> Tensor:
    """(K + 1,) classifier weights from the training instances per class (K counts): foreground
    class c gets sqrt(median / count_c), scaled so the foreground weights average 1; background
    (last) keeps 1; a class without instances gets 0."""
    n = torch.as_tensor(counts, dtype=torch.float32)
    seen = n > 0
    w = torch.zeros(len(n) + 1)
    if seen.any():
        w[:-1][seen] = (n[seen].median() / n[seen]).sqrt()
        w[:-1] *= seen.sum() / w[:-1].sum()
    w[-1] = 1.0
    return w


@torch.no_grad()
def fast_rcnn_inference(class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                        image_sizes: list[tuple[int, int]], box_coder: BoxCoder, score_thresh: float,
                        nms_thresh: float, detections_per_img: int,
                        classifier: str = "softmax") -> list[dict[str, Tensor]]:
    """Per-class decode, clip, score threshold, per-class NMS, keep the best detections
    (scores: :func:`class_scores`).

    class_logits (R, K + 1), box_deltas (R, 4K) for the concatenated proposals (N tensors (R_i, 4))
    -> N dicts {"pred_boxes" (D, 4), "scores" (D,), "pred_classes" (D,)}, sorted by score.
    """
    k = class_logits.shape[1] - 1
    probs = class_scores(class_logits.float(), classifier)                    # (R, K) no background
    counts = [len(p) for p in proposals]
    out = []
    for scores, deltas, props, size in zip(probs.split(counts), box_deltas.split(counts), proposals, image_sizes):
        boxes = clip_boxes_to_image(box_coder.decode(deltas, props).view(-1, k, 4), size)  # (R_i, K, 4)
        keep = (scores > score_thresh) & torch.isfinite(boxes).all(dim=2)         # (R_i, K)
        roi_idx, cls = keep.nonzero(as_tuple=True)
        boxes, scores = boxes[roi_idx, cls], scores[roi_idx, cls]
        valid = nonempty(boxes)
        boxes, scores, cls = boxes[valid], scores[valid], cls[valid]
        keep = batched_nms(boxes, scores, cls, nms_thresh)[:detections_per_img]
        out.append({"pred_boxes": boxes[keep], "scores": scores[keep], "pred_classes": cls[keep]})
    return out


# ---------------------------------------------------------------------------------------------
# truncated SVD of the fully connected layers (Fast R-CNN, section 3.1)


def truncated_svd(fc: nn.Linear, rank: int) -> nn.Sequential:
    """W (out, in) ~ U_t diag(S_t) V_t^T: one ``in -> out`` layer becomes ``in -> rank`` (weights
    diag(S_t) V_t^T, no bias) then ``rank -> out`` (weights U_t, the original bias): rank * (in + out)
    multiplies instead of in * out."""
    with torch.no_grad():
        u, sv, vh = torch.linalg.svd(fc.weight.float(), full_matrices=False)  # (out, q), (q,), (q, in)
        first = nn.Linear(fc.in_features, rank, bias=False)
        second = nn.Linear(rank, fc.out_features, bias=fc.bias is not None)
        first.weight.copy_(sv[:rank, None] * vh[:rank])
        second.weight.copy_(u[:, :rank])
        if fc.bias is not None:
            second.bias.copy_(fc.bias)
    return nn.Sequential(first, second).to(fc.weight.device, fc.weight.dtype)


def compress_fc_layers(head: nn.Module, rank: int) -> list[str]:
    """Replace, in place, every ``nn.Linear`` of ``head`` for which rank * (in + out) < in * out
    by its rank-``rank`` :func:`truncated_svd`. Returns the names of the replaced layers."""
    if rank < 1:
        raise ValueError(f"truncated SVD rank must be >= 1, got {rank}")
    replaced = []
    for name, module in list(head.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and rank * (child.in_features + child.out_features) < \
                    child.in_features * child.out_features:
                setattr(module, child_name, truncated_svd(child, rank))
                replaced.append(f"{name}.{child_name}" if name else child_name)
    return replaced

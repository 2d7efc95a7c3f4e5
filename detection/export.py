"""A trained detector as one traceable function of one image, for ONNX and TorchScript export.

Shape shorthand: H x W the input image, Hp x Wp it padded to the backbone's divisibility,
L feature levels, T_l anchors of level l, R proposals, D detections, K classes, P keypoints,
S mask size.

``ExportableDetector(model, category_ids)`` wraps a ``GeneralizedRCNN`` (RPN models) and runs
its inference on one image with operations that trace into a graph valid for every image size
and every number of detections:

    image (3, H, W) float32 RGB in [0, 1]
      -> boxes (D, 4) float32 xyxy pixels of that image, scores (D,) float32,
         classes (D,) int64 COCO category ids,
         [masks (D, H, W) float32 probabilities], [keypoints (D, P, 3) float32 (x, y, score)]

What differs from the eager path (``GeneralizedRCNN.forward``), and why:
- sizes come from the input's shape (traced), never from Python ints, so anchors, top-k,
  clipping and pasting follow the image; top-k takes ``min(k, available)`` as a tensor;
- RoIAlign is ``torchvision.ops.roi_align`` (an ONNX RoiAlign op; our CPU kernel in
  ``roi_ops.py`` is a custom autograd function that does not export);
- the mask and keypoint heads run on the detections plus one dummy box that is dropped
  afterwards, so zero detections never give zero-sized convolutions (what breaks torchvision's
  Mask R-CNN export, pytorch/vision#2251): zero detections give outputs with D = 0;
- masks are pasted in one batched product (no chunk loop, whose trip count would be traced).
With ``min_size`` > 0 the wrapper first resizes the image (bilinear) so its short side is
``min_size`` and its long side at most ``max_size`` (the test-time resize of
``detection.data.build_transforms``, done in float instead of OpenCV on uint8), and maps boxes,
keypoints and masks back to the input's pixels; with ``min_size`` = 0 the model sees the image at
the size given. Numbers agree with the eager model up to float rounding
(tests/tools/test_export.py measures it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.ops
from torch import Tensor, nn

from detection.anchors import shifted_anchors
from detection.box_ops import nonempty
from detection.keypoint_head import heatmaps_to_keypoints
from detection.mask_head import _interp_weights
from detection.poolers import assign_levels
from detection.rpn import flatten_level

DET_OUTPUTS = ("boxes", "scores", "classes")


def output_names(model: nn.Module) -> tuple[str, ...]:
    """Names of what ``ExportableDetector(model)`` returns, in order."""
    roi = model.roi_heads
    return DET_OUTPUTS + (("masks",) if roi.mask_on else ()) + (("keypoints",) if roi.keypoint_on else ())


def _clip(boxes: Tensor, hw: Tensor) -> Tensor:
    """Clip (..., 4) xyxy boxes to an image whose (h, w) is the tensor ``hw`` (traced)."""
    upper = torch.stack((hw[1], hw[0], hw[1], hw[0])).to(boxes.dtype)       # (4,) x, y, x, y
    return torch.max(torch.min(boxes, upper), torch.zeros_like(upper))


def _topk_count(scores: Tensor, k: int) -> Tensor:
    """min(k, scores.shape[1]) as a traced 0-d tensor (a Python min would freeze the number)."""
    available = torch._shape_as_tensor(scores)[1]
    return torch.clamp(available, max=k)


def pad_image(image: Tensor, divisibility: int, pad_value: tuple[float, float, float]) -> Tensor:
    """(3, H, W) -> (1, 3, Hp, Wp) padded at the bottom and right with ``pad_value`` per channel."""
    h, w = image.shape[-2:]
    ph = (divisibility - h % divisibility) % divisibility
    pw = (divisibility - w % divisibility) % divisibility
    mean = torch.tensor(pad_value, dtype=image.dtype).view(3, 1, 1)
    # pad (image - mean) with zeros, then add the mean back: padding equals the mean exactly
    return (F.pad(image - mean, (0, pw, 0, ph)) + mean)[None]


def pool(pooler: nn.Module, features: list[Tensor], boxes: Tensor) -> Tensor:
    """``RoIPooler`` semantics with torchvision's kernels: (D, 4) boxes of image 0 -> (D, C, S, S)."""
    rois = torch.cat((torch.zeros_like(boxes[:, :1]), boxes), dim=1)       # (D, 5) batch index 0
    size = (pooler.output_size, pooler.output_size)

    def one(x: Tensor, r: Tensor, scale: float) -> Tensor:
        if pooler.kind == "pool":
            return torchvision.ops.roi_pool(x, r, size, scale)
        return torchvision.ops.roi_align(x, r, size, scale, pooler.sampling_ratio, pooler.aligned)

    if len(features) == 1:
        return one(features[0], rois, pooler.scales[0])
    levels = assign_levels(boxes, pooler.min_level, pooler.max_level, pooler.canonical_box_size,
                           pooler.canonical_level)                          # (D,)
    out = features[0].new_zeros((boxes.shape[0], features[0].shape[1], *size))
    for lvl, (x, scale) in enumerate(zip(features, pooler.scales)):
        idx = (levels == lvl).nonzero().squeeze(1)
        out = out.index_put((idx,), one(x, rois[idx], scale))
    return out


def class_masks(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """(D, K, S, S) logits, (D,) labels -> (D, S, S) probabilities of each detection's class
    (``mask_head.mask_probs`` by gather: ``len()`` would freeze D in the trace)."""
    if mask_logits.shape[1] == 1:  # class-agnostic masks
        return mask_logits[:, 0].sigmoid()
    s = mask_logits.shape[-1]
    idx = labels[:, None, None, None].expand(-1, 1, s, s)                  # (D, 1, S, S)
    return mask_logits.gather(1, idx)[:, 0].sigmoid()


def paste(masks: Tensor, boxes: Tensor, hw: Tensor) -> Tensor:
    """(D, S, S) masks into their (D, 4) boxes of an image of size ``hw`` -> (D, H, W); the same
    bilinear weights as ``mask_head.paste_masks`` in one batched product."""
    s = masks.shape[-1]
    wy = _interp_weights(boxes[:, 1], boxes[:, 3], s, hw[0])                # (D, H, S)
    wx = _interp_weights(boxes[:, 0], boxes[:, 2], s, hw[1])                # (D, W, S)
    return torch.bmm(torch.bmm(wy, masks), wx.transpose(1, 2))             # (D, H, W)


class ExportableDetector(nn.Module):
    """``forward(image (3, H, W)) -> (boxes, scores, classes[, masks][, keypoints])``; see the
    module docstring. ``category_ids[label]`` is the COCO id written to ``classes``."""

    def __init__(self, model: nn.Module, category_ids: list[int], min_size: int = 0, max_size: int = 0):
        super().__init__()
        if min_size < 0 or max_size < 0:
            raise ValueError(f"min_size and max_size must be >= 0, got {min_size} and {max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)
        if model.proposal_generator is None:
            raise ValueError("only detectors with an RPN can be exported (Fast R-CNN reads proposals from "
                             "outside the model)")
        if len(category_ids) != model.num_classes:
            raise ValueError(f"got {len(category_ids)} category ids for a model of {model.num_classes} classes")
        self.model = model.eval()
        self.register_buffer("category_ids", torch.as_tensor(category_ids, dtype=torch.int64))
        self.outputs = output_names(model)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        backbone, roi = m.backbone, m.roi_heads
        hw_in = torch._shape_as_tensor(image)[-2:]                          # (2,) traced (H, W)
        image, hw = self.resize(image, hw_in)                                # the image the model sees
        x = pad_image(image, backbone.size_divisibility, backbone.pixel_mean)  # (1, 3, Hp, Wp)
        features = backbone(backbone.normalize(x))
        proposals = self.proposals(features, hw)                             # (R, 4)
        feats = [features[f] for f in roi.in_features]
        boxes, scores, labels = self.detect(feats, proposals, hw)            # (D, 4), (D,), (D,)
        scale = (hw_in.float() / hw.float()).flip(0)                         # (2,) x, y: model -> input frame
        out_boxes = boxes * scale.repeat(2)
        out = [out_boxes, scores, self.category_ids[labels]]
        # the heads see one extra dummy box so that D = 0 never reaches a convolution
        padded = torch.cat((boxes, boxes.new_tensor([[0.0, 0.0, 1.0, 1.0]])))  # (D + 1, 4)
        padded_labels = torch.cat((labels, labels.new_zeros(1)))
        d = boxes.shape[0]
        if roi.mask_on:
            probs = class_masks(roi.mask_head(pool(roi.mask_pooler, feats, padded)), padded_labels)  # (D+1, S, S)
            out.append(paste(probs[:d], out_boxes, hw_in))                  # pasted in the input's frame
        if roi.keypoint_on:
            heatmaps = roi.keypoint_head(pool(roi.keypoint_pooler, feats, padded))  # (D + 1, P, S, S)
            kp = heatmaps_to_keypoints(heatmaps, padded, roi.keypoint_subpixel)[:d]  # (D, P, 3)
            if roi.keypoint_classes is not None:  # classes without keypoints get zeros, as in eager
                wanted = torch.as_tensor(roi.keypoint_classes, device=labels.device)
                has = (labels[:, None] == wanted).any(dim=1)                 # (D,) (isin does not export)
                kp = torch.where(has[:, None, None], kp, torch.zeros_like(kp))
            out.append(torch.cat((kp[..., :2] * scale, kp[..., 2:]), dim=-1))
        return tuple(out)

    def resize(self, image: Tensor, hw: Tensor) -> tuple[Tensor, Tensor]:
        """(3, H, W) -> the image at the model's test size and its (2,) (h, w), or the image as is."""
        if self.min_size == 0:
            return image, hw
        size = hw.float()
        scale = self.min_size / size.min()
        if self.max_size > 0:
            scale = torch.min(scale, self.max_size / size.max())
        new = (size * scale).round().long()                                  # (2,) h, w
        resized = F.interpolate(image[None], size=(new[0], new[1]), mode="bilinear", align_corners=False)[0]
        return resized, new

    def proposals(self, features: dict[str, Tensor], hw: Tensor) -> Tensor:
        """The RPN's test-time proposals of the one image: (R, 4) xyxy (``rpn.find_top_proposals``)."""
        rpn = self.model.proposal_generator
        gen = rpn.anchor_generator
        feats = [features[f] for f in rpn.in_features]
        raw_logits, raw_deltas = rpn.head(feats)
        pre, post = rpn.pre_nms_topk[1], rpn.post_nms_topk[1]
        boxes_all, scores_all, levels_all = [], [], []
        for lvl, (f, lg, dl) in enumerate(zip(feats, raw_logits, raw_deltas)):
            anchors = shifted_anchors(gen.cell_anchors[lvl], gen.strides[lvl], gen.offset,
                                      f.shape[-2], f.shape[-1])            # (T_l, 4)
            logits, deltas = flatten_level(lg, dl)                         # (1, T_l), (1, T_l, 4)
            scores, idx = logits[0].topk(_topk_count(logits, pre))         # (k,)
            boxes_all.append(rpn.box_coder.decode(deltas[0, idx], anchors[idx]))
            scores_all.append(scores)
            levels_all.append(torch.full_like(idx, lvl))
        boxes = _clip(torch.cat(boxes_all), hw)
        scores, levels = torch.cat(scores_all), torch.cat(levels_all)
        keep = nonempty(boxes, rpn.min_size) & torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = torchvision.ops.batched_nms(boxes, scores, levels, rpn.nms_thresh)[:post]
        return boxes[keep]

    def detect(self, feats: list[Tensor], proposals: Tensor, hw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The box branch on (R, 4) proposals -> boxes (D, 4), scores (D,), labels (D,) sorted by
        score (``box_head.fast_rcnn_inference`` for one image)."""
        roi = self.model.roi_heads
        class_logits, box_deltas = roi.box_predictor(roi.box_head(pool(roi.box_pooler, feats, proposals)))
        k = class_logits.shape[1] - 1
        probs = F.softmax(class_logits, dim=-1)[:, :-1]                     # (R, K) drop background
        boxes = _clip(roi.box_coder.decode(box_deltas, proposals).view(-1, k, 4), hw)  # (R, K, 4)
        keep = (probs > roi.score_thresh) & torch.isfinite(boxes).all(dim=2)  # (R, K)
        roi_idx, labels = keep.nonzero().unbind(1)
        boxes, scores = boxes[roi_idx, labels], probs[roi_idx, labels]
        valid = nonempty(boxes)
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        keep = torchvision.ops.batched_nms(boxes, scores, labels, roi.nms_thresh)[:roi.detections_per_img]
        return boxes[keep], scores[keep], labels[keep]

"""The R-CNN meta-architecture: backbone -> proposals -> RoI heads. It only composes.

Faster R-CNN plugs in an RPN; Fast R-CNN plugs in none and reads precomputed proposals from
``targets[i]["proposal_boxes"]``; Mask / Keypoint R-CNN are RoI heads with those branches on.

Shape shorthand: N images, Hp x Wp the padded batch, M gt instances, P keypoints.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from common.image_list import ImageList


class GeneralizedRCNN(nn.Module):
    """``forward(images, targets=None) -> (predictions, losses)`` in train and eval mode alike."""

    def __init__(self, backbone: nn.Module, proposal_generator: nn.Module | None, roi_heads: nn.Module,
                 num_classes: int, num_keypoints: int = 0, keypoint_flip_indices: list[int] | None = None,
                 channels_last: bool | str = False):
        """keypoint_flip_indices: index of the mirrored keypoint (kept for flip test-time
        augmentation and tools; the model itself does not use it). channels_last: True feeds the
        backbone NHWC images (its weights must be NHWC too: ``model.to(memory_format=...)``);
        "eval" keeps the weights NCHW in train mode and NHWC in eval mode (``train()`` converts
        them in place, so optimizers and checkpoints see the same parameters)."""
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.num_classes = num_classes
        self.num_keypoints = num_keypoints
        self.keypoint_flip_indices = list(keypoint_flip_indices) if keypoint_flip_indices else None
        if channels_last not in (True, False, "eval"):
            raise ValueError(f"channels_last must be true, false or 'eval', got {channels_last!r}")
        self.channels_last = channels_last

    def train(self, mode: bool = True) -> "GeneralizedRCNN":
        super().train(mode)
        if self.channels_last == "eval":  # oneDNN's faster layout for inference only
            self.to(memory_format=torch.contiguous_format if mode else torch.channels_last)
        return self

    def forward(self, images: ImageList, targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """images: ImageList (N, 3, Hp, Wp) in [0, 1]; targets: N dicts (see detection.fields).

        Returns predictions (N dicts in the model's frame; [] in train mode) and losses (filled
        whenever targets carry ``gt_boxes``; in eval mode too, for validation loss).
        """
        if self.training and targets is None:
            raise ValueError("GeneralizedRCNN in train mode needs targets; call model.eval() for inference")
        if targets is not None:
            self._check_targets(images, targets)
        has_gt = targets is not None and all("gt_boxes" in t for t in targets)
        features = self.features(images)
        losses: dict[str, Tensor] = {}
        if self.proposal_generator is not None:
            gt_boxes = [t["gt_boxes"] for t in targets] if has_gt else None
            proposals, rpn_losses = self.proposal_generator(images, features, gt_boxes)
            boxes = [p["proposal_boxes"] for p in proposals]
            losses.update(rpn_losses)
        else:
            if targets is None or any("proposal_boxes" not in t for t in targets):
                raise ValueError("this model has no RPN: pass precomputed proposals as "
                                 "targets[i]['proposal_boxes'] (Fast R-CNN)")
            boxes = [t["proposal_boxes"].to(images.tensor.device, torch.float32) for t in targets]
        predictions, roi_losses = self.roi_heads(features, boxes, images.image_sizes,
                                                 targets if has_gt else None)
        losses.update(roi_losses)
        return predictions, losses

    def features(self, images: ImageList) -> dict[str, Tensor]:
        """The backbone's feature maps of a batch: name -> (N, C, Hl, Wl)."""
        x = images.tensor
        if self.channels_last is True or (self.channels_last == "eval" and not self.training):
            # the weights are NHWC too (build_model, train()): oneDNN's faster layout
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(self.backbone.normalize(x))

    @torch.no_grad()
    def propose(self, images: ImageList) -> list[dict[str, Tensor]]:
        """The RPN's proposals of a batch as the detector makes them in its current mode (test-time
        top-k in eval mode): N dicts {"proposal_boxes": (R, 4) xyxy in the batch's frame, best
        first; "objectness_logits": (R,)}. Only for a detector with an RPN."""
        if self.proposal_generator is None:
            raise ValueError("this model has no RPN (Fast R-CNN reads its proposals from files)")
        proposals, _ = self.proposal_generator(images, self.features(images))
        return proposals

    def _check_targets(self, images: ImageList, targets: list[dict[str, Tensor]]) -> None:
        """Fail with one sentence naming the image id and the bad value."""
        if len(targets) != len(images):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets")
        for i, t in enumerate(targets):
            image_id = t.get("image_id", f"#{i} in the batch")
            if isinstance(image_id, Tensor):
                image_id = image_id.item()
            where = f"image id {image_id}"
            if "proposal_boxes" in t:
                p = t["proposal_boxes"]
                if p.ndim != 2 or p.shape[1] != 4 or not torch.isfinite(p).all():
                    raise ValueError(f"{where}: proposal_boxes must be a finite (R, 4) tensor, got shape "
                                     f"{tuple(p.shape)}")
            if "gt_boxes" not in t:
                continue
            boxes, classes = t["gt_boxes"], t.get("gt_classes")
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"{where}: gt_boxes must have shape (M, 4), got {tuple(boxes.shape)}")
            if classes is None or classes.shape != (len(boxes),):
                got = None if classes is None else tuple(classes.shape)
                raise ValueError(f"{where}: gt_classes must have shape ({len(boxes)},), got {got}")
            bad = ~torch.isfinite(boxes).all(dim=1)
            if bad.any():
                raise ValueError(f"{where}: gt box {boxes[bad][0].tolist()} is not finite")
            bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                raise ValueError(f"{where}: gt box {boxes[bad][0].tolist()} is empty (needs x2 > x1 and y2 > y1)")
            bad = (classes < 0) | (classes >= self.num_classes)
            if bad.any():
                raise ValueError(f"{where}: gt class {int(classes[bad][0])} is outside 0..{self.num_classes - 1}")
            if getattr(self.roi_heads, "mask_on", False):
                m = t.get("gt_masks")
                if m is None or m.ndim != 3 or len(m) != len(boxes):
                    got = "none" if m is None else tuple(m.shape)
                    raise ValueError(f"{where}: the mask head needs gt_masks of shape ({len(boxes)}, H, W), got {got}")
            if getattr(self.roi_heads, "keypoint_on", False):
                kp = t.get("gt_keypoints")
                want = (len(boxes), self.num_keypoints, 3)
                if kp is None or tuple(kp.shape) != want:
                    got = "none" if kp is None else tuple(kp.shape)
                    raise ValueError(f"{where}: the keypoint head needs gt_keypoints of shape {want}, got {got}")
                if not torch.isfinite(kp).all():
                    raise ValueError(f"{where}: gt_keypoints contain a non-finite value")

"""The per-image fields that flow through the detectors (names, shapes, frames), and
:func:`rescale_predictions`, which moves predictions from one frame to another.

Shape shorthand: N images in a batch, M ground-truth instances, R predictions, P keypoints
per instance, H x W the image the model sees (after resize, before padding).

A batch is a ``common.image_list.ImageList`` plus a list of per-image dicts. Coordinates are absolute
pixels, xyxy, float32, in the frame of the image the model sees.

Ground truth (``targets[i]``), written by ``detection.data``:
    image_id      int            the COCO image id
    orig_size     (2,) int64     (height, width) of the image on disk
    gt_boxes      (M, 4) float32 xyxy
    gt_classes    (M,) int64     contiguous labels 0..K-1 (background is K)
    gt_masks      (M, H, W) uint8, only when the dataset has masks
    gt_keypoints  (M, P, 3) float32 (x, y, visibility 0/1/2), only when it has keypoints
    proposal_boxes (R, 4) float32 xyxy precomputed proposals (Fast R-CNN: selective search files,
                  ``detection.proposals``), best first, only when the dataset reads them

Predictions (``predictions[i]``), written by the model, in the model's frame:
    pred_boxes     (R, 4) float32 xyxy
    scores         (R,) float32
    pred_classes   (R,) int64 contiguous labels
    pred_mask_probs (R, S, S) float32 mask probabilities of the predicted class inside
                   pred_boxes (mask models)
    pred_keypoints (R, P, 3) float32 (x, y, score) (keypoint models)

:func:`rescale_predictions` maps predictions to another frame (the image on disk, for
evaluation and drawing); it pastes the masks into that frame, once, as
    pred_masks     (R, H', W') uint8 0/1 (mask probability >= 0.5)
(A prediction that already holds float ``pred_masks`` (R, H, W), e.g. torchvision's, has them
resized bilinearly instead.)
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from detection.mask_head import paste_masks

MASK_THRESHOLD = 0.5  # a pixel belongs to the instance when its mask probability is at least this


def rescale_predictions(pred: dict[str, Tensor], from_size: tuple[int, int],
                        to_size: tuple[int, int]) -> dict[str, Tensor]:
    """Map one image's predictions from the model's frame (h, w) to another frame (h', w').

    Boxes and keypoints are scaled; ``pred_mask_probs`` are pasted into the (h', w') frame as
    binary uint8 ``pred_masks``, on the device they are on; float ``pred_masks`` are resized.
    """
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    out = dict(pred)
    if "pred_boxes" in pred:
        out["pred_boxes"] = pred["pred_boxes"] * pred["pred_boxes"].new_tensor([sx, sy, sx, sy])
    if "pred_keypoints" in pred:
        kp = pred["pred_keypoints"].clone()
        kp[..., 0] *= sx
        kp[..., 1] *= sy
        out["pred_keypoints"] = kp
    if "pred_mask_probs" in pred:
        out["pred_masks"] = paste_masks(out.pop("pred_mask_probs"), out["pred_boxes"], to_size, MASK_THRESHOLD)
    elif "pred_masks" in pred:
        m = pred["pred_masks"]
        if m.numel() > 0:
            m = F.interpolate(m[:, None].float(), size=to_size, mode="bilinear", align_corners=False)[:, 0]
        else:
            m = m.new_zeros((0, *to_size))
        out["pred_masks"] = m
    return out

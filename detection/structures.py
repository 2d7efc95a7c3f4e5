"""Per-image data that flows through the detectors.

Shape shorthand: N images in a batch, M ground-truth instances, R predictions, P keypoints
per instance, H x W the image the model sees (after resize, before padding).

A batch is an :class:`ImageList` plus a list of per-image dicts. Coordinates are absolute
pixels, xyxy, float32, in the frame of the image the model sees.

Ground truth (``targets[i]``), written by ``detection.data``:
    image_id      int            the COCO image id
    orig_size     (2,) int64     (height, width) of the image on disk
    gt_boxes      (M, 4) float32 xyxy
    gt_classes    (M,) int64     contiguous labels 0..K-1 (background is K)
    gt_masks      (M, H, W) uint8, only when the dataset has masks
    gt_keypoints  (M, P, 3) float32 (x, y, visibility 0/1/2), only when it has keypoints

Predictions (``predictions[i]``), written by the model, in the model's frame:
    pred_boxes     (R, 4) float32 xyxy
    scores         (R,) float32
    pred_classes   (R,) int64 contiguous labels
    pred_masks     (R, H, W) float32 probabilities pasted into the image (mask models)
    pred_keypoints (R, P, 3) float32 (x, y, score) (keypoint models)

:func:`rescale_predictions` maps predictions to the frame of the image on disk for evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ImageList:
    """Images of different sizes padded into one tensor.

    tensor:      (N, 3, Hp, Wp) float32; pixels in [0, 1], padding set to ``pad_value``
    image_sizes: list of N (h, w), the size of each image before padding
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def to(self, device) -> "ImageList":
        return ImageList(self.tensor.to(device, non_blocking=True), self.image_sizes)

    def __len__(self) -> int:
        return len(self.image_sizes)

    @staticmethod
    def from_tensors(images: list[Tensor], size_divisibility: int = 32,
                     pad_value: tuple[float, ...] | float = 0.0) -> "ImageList":
        """Pad (3, h, w) images to a common size divisible by ``size_divisibility``.

        uint8 images are scaled to [0, 1]. ``pad_value`` is per channel (use the backbone's
        pixel mean so that padding normalises to zero).
        """
        if len(images) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        if size_divisibility > 1:
            max_h = (max_h + size_divisibility - 1) // size_divisibility * size_divisibility
            max_w = (max_w + size_divisibility - 1) // size_divisibility * size_divisibility
        c = images[0].shape[0]
        batch = torch.empty(len(images), c, max_h, max_w, dtype=torch.float32, device=images[0].device)
        pad = torch.as_tensor(pad_value, dtype=torch.float32, device=batch.device).reshape(-1, 1, 1)
        batch[:] = pad.expand(c, 1, 1) if pad.numel() > 1 else pad
        for img, out in zip(images, batch):
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            out[:, : img.shape[1], : img.shape[2]].copy_(img)
        return ImageList(batch, sizes)


def rescale_predictions(pred: dict[str, Tensor], from_size: tuple[int, int],
                        to_size: tuple[int, int]) -> dict[str, Tensor]:
    """Map one image's predictions from the model's frame (h, w) to another frame (h', w').

    Boxes and keypoints are scaled; masks are resized bilinearly (still probabilities).
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
    if "pred_masks" in pred:
        m = pred["pred_masks"]
        if m.numel() > 0:
            m = F.interpolate(m[:, None].float(), size=to_size, mode="bilinear", align_corners=False)[:, 0]
        else:
            m = m.new_zeros((0, *to_size))
        out["pred_masks"] = m
    return out

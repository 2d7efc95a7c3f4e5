"""Albumentations pipelines that keep boxes, masks and keypoints in step.

Shape shorthand: M instances, P keypoints per instance, H x W the image.

``build_transforms(meta, train=..., min_size=..., max_size=...)`` returns a
:class:`DetectionTransforms`: ``(image (H, W, 3) uint8, target) -> (image, target)`` where the
target holds numpy arrays ``gt_boxes`` (M, 4) float32 xyxy, ``gt_classes`` (M,),
optionally ``gt_masks`` (M, H, W) uint8, ``gt_keypoints`` (M, P, 3) and ``proposal_boxes`` (R, 4)
float32 xyxy (precomputed proposals: resized and flipped with the image, kept in order); other
keys pass through.

Steps, in order:
1. :class:`ResizeShortestEdge`: scale so the short side is ``min_size`` (a tuple is a random
   choice per image at train time, like detectron2's ResizeShortestEdge; at test time the largest),
   capped so the long side is at most ``max_size``; then at train time a random factor from
   ``scale_jitter=(lo, hi)``. Boxes and keypoints are scaled, masks resized nearest-neighbour.
2. :class:`HorizontalFlipKeypointSwap` (train, ``hflip_prob``): boxes and keypoints
   ``x -> W - x`` (keypoints are continuous coordinates here, see ``detection.data.coco``;
   albumentations' own ``W - 1 - x`` is for pixel indices) and then left/right keypoints
   swapped by ``meta.flip_indices``: albumentations does not know the flip map.
3. ``ColorJitter`` (train, ``color_jitter`` strength in [0, 1]; 0 = off).

Afterwards instances whose box has a side < ``MIN_BOX_SIDE`` px are dropped together with
their masks and keypoints, keypoints that left the image get v = 0 (and x = y = 0, as in COCO).
Randomness comes from the pipeline's own generators: :meth:`DetectionTransforms.set_random_seed`
makes a call reproducible (the train loader seeds every sample).
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np

from .coco import MIN_BOX_SIDE, DatasetMeta


class ResizeShortestEdge(A.SmallestMaxSize):
    """Short side to one of ``short_sizes``, long side capped at ``max_size`` (0 = no cap),
    then scaled by a factor drawn uniformly from ``scale_jitter`` (None = no jitter)."""

    def __init__(self, short_sizes: Sequence[int], max_size: int = 0,
                 scale_jitter: tuple[float, float] | None = None):
        super().__init__(max_size=[int(s) for s in short_sizes], interpolation=cv2.INTER_LINEAR,
                         mask_interpolation=cv2.INTER_NEAREST)
        self.long_cap = int(max_size)
        self.scale_jitter = scale_jitter

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        scale = self.py_random.choice(self.max_size) / min(h, w)
        if self.long_cap > 0:
            scale = min(scale, self.long_cap / max(h, w))
        if self.scale_jitter is not None:
            scale *= self.py_random.uniform(*self.scale_jitter)
        return {"scale": scale}


class HorizontalFlipKeypointSwap(A.HorizontalFlip):
    """Horizontal flip that also swaps left/right keypoints.

    Keypoints must come in as M consecutive groups of P rows (instance-major); after the
    mirror, row p of each group takes the values of row ``flip_indices[p]``.
    """

    def __init__(self, flip_indices: Sequence[int], p: float = 0.5):
        super().__init__(p=p)
        self.flip_indices = np.asarray(flip_indices, dtype=np.int64)

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        flipped = super().apply_to_keypoints(keypoints, **params)  # x -> W - 1 - x, angles mirrored
        flipped[:, 0] = params["shape"][1] - keypoints[:, 0]  # continuous coordinates: x -> W - x
        num_kp = len(self.flip_indices)
        if num_kp == 0 or len(flipped) == 0:
            return flipped
        grouped = flipped.reshape(-1, num_kp, flipped.shape[-1])  # (M*P, D) -> (M, P, D)
        return grouped[:, self.flip_indices].reshape(flipped.shape)


class DetectionTransforms:
    """Runs an albumentations pipeline on an image and its detection target (numpy)."""

    def __init__(self, steps: list, *, min_box_side: float = MIN_BOX_SIDE, seed: int = 0):
        self.min_box_side = min_box_side
        with warnings.catch_warnings():  # a test pipeline may have no geometric step: fine
            warnings.filterwarnings("ignore", message="Got processor for .*, but no transform to process it")
            self.pipeline = A.Compose(
            steps,
                bbox_params=A.BboxParams(format="pascal_voc", label_fields=["instance_index"], clip=True),
                keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                seed=seed,
            )

    def set_random_seed(self, seed: int) -> None:
        """Reset every random generator of the pipeline (reproducible augmentation)."""
        self.pipeline.set_random_seed(int(seed))

    def __call__(self, image: np.ndarray, target: dict) -> tuple[np.ndarray, dict]:
        boxes = np.asarray(target["gt_boxes"], np.float32).reshape(-1, 4)
        num = len(boxes)
        proposals = target.get("proposal_boxes")
        if proposals is not None:  # they ride along after the gt boxes; instance_index tells them apart
            boxes = np.concatenate((boxes, np.asarray(proposals, np.float32).reshape(-1, 4)))
        inputs: dict[str, Any] = {"image": image, "bboxes": boxes, "instance_index": np.arange(len(boxes))}
        masks = target.get("gt_masks")
        if masks is not None and num > 0:  # albumentations cannot stack zero masks
            inputs["masks"] = np.asarray(masks)
        kps = target.get("gt_keypoints")
        num_kp = 0 if kps is None else kps.shape[1]
        # (M, P, 3) -> (M*P, 3): x, y and the visibility riding along as an extra column
        inputs["keypoints"] = (np.zeros((0, 3), np.float32) if kps is None
                               else np.asarray(kps, np.float32).reshape(-1, 3))
        out = self.pipeline(**inputs)

        image_out = out["image"]
        h, w = image_out.shape[:2]
        index = np.asarray(out["instance_index"], np.int64)  # survivors of albumentations' box filter
        all_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        keep, new_boxes = index[index < num], all_boxes[index < num]
        sides_ok = ((new_boxes[:, 2] - new_boxes[:, 0]) >= self.min_box_side) & \
                   ((new_boxes[:, 3] - new_boxes[:, 1]) >= self.min_box_side)
        keep, new_boxes = keep[sides_ok], new_boxes[sides_ok]

        result = {k: v for k, v in target.items() if k not in ("gt_masks", "gt_keypoints")}
        result["gt_boxes"] = new_boxes
        if proposals is not None:
            result["proposal_boxes"] = all_boxes[index >= num]
        result["gt_classes"] = np.asarray(target["gt_classes"])[keep]
        if masks is not None:
            result["gt_masks"] = (np.asarray(out["masks"], np.uint8)[keep] if num > 0
                                  else np.zeros((0, h, w), np.uint8))
        if kps is not None:
            new_kps = np.asarray(out["keypoints"], np.float32).reshape(num, num_kp, 3)[keep]
            outside = (new_kps[..., 0] < 0) | (new_kps[..., 0] >= w) | (new_kps[..., 1] < 0) | (new_kps[..., 1] >= h)
            new_kps[..., 2][outside] = 0
            new_kps[new_kps[..., 2] == 0] = 0  # unlabeled keypoints sit at (0, 0, 0), as in COCO
            result["gt_keypoints"] = new_kps
        return image_out, result


def build_transforms(meta: DatasetMeta, *, train: bool, min_size: int | Sequence[int], max_size: int,
                     hflip_prob: float = 0.5, scale_jitter: tuple[float, float] | None = None,
                     color_jitter: float = 0.0, seed: int = 0) -> DetectionTransforms:
    """The detection pipeline for training (random) or testing (deterministic).

    ``min_size``: short-side length(s) in px (0 = keep the size); ``max_size``: cap on the long
    side (0 = none). ``hflip_prob``, ``scale_jitter`` and ``color_jitter`` only act when ``train``.
    """
    sizes = [int(min_size)] if np.isscalar(min_size) else [int(s) for s in min_size]
    if not sizes or any(s < 0 for s in sizes) or (0 in sizes and len(sizes) > 1):
        raise ValueError(f"min_size must be a positive int, a tuple of them, or 0 (no resize); got {min_size!r}")
    if max_size < 0:
        raise ValueError(f"max_size must be >= 0 (0 = no cap); got {max_size!r}")
    if not 0.0 <= hflip_prob <= 1.0:
        raise ValueError(f"hflip_prob must be in [0, 1]; got {hflip_prob!r}")
    if not 0.0 <= color_jitter <= 1.0:
        raise ValueError(f"color_jitter is a strength in [0, 1]; got {color_jitter!r}")
    if scale_jitter is not None and not (len(scale_jitter) == 2 and 0 < scale_jitter[0] <= scale_jitter[1]):
        raise ValueError(f"scale_jitter must be (lo, hi) with 0 < lo <= hi, or None; got {scale_jitter!r}")

    steps: list = []
    if sizes != [0]:
        steps.append(ResizeShortestEdge(sizes if train else [max(sizes)], max_size,
                                        tuple(scale_jitter) if (train and scale_jitter) else None))
    if train and hflip_prob > 0:
        steps.append(HorizontalFlipKeypointSwap(meta.flip_indices, p=hflip_prob))
    if train and color_jitter > 0:
        c = color_jitter
        steps.append(A.ColorJitter(brightness=0.4 * c, contrast=0.4 * c, saturation=0.4 * c, hue=0.1 * c, p=1.0))
    return DetectionTransforms(steps, seed=seed)

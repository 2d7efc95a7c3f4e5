"""Running a detector on images from disk, in batches or in tiles (tools/predict.py), and its
RPN alone (tools/compute_proposals.py --checkpoint).

Shape shorthand: N images in a batch, R predictions in one image, H x W an image on disk,
th x tw a tile.

``predict_batch`` runs N images (each through the test transforms, as in evaluation) in one
padded batch and returns predictions in each image's own frame; ``rpn_proposals`` does the same
for the proposals of a detector's RPN. ``predict_tiled`` cuts one
large image into overlapping tiles, runs them as batches, shifts each tile's predictions into the
image, drops those cut by an inner tile edge (the neighbouring tile, which overlaps it, sees
the whole object when the overlap is at least the object's size), and merges the rest by
class-wise NMS; masks are pasted into the image only for the detections that are kept.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from common.image_list import ImageList
from detection.fields import rescale_predictions

EDGE_MARGIN = 2.0  # pixels: a box this close to an inner tile edge was cut by it


@torch.no_grad()
def predict_batch(model: nn.Module, images_rgb: list[np.ndarray], transforms, device) -> list[dict[str, Tensor]]:
    """N (H, W, 3) uint8 RGB images -> N prediction dicts (``detection.fields`` names, CPU)
    in the frame of each image. ``transforms``: ``detection.data.build_transforms(train=False)``."""
    model.eval()
    batch = prepare_batch(model, images_rgb, transforms)
    predictions, _ = model(batch.to(device))
    # masks are pasted once, on the model's device, at the image's size (uint8), then copied
    return [{k: v.cpu() for k, v in rescale_predictions(p, size, image.shape[:2]).items()}
            for p, size, image in zip(predictions, batch.image_sizes, images_rgb)]


def prepare_batch(model: nn.Module, images_rgb: list[np.ndarray], transforms) -> ImageList:
    """N (H, W, 3) uint8 RGB images through the test transforms, padded into one batch."""
    empty = {"gt_boxes": np.zeros((0, 4), np.float32), "gt_classes": np.zeros((0,), np.int64)}
    tensors = []
    for image in images_rgb:
        resized, _ = transforms(image, dict(empty))
        tensors.append(torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1))  # HWC -> CHW
    return ImageList.from_tensors(tensors, model.backbone.size_divisibility, model.backbone.pixel_mean)


@torch.no_grad()
def rpn_proposals(model: nn.Module, images_rgb: list[np.ndarray], transforms, device
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """A Faster / Mask R-CNN's RPN proposals of N (H, W, 3) uint8 RGB images, as the detector
    makes them at test time (its ``model.rpn`` test-time top-k and NMS) -> N pairs ((R, 4) float32
    xyxy boxes in the pixels of the image, best first; (R,) float32 objectness probabilities)."""
    model.eval()
    batch = prepare_batch(model, images_rgb, transforms)
    out = []
    for p, size, image in zip(model.propose(batch.to(device)), batch.image_sizes, images_rgb):
        boxes = rescale_predictions({"pred_boxes": p["proposal_boxes"]}, size, image.shape[:2])["pred_boxes"]
        out.append((boxes.float().cpu().numpy(), p["objectness_logits"].float().sigmoid().cpu().numpy()))
    return out


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) windows of side ``tile`` covering an image, neighbours sharing ``overlap``
    pixels; the last row and column are moved back to end at the image's edge."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"tiles need --tile > 0 and 0 <= --overlap < --tile, got tile {tile}, overlap {overlap}")
    step = tile - overlap

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        out = list(range(0, length - tile, step))
        return out + [length - tile]

    return [(y, x, min(y + tile, height), min(x + tile, width)) for y in starts(height) for x in starts(width)]


def _cut_by_inner_edge(boxes: Tensor, window: tuple[int, int, int, int], size: tuple[int, int]) -> Tensor:
    """(R,) bool: boxes (image frame) touching an edge of ``window`` that is not the image's edge."""
    y0, x0, y1, x1 = window
    h, w = size
    m = EDGE_MARGIN
    cut = torch.zeros(len(boxes), dtype=torch.bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + m
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + m
    if x1 < w:
        cut |= boxes[:, 2] >= x1 - m
    if y1 < h:
        cut |= boxes[:, 3] >= y1 - m
    return cut


@torch.no_grad()
def predict_tiled(model: nn.Module, image_rgb: np.ndarray, transforms, device, tile: int, overlap: int,
                  nms_thresh: float = 0.5, batch_size: int = 4, max_detections: int = 300) -> dict[str, Tensor]:
    """One (H, W, 3) uint8 RGB image in ``tile`` x ``tile`` windows overlapping by ``overlap``
    -> one prediction dict in the image's frame (see the module docstring), at most
    ``max_detections`` (by score)."""
    h, w = image_rgb.shape[:2]
    windows = tile_windows(h, w, tile, overlap)
    parts: list[tuple[dict, tuple[int, int, int, int]]] = []
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        crops = [np.ascontiguousarray(image_rgb[y0:y1, x0:x1]) for y0, x0, y1, x1 in chunk]
        parts += zip(predict_batch(model, crops, transforms, device), chunk)
    boxes, scores, classes, keypoints, owners = [], [], [], [], []
    for j, (pred, (y0, x0, y1, x1)) in enumerate(parts):
        shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        b = pred["pred_boxes"] + shift                                      # tile -> image frame
        keep = ~_cut_by_inner_edge(b, (y0, x0, y1, x1), (h, w))
        boxes.append(b[keep])
        scores.append(pred["scores"][keep])
        classes.append(pred["pred_classes"][keep])
        owners.append(torch.stack((torch.full((int(keep.sum()),), j), keep.nonzero().squeeze(1)), dim=1))
        if "pred_keypoints" in pred:
            kp = pred["pred_keypoints"][keep].clone()
            kp[..., 0] += x0
            kp[..., 1] += y0
            keypoints.append(kp)
    boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
    owners = torch.cat(owners)                                              # (R, 2) tile index, row in it
    keep = batched_nms(boxes, scores, classes, nms_thresh)[:max_detections]
    out = {"pred_boxes": boxes[keep], "scores": scores[keep], "pred_classes": classes[keep]}
    if keypoints:
        out["pred_keypoints"] = torch.cat(keypoints)[keep]
    if "pred_masks" in parts[0][0]:
        masks = torch.zeros((len(keep), h, w), dtype=parts[0][0]["pred_masks"].dtype)  # (R, H, W)
        for r, (j, row) in enumerate(owners[keep].tolist()):
            y0, x0, y1, x1 = parts[j][1]
            masks[r, y0:y1, x0:x1] = parts[j][0]["pred_masks"][row]
        out["pred_masks"] = masks
    return out

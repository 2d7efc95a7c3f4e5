"""Drawing a detector's predictions on images from disk (OpenCV, through common.visual).

Shape shorthand: R predictions in one image, P keypoints per instance.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from common.image_list import ImageList
from common.visual import draw_instances
from detection.data import DatasetMeta
from detection.fields import rescale_predictions


def prediction_to_numpy(pred: dict, score_thresh: float) -> dict:
    """Keep predictions scoring at least ``score_thresh``; masks binarised at 0.5."""
    keep = pred["scores"] >= score_thresh
    out = {"boxes": pred["pred_boxes"][keep].numpy(), "labels": pred["pred_classes"][keep].numpy(),
           "scores": pred["scores"][keep].numpy()}
    if "pred_masks" in pred:
        out["masks"] = (pred["pred_masks"][keep] >= 0.5).numpy().astype(np.uint8)  # float or 0/1
    if "pred_keypoints" in pred:
        out["keypoints"] = pred["pred_keypoints"][keep].numpy()
    return out


def draw_prediction(image_rgb: np.ndarray, pred: dict, meta: DatasetMeta, score_thresh: float = 0.5) -> np.ndarray:
    """``image_rgb`` (H, W, 3) uint8 with ``pred`` (fields of detection.fields, frame of the image)
    drawn on it: translucent masks, boxes with class names and scores, keypoints with skeleton."""
    p = prediction_to_numpy(pred, score_thresh)
    return draw_instances(image_rgb, boxes=p["boxes"], labels=p["labels"], scores=p["scores"],
                          masks=p.get("masks"), keypoints=p.get("keypoints"),
                          class_names=meta.class_names, skeleton=meta.skeleton or None,
                          keypoint_threshold=0.0)


@torch.no_grad()
def predict_image(model: nn.Module, image_rgb: np.ndarray, transforms, device,
                  proposal_boxes: np.ndarray | None = None) -> dict:
    """Run ``model`` (eval mode) on one (H, W, 3) uint8 RGB image; predictions in the image's frame.

    ``transforms`` is the test-time pipeline (``detection.data.build_transforms(train=False)``);
    ``proposal_boxes`` (R, 4) xyxy in the image's frame: precomputed proposals (Fast R-CNN).
    """
    model.eval()
    h, w = image_rgb.shape[:2]
    target = {"gt_boxes": np.zeros((0, 4), np.float32), "gt_classes": np.zeros((0,), np.int64)}
    if proposal_boxes is not None:
        target["proposal_boxes"] = proposal_boxes
    resized, target = transforms(image_rgb, target)
    tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)  # HWC -> CHW
    images = ImageList.from_tensors([tensor], model.backbone.size_divisibility, model.backbone.pixel_mean)
    inputs = None if proposal_boxes is None else [{"proposal_boxes": torch.as_tensor(target["proposal_boxes"])}]
    predictions, _ = model(images.to(device), inputs)
    pred = rescale_predictions(predictions[0], images.image_sizes[0], (h, w))
    return {k: v.cpu() for k, v in pred.items()}


def draw_predictions(model: nn.Module, dataset, device, out_dir: str | Path, count: int = 8,
                     score_thresh: float = 0.5) -> list[Path]:
    """Draw predictions on the first ``count`` images of a ``CocoDetection`` (read from disk)."""
    from detection.data import read_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in dataset.ids[:count]:
        info = dataset.coco.imgs[image_id]
        image = read_image(dataset.image_root / info["file_name"], image_id)
        proposals = getattr(dataset, "proposals", None)
        proposals = None if proposals is None else proposals[image_id]["boxes"]
        pred = predict_image(model, image, dataset.transforms, device, proposals)
        drawn = draw_prediction(image, pred, dataset.meta, score_thresh)
        path = out_dir / f"{Path(info['file_name']).stem}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        written.append(path)
    return written

"""Metrics on hand-made confusion matrices and label maps."""
import json
import math

import cv2
import numpy as np
import pytest
import torch

from segmentation.metrics import (SemSegEvaluator, boundary_band, boundary_stats, confusion_matrix,
                                  segmentation_metrics)


def test_confusion_matrix_ignores_255():
    gt = torch.tensor([[0, 1, 1], [2, 255, 2]])
    pred = torch.tensor([[0, 1, 2], [2, 0, 0]])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 1]]
    with pytest.raises(ValueError, match="ground-truth label 5 is outside 0..2"):
        confusion_matrix(pred, torch.tensor([[0, 1, 5], [2, 255, 2]]), 3)


def test_metrics_from_hand_made_matrix():
    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # class 2 absent from gt and predictions
    m = segmentation_metrics(cm, ["bg", "a", "b"])
    iou0, iou1 = 8 / (10 + 9 - 8), 3 / (4 + 5 - 3)
    assert m["mIoU"] == pytest.approx(100 * (iou0 + iou1) / 2)
    assert m["pixel_acc"] == pytest.approx(100 * 11 / 14)
    assert m["fwIoU"] == pytest.approx(100 * (10 / 14 * iou0 + 4 / 14 * iou1))
    assert m["per_class_IoU"]["a"] == pytest.approx(50.0) and math.isnan(m["per_class_IoU"]["b"])


def test_boundary_band_is_three_pixels_and_ignores_image_frame():
    mask = np.zeros((20, 20), bool)
    mask[2:18, 2:18] = True
    band = boundary_band(mask, 3)
    assert band.sum() == 16 * 16 - 10 * 10          # a 3-pixel ring
    full = np.ones((10, 10), bool)
    assert boundary_band(full, 3).sum() == 0         # the image frame is no contour


def test_boundary_iou_perfect_and_shifted():
    gt = np.zeros((32, 32), np.int64)
    gt[8:24, 8:24] = 1
    inter, union = boundary_stats(gt, gt, 2)
    assert (inter == union).all() and union[1] == 16 * 16 - 10 * 10
    shifted = np.roll(gt, 2, axis=1)
    inter, union = boundary_stats(shifted, gt, 2)
    assert 0 < inter[1] < union[1]
    # ignored pixels count for neither side
    gt_ign = gt.copy()
    gt_ign[:, 16:] = 255
    i2, u2 = boundary_stats(gt, gt_ign, 2)
    assert i2[1] == u2[1] < union[1]


def test_evaluator_writes_percent_metrics_and_confusion_png(tmp_path):
    ev = SemSegEvaluator(3, ["background", "circle", "square"])
    gt = torch.zeros(16, 16, dtype=torch.int64)
    gt[4:12, 4:12] = 1
    pred = gt.clone()
    pred[4:12, 4:6] = 2
    ev.process([{"sem_seg": pred}], [{"sem_seg": gt}])
    m = ev.save(tmp_path)
    assert set(m) == {"mIoU", "pixel_acc", "fwIoU", "boundary_IoU", "per_class_IoU"}
    assert m["per_class_IoU"]["circle"] == pytest.approx(100 * 48 / 64)
    assert m["per_class_IoU"]["square"] == 0.0
    assert m["pixel_acc"] == pytest.approx(100 * (256 - 16) / 256)
    assert 0 < m["boundary_IoU"] < 100
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["mIoU"] == pytest.approx(m["mIoU"])
    ev2 = SemSegEvaluator(4, ["background", "circle", "square", "star"])  # "star" never appears
    ev2.process([{"sem_seg": pred}], [{"sem_seg": gt}])
    assert json.loads(json.dumps(ev2.save(tmp_path / "b")))["per_class_IoU"]["star"] != 0.0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["per_class_IoU"]["star"] is None
    img = cv2.imread(str(tmp_path / "confusion_matrix.png"))
    assert img is not None and img.shape[0] > 3 * 48

import pytest
import torch

from detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match


def test_thresholds():
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.0],
                        [0.2, 0.6, 0.35, 0.0]])
    m = match(iou, high=0.7, low=0.3)
    assert m.tolist() == [0, BETWEEN_THRESHOLDS, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD]
    assert BELOW_LOW_THRESHOLD == -1 and BETWEEN_THRESHOLDS == -2


def test_low_quality_matches_rescue_every_gt():
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.0],
                        [0.2, 0.6, 0.35, 0.0]])
    m = match(iou, high=0.7, low=0.3, allow_low_quality_matches=True)
    assert m.tolist() == [0, 1, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD]


def test_no_gt_means_background():
    assert match(torch.zeros(0, 3), 0.5, 0.5).tolist() == [-1, -1, -1]


def test_bad_thresholds():
    with pytest.raises(ValueError, match="low <= high"):
        match(torch.zeros(1, 1), high=0.3, low=0.7)

"""R-CNN's box-regression targets on hand-made boxes, the IoU >= 0.6 selection and the ridge solve."""
import math

import torch

from detection.bbox_regression import RCNN_BOX_CODER, fit_ridge, regression_samples, regression_targets


def test_targets_by_hand():
    proposals = torch.tensor([[0.0, 0.0, 10.0, 20.0], [10.0, 10.0, 30.0, 30.0]])
    gt = torch.tensor([[2.0, 4.0, 12.0, 24.0], [5.0, 10.0, 45.0, 20.0]])
    t = regression_targets(proposals, gt)
    # 1: same size, centre (5, 10) -> (7, 14): t_x = 2 / 10, t_y = 4 / 20
    # 2: centre (20, 20) -> (25, 15), w 20 -> 40, h 20 -> 10
    want = torch.tensor([[0.2, 0.2, 0.0, 0.0], [5 / 20, -5 / 20, math.log(2), math.log(0.5)]])
    torch.testing.assert_close(t, want)
    torch.testing.assert_close(RCNN_BOX_CODER.decode(t, proposals), gt)


def test_samples_are_proposals_with_iou_at_least_0_6_paired_with_their_best_gt():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    classes = torch.tensor([3, 1])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 12.0],   # IoU 100/120 = 0.83 with gt 0
                              [0.0, 0.0, 10.0, 17.0],   # IoU 100/170 = 0.59: too low
                              [20.0, 20.0, 40.0, 44.0],  # IoU 400/480 = 0.83 with gt 1
                              [50.0, 50.0, 60.0, 60.0]])  # no overlap
    idx, targets, cls = regression_samples(proposals, gt, classes, 0.6)
    assert idx.tolist() == [0, 2] and cls.tolist() == [3, 1]
    torch.testing.assert_close(targets, regression_targets(proposals[[0, 2]], gt))
    idx, targets, cls = regression_samples(proposals, gt[:0], classes[:0], 0.6)
    assert idx.numel() == 0 and targets.shape == (0, 4) and cls.numel() == 0


def test_ridge_recovers_a_linear_map_and_shrinks_with_lambda():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) + 3.0  # off-centre: the unpenalised bias absorbs it
    true_w, true_b = torch.randn(6, 4, generator=g), torch.tensor([1.0, -2.0, 0.5, 0.0])
    y = x @ true_w + true_b
    w, b = fit_ridge(x, y, lam=1e-6)
    torch.testing.assert_close(w, true_w, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b, true_b, atol=1e-3, rtol=1e-3)
    w_big, b_big = fit_ridge(x, y, lam=1e6)
    assert w_big.norm() < 0.1 * true_w.norm()
    torch.testing.assert_close(b_big, y.mean(0), atol=0.1, rtol=0.05)  # all but the mean is shrunk away

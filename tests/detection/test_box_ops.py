import torch

from detection.box_ops import nonempty, pairwise_iou


def test_iou():
    a = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15]])
    b = torch.tensor([[0.0, 0, 10, 10], [0, 0, 5, 5], [20, 20, 30, 30]])
    iou = pairwise_iou(a, b)
    assert iou.shape == (2, 3)
    torch.testing.assert_close(iou[0], torch.tensor([1.0, 0.25, 0.0]))
    torch.testing.assert_close(iou[1, 0], torch.tensor(25.0 / 175.0))
    assert pairwise_iou(a[:0], b).shape == (0, 3)
    assert pairwise_iou(a, b[:0]).shape == (2, 0)


def test_iou_of_degenerate_boxes_is_zero_not_nan():
    z = torch.tensor([[3.0, 3, 3, 3]])
    assert pairwise_iou(z, z).item() == 0.0


def test_nonempty_drops_zero_width_boxes():
    assert nonempty(torch.tensor([[0.0, 0, 3, 3], [0, 0, 2, 1]]), 1.0).tolist() == [True, False]
    assert nonempty(torch.tensor([[0.0, 0, 1, 1], [0, 0, 0, 1]])).tolist() == [True, False]

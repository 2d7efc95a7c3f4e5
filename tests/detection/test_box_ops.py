import torch

from detection.box_ops import box_area, clip_boxes, nonempty, pairwise_iou, remove_small_boxes


def test_area_and_iou():
    a = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15]])
    b = torch.tensor([[0.0, 0, 10, 10], [0, 0, 5, 5], [20, 20, 30, 30]])
    assert box_area(a).tolist() == [100.0, 100.0]
    assert box_area(torch.tensor([[5.0, 5, 1, 1]])).tolist() == [0.0]
    iou = pairwise_iou(a, b)
    assert iou.shape == (2, 3)
    torch.testing.assert_close(iou[0], torch.tensor([1.0, 0.25, 0.0]))
    torch.testing.assert_close(iou[1, 0], torch.tensor(25.0 / 175.0))
    assert pairwise_iou(a[:0], b).shape == (0, 3)
    assert pairwise_iou(a, b[:0]).shape == (2, 0)


def test_iou_of_degenerate_boxes_is_zero_not_nan():
    z = torch.tensor([[3.0, 3, 3, 3]])
    assert pairwise_iou(z, z).item() == 0.0


def test_clip_and_small():
    boxes = torch.tensor([[-5.0, -2, 50, 30], [10, 10, 12, 11]])
    clipped = clip_boxes(boxes, (20, 40))
    assert clipped.tolist() == [[0.0, 0.0, 40.0, 20.0], [10.0, 10.0, 12.0, 11.0]]
    assert remove_small_boxes(boxes, 2.0).tolist() == [0]
    assert nonempty(torch.tensor([[0.0, 0, 1, 1], [0, 0, 0, 1]])).tolist() == [True, False]

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from detection.poolers import RoIPooler, assign_levels


def test_level_mapping_follows_fpn_equation():
    boxes = torch.tensor([[0.0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 10, 10],
                          [0, 0, 2000, 2000]])
    # levels 2..5 -> index 0..3; 224 -> level 4, 112 -> 3, 448 -> 5, tiny -> 2, huge -> 5
    assert assign_levels(boxes, 2, 5).tolist() == [2, 1, 3, 0, 3]


def test_single_level_matches_torchvision():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    boxes = [torch.tensor([[0.0, 0, 30, 30]]), torch.tensor([[8.0, 4, 60, 40], [1, 1, 9, 9]])]
    pooler = RoIPooler(7, [0.25], sampling_ratio=2)
    out = pooler([x], boxes)
    assert out.shape == (3, 4, 7, 7)
    ref = tv_roi_align(x, boxes, (7, 7), 0.25, 2, True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    pool = RoIPooler(7, [0.25], kind="pool")([x], boxes)
    assert pool.shape == (3, 4, 7, 7)


def test_multilevel_routes_boxes_to_their_level():
    feats = [torch.full((1, 2, 32, 32), 1.0), torch.full((1, 2, 16, 16), 2.0),
             torch.full((1, 2, 8, 8), 3.0), torch.full((1, 2, 4, 4), 4.0)]
    pooler = RoIPooler(2, [1 / 4, 1 / 8, 1 / 16, 1 / 32], sampling_ratio=2)
    boxes = [torch.tensor([[0.0, 0, 20, 20], [0, 0, 120, 120], [0, 0, 100, 100], [0, 0, 127, 127]])]
    out = pooler(feats, boxes)
    # floor(4 + log2(s / 224)): 20 -> p2, 120 -> p3, 100 -> p2 (2.84), 127 -> p3; constant maps pool
    # to their own value
    assert out[:, 0, 0, 0].tolist() == [1.0, 2.0, 1.0, 2.0]
    empty = pooler(feats, [torch.zeros(0, 4)])
    assert empty.shape == (0, 2, 2, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="'align' or 'pool'"):
        RoIPooler(7, [0.25], kind="max")
    with pytest.raises(ValueError, match="consecutive FPN levels"):
        RoIPooler(7, [1 / 4, 1 / 16])
    with pytest.raises(ValueError, match="2 scales but got 1 feature maps"):
        RoIPooler(7, [1 / 4, 1 / 8])([torch.zeros(1, 1, 4, 4)], [torch.zeros(0, 4)])

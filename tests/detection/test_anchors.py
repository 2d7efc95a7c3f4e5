import pytest
import torch

from detection.anchors import AnchorGenerator, base_anchors


def test_base_anchors_area_and_ratio():
    a = base_anchors((32.0,), (0.5, 1.0, 2.0))
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    torch.testing.assert_close(w * h, torch.full((3,), 1024.0))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close((a[:, :2] + a[:, 2:]) / 2, torch.zeros(3, 2))


def test_grid_order_and_cache():
    gen = AnchorGenerator(((8.0,), (16.0,)), ((1.0, 2.0),), strides=(4, 8))
    f = [torch.zeros(1, 3, 2, 3), torch.zeros(1, 3, 1, 2)]
    out = gen(f)
    assert [o.shape for o in out] == [(2 * 3 * 2, 4), (1 * 2 * 2, 4)]
    assert gen.num_anchors_per_location == [2, 2]
    centres = (out[0][:, :2] + out[0][:, 2:]) / 2
    # ordered (H, W, A): anchors 2,3 sit at column 1 (x = 4), anchors 6.. at row 1 (y = 4)
    assert centres[2].tolist() == [4.0, 0.0] and centres[6].tolist() == [0.0, 4.0]
    assert gen(f)[0] is out[0]  # cached


def test_level_count_mismatch_is_a_sentence():
    with pytest.raises(ValueError, match="one entry per level"):
        AnchorGenerator(((8.0,), (16.0,)), ((1.0,), (1.0,), (1.0,)), strides=(4, 8))
    gen = AnchorGenerator(((8.0,),), ((1.0,),), strides=(4,))
    with pytest.raises(ValueError, match="has 1 levels but got 2 feature maps"):
        gen([torch.zeros(1, 1, 2, 2)] * 2)

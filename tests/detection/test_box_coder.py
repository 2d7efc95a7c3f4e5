import math

import torch

from detection.box_coder import BoxCoder


def test_encode_known_values_and_roundtrip():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0, 10, 20]])
    box = torch.tensor([[5.0, 0, 15, 40]])  # shifted by half a width, twice as tall
    d = coder.encode(box, ref)
    torch.testing.assert_close(d, torch.tensor([[10 * 0.5, 10 * 0.5, 0.0, 5 * math.log(2.0)]]))
    torch.testing.assert_close(coder.decode(d, ref), box)


def test_decode_class_specific_and_clamp():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    ref = torch.tensor([[0.0, 0, 16, 16], [10, 10, 20, 30]])
    boxes = torch.tensor([[2.0, 3, 9, 14], [11, 12, 25, 29]])
    d = coder.encode(boxes, ref)
    # two "classes": the same deltas twice -> (R, 8)
    out = coder.decode(torch.cat((d, d), dim=1), ref)
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[:, :4], boxes)
    torch.testing.assert_close(out[:, 4:], boxes)
    huge = coder.decode(torch.tensor([[0.0, 0, 100, 100]]), ref[:1])
    w = (huge[0, 2] - huge[0, 0]).item()
    assert math.isfinite(w) and abs(w - 1000.0) < 1e-2  # 16 * exp(log(1000/16))

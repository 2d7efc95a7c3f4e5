"""detection.roi_ops against torchvision.ops (the reference kernels)."""
import pytest
import torch
import torchvision

from detection import roi_ops
from detection.roi_ops import roi_align, roi_pool


def make_rois(n_images: int, h: int, w: int, gen: torch.Generator, r: int = 60) -> torch.Tensor:
    """(R, 5) boxes in feature pixels: inside, partly and fully outside the map, tiny (< 1 px,
    zero-size), huge (several times the map), reversed (x2 < x1), and on exact pixel edges."""
    ctr = torch.rand(r, 2, generator=gen) * torch.tensor([w + 8.0, h + 8.0]) - 4  # some centres outside
    side = torch.rand(r, 2, generator=gen) * torch.tensor([w, h]) * 0.8
    side[: r // 6] *= 0.05  # tiny
    side[r // 6: r // 3] *= 5  # huge
    boxes = torch.cat([ctr - side / 2, ctr + side / 2], dim=1)
    special = torch.tensor([
        [0.0, 0.0, w, h],  # the whole map
        [-1.0, -1.0, w, h],  # exactly on the -1 and H/W limits
        [w + 2.0, h + 2.0, w + 9.0, h + 9.0],  # fully outside
        [-9.0, -9.0, -2.0, -2.0],  # fully outside on the other side
        [3.0, 4.0, 3.0, 4.0],  # zero size
        [5.0, 5.0, 2.0, 3.0],  # reversed
        [1.0, 2.0, 8.0, 9.0],  # integer corners
    ])
    boxes = torch.cat([boxes, special])
    batch = torch.randint(0, n_images, (boxes.shape[0], 1), generator=gen).float()
    return torch.cat([batch, boxes], dim=1)


def both(x, rois, *args):
    """Our and torchvision's output and input-gradient for one random upstream gradient."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, ref = roi_align(xa, rois, *args), torchvision.ops.roi_align(xb, rois, *args)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
    ours.backward(grad)
    ref.backward(grad)
    return ours, ref, xa.grad, xb.grad


@pytest.mark.parametrize("sampling_ratio", [2, 1, 0, -1])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("output_size", [7, 14, (5, 3)])
def test_roi_align_matches_torchvision(sampling_ratio, aligned, output_size):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 13, 17, generator=gen)
    rois = make_rois(3, 13 * 2, 17 * 2, gen)  # boxes in image pixels, map at stride 2
    ours, ref, g_ours, g_ref = both(x, rois, output_size, 0.5, sampling_ratio, aligned)
    assert ours.shape == ref.shape
    assert ref.abs().max() > 0.1 and g_ref.abs().max() > 0.1  # the case is not trivially zero
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("boxes", [
    [[0, 3.0, 4, 9, 8], [1, 30, 2, 34.5, 9], [1, 30, 2, 34.5, 9]],  # few pixels: compact X path
    [[0, -2.0, -2, 42, 42], [1, 0, 0, 40, 40]],  # whole maps: dense X path
])
def test_few_small_and_whole_map_boxes(boxes):
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(7))
    ours, ref, g_ours, g_ref = both(x, torch.tensor(boxes), 7, 1.0, 0, False)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=0)


def test_fully_outside_box_gives_zeros_and_inside_box_is_not_zero():
    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0, 20.0, 20, 30, 30], [0, 1, 1, 6, 6]])
    out = roi_align(x, rois, 2, 1.0, 2)
    assert out[0].abs().max() == 0
    assert out[1].abs().max() > 0


def test_samples_exactly_on_the_minus_one_and_size_limits_count():
    # one sample per bin at -1, 0, ..., 8 along both axes of an 8x8 map: -1 and 8 still count
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    rois = torch.tensor([[0, -1.5, -1.5, 8.5, 8.5]])
    ref = torchvision.ops.roi_align(x, rois, 10, 1.0, 1)
    assert ref[0, :, 0, 0].abs().min() > 0 and ref[0, :, -1, -1].abs().min() > 0
    torch.testing.assert_close(roi_align(x, rois, 10, 1.0, 1), ref, atol=1e-5, rtol=0)


def test_constant_map_pools_to_the_constant():
    x = torch.full((1, 1, 10, 10), 3.0)
    out = roi_align(x, torch.tensor([[0, 1.3, 2.2, 7.9, 8.4]]), 4, 1.0, 2, aligned=True)
    torch.testing.assert_close(out, torch.full((1, 1, 4, 4), 3.0))


def test_list_of_boxes_matches_rois_tensor():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 12, 12, generator=gen)
    per_image = [torch.tensor([[1.0, 1, 9, 7], [0, 0, 12, 12]]), torch.tensor([[2.0, 3, 5, 11]])]
    rois = torch.tensor([[0, 1.0, 1, 9, 7], [0, 0, 0, 12, 12], [1, 2, 3, 5, 11]])
    ours = roi_align(x, per_image, 7, 1.0, 2)
    torch.testing.assert_close(ours, roi_align(x, rois, 7, 1.0, 2))
    torch.testing.assert_close(ours, torchvision.ops.roi_align(x, per_image, 7, 1.0, 2), atol=1e-4, rtol=0)


def test_empty_boxes():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5), (7, 5), 1.0, 2)
    assert out.shape == (0, 3, 7, 5)
    out.sum().backward()
    assert x.grad.shape == x.shape and x.grad.abs().max() == 0
    assert roi_align(x, [torch.zeros(0, 4), torch.zeros(0, 4)], 7, 1.0, 0).shape == (0, 3, 7, 7)
    assert roi_pool(x, torch.zeros(0, 5), 7).shape == (0, 3, 7, 7)


def test_channels_last_input_and_non_contiguous_grad():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 10, 11, generator=gen)
    rois = make_rois(2, 10, 11, gen, r=12)
    ref = torchvision.ops.roi_align(x, rois, 7, 1.0, 2)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    ours = roi_align(xc, rois, 7, 1.0, 2)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    grad = torch.randn(7, 7, 6, rois.shape[0], generator=gen).permute(3, 2, 0, 1)  # non-contiguous
    ours.backward(grad)
    xr = x.clone().requires_grad_()
    torchvision.ops.roi_align(xr, rois, 7, 1.0, 2).backward(grad)
    torch.testing.assert_close(xc.grad, xr.grad, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampling_ratio,aligned", [(2, False), (0, True)])
def test_gradcheck_float64(sampling_ratio, aligned):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.6, 4.7, 5.2], [1, -1.5, 2.1, 3.3, 9.0], [1, 2.2, 1.1, 2.9, 1.4]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (3, 2), 1.0, sampling_ratio, aligned), (x,))
    ref = torchvision.ops.roi_align(x, rois, (3, 2), 1.0, sampling_ratio, aligned)
    torch.testing.assert_close(roi_align(x, rois, (3, 2), 1.0, sampling_ratio, aligned), ref)


def test_roi_pool_matches_torchvision():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    rois = make_rois(2, 32, 32, gen, r=20)
    torch.testing.assert_close(roi_pool(x, rois, 7, 0.5), torchvision.ops.roi_pool(x, rois, 7, 0.5))
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    torch.testing.assert_close(roi_pool(x, per_image, (3, 5), 0.5),
                               torchvision.ops.roi_pool(x, per_image, (3, 5), 0.5))


def test_unsupported_cases_fall_back_to_torchvision(monkeypatch):
    calls = []
    monkeypatch.setattr(torchvision.ops, "roi_align", lambda *a: calls.append(a) or "torchvision")
    x = torch.randn(1, 2, 8, 8)
    box = torch.tensor([[0, 1.0, 1, 5.5, 30]])
    assert roi_align(x.to(torch.bfloat16), box, 7) == "torchvision"
    assert len(calls) == 1
    monkeypatch.setattr(roi_ops, "MAX_ENTRIES", 7 * 7 * 4)  # this box's adaptive grid needs more
    assert roi_align(x, box, 7, 1.0, 0) == "torchvision"
    assert len(calls) == 2
    assert roi_align(x, box, 7, 1.0, 1).shape == (1, 2, 7, 7)  # 1 sample per bin still fits


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"box 1 has batch index 2, but the input holds 2 images"):
        roi_align(x, torch.tensor([[0, 1.0, 1, 4, 4], [2, 1, 1, 4, 4]]), 7)
    with pytest.raises(ValueError, match=r"box 0 has a non-finite value: \[0.0, nan"):
        roi_align(x, torch.tensor([[0, float("nan"), 1, 4, 4]]), 7)
    with pytest.raises(ValueError, match=r"boxes must be \(R, 5\).*got shape \(3, 4\)"):
        roi_align(x, torch.zeros(3, 4), 7)
    with pytest.raises(ValueError, match=r"boxes\[1\] must be a \(R_i, 4\) xyxy tensor, got \(2, 5\)"):
        roi_pool(x, [torch.zeros(1, 4), torch.zeros(2, 5)], 7)
    with pytest.raises(ValueError, match=r"got a list of 1 box tensors for 2 images"):
        roi_align(x, [torch.zeros(1, 4)], 7)
    with pytest.raises(ValueError, match=r"output_size must be a positive int or a pair of them, got 0"):
        roi_align(x, torch.zeros(0, 5), 0)
    with pytest.raises(ValueError, match=r"input must be a \(N, C, H, W\) tensor, got \(3, 8, 8\)"):
        roi_align(x[0], torch.zeros(0, 5), 7)


def test_few_boxes_on_a_large_map_cost_what_the_boxes_touch(monkeypatch):
    """A few boxes on a 4 x 600 x 900 map: the sparse path sorts the touched pixels instead of
    counting over all N*H*W (no full-size bincount), with torchvision's result and gradient."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 2, 600, 900, generator=gen)
    rois = torch.tensor([[0, 10.0, 20, 60, 90], [3, 500, 400, 900, 600], [1, 0, 0, 30, 30]])
    real = torch.bincount

    def bincount(t, *args, minlength=0, **kwargs):
        assert minlength < x[0, 0].numel(), "a bincount over the whole map"
        return real(t, *args, minlength=minlength, **kwargs)

    monkeypatch.setattr(torch, "bincount", bincount)
    ours, ref, g_ours, g_ref = both(x, rois, 14, 1.0, 0, True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)

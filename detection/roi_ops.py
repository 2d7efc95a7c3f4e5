"""RoIAlign (Mask R-CNN) and RoIPool (Fast R-CNN): pool a fixed PH x PW grid of features per box.

Shape letters: N images, C channels, H x W feature map, R RoIs, PH x PW output grid,
B = R*PH*PW output bins, E nonzero (bin, pixel) weights, P = N*H*W feature pixels.

`roi_align` has exactly the semantics of `torchvision.ops.roi_align`, which stays the reference
in tests/detection/test_roi_ops.py. On CPU it runs a faster path built on one observation:
RoIAlign is linear in the features. Each output bin is a weighted sum of the input pixels its
bilinear samples touch, so the whole op is a sparse matrix W (B x P) applied to the features laid
out channels-last, X (P, C):

    forward:   Y = W @ X       (B, C)  -> (R, C, PH, PW)
    backward: dX = W^T @ dY    (P, C)  -> (N, C, H, W)

Both products run as `F.embedding_bag(mode="sum", per_sample_weights=...)`, a multi-threaded
weighted gather-sum (for W^T the entries are sorted by pixel first). torchvision's CPU kernel does
the same sums one channel at a time on one thread; its backward is a serial scatter, which is
what dominates a CPU Mask R-CNN training step.

W is built vectorised over RoIs: a sample's bilinear weight factors into a y part and an x part,
so per RoI we build a dense y-weight matrix (PH, H) and x-weight matrix (PW, W) by scatter-adding
the samples' corner weights (which also merges samples that share a pixel), keep their nonzero
columns, and take the outer product per bin.

Which path runs:
- fast path: CPU tensors of dtype float32/float64, any `sampling_ratio` (including the adaptive
  grid, `sampling_ratio <= 0`), `aligned` True or False, R = 0 included;
- `torchvision.ops.roi_align`: every other device (CUDA, ...) or dtype (half, bfloat16,
  quantized), and calls whose W would take more than `MAX_ENTRIES` (bin, pixel) slots, which
  only happens with the adaptive grid on boxes of hundreds of feature pixels (torchvision is
  as slow there, but needs no memory for W).
`roi_pool` always calls `torchvision.ops.roi_pool` (Fast R-CNN only; not on our hot path).

Sample-point rules copied from torchvision's kernel, per axis (y shown; x alike):
    start = box_y1 * spatial_scale - (0.5 if aligned else 0);  size = (y2 - y1) * scale
    size  = max(size, 1) unless aligned;  bin = size / PH;  grid = sampling_ratio or ceil(bin)
    y     = start + ph * bin + (iy + 0.5) * bin / grid                 for iy < grid
    y < -1 or y > H: the sample contributes 0;  y clamped to [0, H - 1];  bilinear weights;
    a bin averages its grid_h * grid_w samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.ops
from torch import Tensor
from torch.autograd.function import once_differentiable

# Calls whose padded W (or sample list) would exceed this many slots go to torchvision
# (about 20 bytes a slot while W is built; a typical box head call needs ~0.4M).
MAX_ENTRIES = 2**24

_FAST_DTYPES = (torch.float32, torch.float64)


def roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """Average-pool a PH x PW grid of bilinear samples inside each box (Mask R-CNN RoIAlign).

    Args:
        input: (N, C, H, W) features.
        boxes: (R, 5) rows ``[batch_idx, x1, y1, x2, y2]`` or a list of N (R_i, 4) xyxy tensors,
            in the coordinate frame that ``spatial_scale`` maps onto the feature map.
        output_size: PH or (PH, PW).
        spatial_scale: feature pixels per box unit (1 / stride).
        sampling_ratio: samples per bin side; <= 0 means ceil(bin size) per RoI (adaptive).
        aligned: shift boxes by -0.5 feature pixel (detectron2's RoIAlignV2).
    Returns:
        (R, C, PH, PW). Differentiable w.r.t. ``input`` (not ``boxes``).
    """
    ph, pw = _check_output_size("roi_align", output_size)
    rois = _as_rois("roi_align", input, boxes)
    fast = input.device.type == "cpu" and input.dtype in _FAST_DTYPES and not input.is_quantized
    n, _, h, w = input.shape
    weights = _sparse_weights(rois, n, h, w, ph, pw, float(spatial_scale), int(sampling_ratio),
                              bool(aligned), input.dtype) if fast else None
    if weights is None:
        return torchvision.ops.roi_align(input, rois, (ph, pw), spatial_scale, sampling_ratio, aligned)
    return _RoIAlignFunction.apply(input, ph, pw, *weights)


def roi_pool(input: Tensor, boxes: Tensor | list[Tensor], output_size: int | tuple[int, int],
             spatial_scale: float = 1.0) -> Tensor:
    """Max-pool each box over a PH x PW grid of integer bins (Fast R-CNN RoIPool).

    Args and shapes as `roi_align`: input (N, C, H, W), boxes (R, 5) or list of (R_i, 4);
    returns (R, C, PH, PW). Always runs ``torchvision.ops.roi_pool``.
    """
    ph, pw = _check_output_size("roi_pool", output_size)
    rois = _as_rois("roi_pool", input, boxes)
    return torchvision.ops.roi_pool(input, rois, (ph, pw), spatial_scale)


# ----------------------------------------------------------------------------------------------
# input checks


def _check_output_size(op: str, output_size) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"{op}: output_size must be a positive int or a pair of them, got {output_size!r}")
    return size


def _as_rois(op: str, input: Tensor, boxes) -> Tensor:
    """Check input and boxes; return boxes as (R, 5) ``[batch_idx, x1, y1, x2, y2]``."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"{op}: input must be a (N, C, H, W) tensor, got {shape}")
    n = input.shape[0]
    if isinstance(boxes, (list, tuple)):
        if len(boxes) != n:
            raise ValueError(f"{op}: got a list of {len(boxes)} box tensors for {n} images")
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"{op}: boxes[{i}] must be a (R_i, 4) xyxy tensor, got {shape}")
        # (R, 5): batch index prepended to each image's boxes
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]) \
            if boxes else input.new_zeros(0, 5)
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"{op}: boxes must be (R, 5) [batch_idx, x1, y1, x2, y2] or a list of "
                             f"(R_i, 4) tensors, got shape {tuple(boxes.shape)}")
        rois = boxes
    else:
        raise ValueError(f"{op}: boxes must be a tensor or a list of tensors, got {type(boxes).__name__}")
    if rois.numel() and rois.device.type == "cpu":  # checks that would sync a GPU are left to torchvision
        finite = torch.isfinite(rois).all(dim=1)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0, 0])
            raise ValueError(f"{op}: box {i} has a non-finite value: {rois[i].tolist()}")
        batch = rois[:, 0].long()  # truncated like torchvision's kernel
        bad = (batch < 0) | (batch >= n)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{op}: box {i} has batch index {rois[i, 0].item():g}, "
                             f"but the input holds {n} images")
    return rois


# ----------------------------------------------------------------------------------------------
# the sparse matrix W


def _axis_weights(start: Tensor, size: Tensor, grid: Tensor, bins: int, length: int) -> Tensor:
    """Dense per-axis weights A (R, bins, length): A[r, p, l] = sum of the bilinear weights that
    the samples of bin p put on pixel l, divided by the number of samples on this axis.

    start, size: (R,) RoI start and extent along the axis, in feature pixels (input dtype).
    grid: (R,) int64 samples per bin along the axis.
    """
    r, dtype = start.shape[0], start.dtype
    g = int(grid.max()) if r else 0
    bin_size = size / bins  # (R,)
    p = torch.arange(bins, dtype=dtype)
    i = torch.arange(g, dtype=dtype) + 0.5
    # (R, bins, g) sample coordinates, summed in the same order as torchvision's kernel
    coord = (start[:, None] + p * bin_size[:, None])[:, :, None] \
        + (i * bin_size[:, None])[:, None, :] / grid.clamp(min=1).to(dtype)[:, None, None]
    used = (torch.arange(g) < grid[:, None])[:, None, :]  # (R, 1, g): sample exists
    inside = (coord >= -1) & (coord <= length) & used
    c = coord.clamp(min=0)
    low = c.floor().clamp(max=length - 1)
    edge = low >= length - 1  # at the last pixel: both corners collapse onto it
    frac = torch.where(edge, 0.0, c - low)
    low = low.long()
    high = torch.where(edge, low, low + 1)
    # corner weights, already divided by the samples on this axis (R, bins, g)
    per_sample = (1 / grid.clamp(min=1).to(dtype))[:, None, None]
    w_high = torch.where(inside, frac * per_sample, 0.0)
    w_low = torch.where(inside, (1 - frac) * per_sample, 0.0)
    a = torch.zeros(r * bins, length, dtype=dtype)
    a.scatter_add_(1, low.view(r * bins, g), w_low.view(r * bins, g))
    a.scatter_add_(1, high.view(r * bins, g), w_high.view(r * bins, g))
    return a.view(r, bins, length)


def _nonzero_columns(a: Tensor) -> tuple[Tensor, Tensor]:
    """For dense (R, P, L) weights return (R, P, K) column indices and weights of the nonzero
    entries, in increasing column order, padded with weight 0 (K = most nonzeros in a row)."""
    nonzero = a != 0
    k = int(nonzero.sum(-1).max()) if a.numel() else 0
    # stable sort puts each row's nonzero columns first, in order
    cols = torch.argsort((~nonzero).to(torch.uint8), dim=-1, stable=True)[..., :k]
    return cols, a.gather(-1, cols)


def _sparse_weights(rois: Tensor, n: int, h: int, w: int, ph: int, pw: int, spatial_scale: float,
                    sampling_ratio: int, aligned: bool, dtype: torch.dtype):
    """W as bags, one per output bin in (R, PH, PW) order, its entries contiguous. Returns
    (E,) pixel indices into P = N*H*W, (E,) weights, (B,) bag sizes, and for the backward
    (E,) entry positions in a (B, K) padded layout, and K (so bin = position // K);
    or None when that would take more than MAX_ENTRIES slots."""
    rois = rois.detach().to(dtype)  # no gradient for boxes, as in torchvision
    offset = 0.5 if aligned else 0.0
    # box corners in feature pixels, computed in float64 and rounded once, as the C++ kernel does
    x1, y1, x2, y2 = (rois[:, 1:].double() * spatial_scale - offset).to(dtype).unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1  # (R,)
    if not aligned:  # legacy RoIAlign: at least one pixel
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.long)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.long)
    else:  # adaptive; negative sizes (aligned, x2 < x1) give no samples and a zero output
        grid_h = torch.ceil(roi_h / ph).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / pw).long().clamp(min=0)
    r = rois.shape[0]
    if r and max(ph * int(grid_h.max()), pw * int(grid_w.max())) * r > MAX_ENTRIES:
        return None
    ay_cols, ay_w = _nonzero_columns(_axis_weights(y1, roi_h, grid_h, ph, h))  # (R, PH, Ky)
    ax_cols, ax_w = _nonzero_columns(_axis_weights(x1, roi_w, grid_w, pw, w))  # (R, PW, Kx)
    k = ay_cols.shape[2] * ax_cols.shape[2]
    if r * ph * pw * k > MAX_ENTRIES:
        return None
    # outer product per bin -> (R, PH, PW, Ky, Kx) pixel indices and weights
    index_dtype = torch.int32 if n * h * w < 2**31 else torch.int64
    row_base = (rois[:, 0].long()[:, None, None] * (h * w) + ay_cols * w).to(index_dtype)  # (R, PH, Ky)
    index = row_base[:, :, None, :, None] + ax_cols.to(index_dtype)[:, None, :, None, :]
    weight = ay_w[:, :, None, :, None] * ax_w[:, None, :, None, :]
    # keep the nonzero weights (drops padding and samples outside the map)
    keep = weight.view(r * ph * pw, k) != 0  # (B, Ky*Kx)
    entry = keep.view(-1).nonzero().squeeze(1)  # (E,) position in the (B, Ky*Kx) layout
    return index.view(-1).index_select(0, entry), weight.view(-1).index_select(0, entry), \
        keep.sum(1), entry, k


class _RoIAlignFunction(torch.autograd.Function):
    """Y = W @ X and dX = W^T @ dY for the W built by `_sparse_weights`.

    X holds only the U pixels W touches when that is under half the map (few or small boxes on a
    large map), so the cost follows the boxes rather than the feature map size.
    """

    @staticmethod
    def forward(ctx, input, ph, pw, index, weight, sizes, entry, k):
        n, c, h, w = input.shape
        r = sizes.numel() // (ph * pw)
        # (U,) touched pixels ascending, (E,) each entry's rank among them, (U,) entries per pixel:
        # a sort of the E entries, so the cost follows the boxes, not N*H*W (a full-size bincount
        # and cumsum would, e.g. for mask targets read from full-resolution gt masks)
        pixels, rank, per_pixel = torch.unique(index, sorted=True, return_inverse=True, return_counts=True)
        if 2 * pixels.numel() < n * h * w:
            index = rank.to(index.dtype)  # into 0..U-1
            # (N, C, H*W) at (image, :, pixel) -> (U, C)
            x = input.reshape(n, c, h * w)[pixels // (h * w), :, pixels % (h * w)]
        else:
            pixels = None
            per_pixel = torch.bincount(index, minlength=n * h * w)  # (P,) entries per pixel
            # (N, C, H, W) -> (N, H*W, C) -> (N*H*W, C): one row of channels per pixel
            x = input.reshape(n, c, h * w).transpose(1, 2).reshape(n * h * w, c)
        offsets = (sizes.cumsum(0) - sizes).to(index.dtype)
        y = F.embedding_bag(index, x, offsets, mode="sum", per_sample_weights=weight)  # (B, C)
        ctx.save_for_backward(index, weight, entry, per_pixel, pixels)
        ctx.input_shape, ctx.input_dtype, ctx.k = (n, c, h, w), input.dtype, k
        # (B, C) -> (R, PH*PW, C) -> (R, C, PH*PW) -> (R, C, PH, PW)
        return y.view(r, ph * pw, c).transpose(1, 2).contiguous().view(r, c, ph, pw)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        index, weight, entry, per_pixel, pixels = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        r, _, ph, pw = grad_output.shape
        # (R, C, PH, PW) -> (R, PH*PW, C) -> (B, C)
        dy = grad_output.reshape(r, c, ph * pw).transpose(1, 2).reshape(r * ph * pw, c)
        # W^T as bags, one per pixel of X: entries sorted by pixel, each pointing at its bin
        order = torch.argsort(index)
        bin_of_entry = (entry.index_select(0, order) // ctx.k).to(index.dtype)
        offsets = (per_pixel.cumsum(0) - per_pixel).to(index.dtype)
        dx = F.embedding_bag(bin_of_entry, dy, offsets, mode="sum",
                             per_sample_weights=weight.index_select(0, order))  # (P or U, C)
        if pixels is None:
            # (N*H*W, C) -> (N, H*W, C) -> (N, C, H*W) -> (N, C, H, W)
            return dx.view(n, h * w, c).transpose(1, 2).contiguous().view(n, c, h, w), \
                None, None, None, None, None, None, None
        grad_input = torch.zeros(n, c, h * w, dtype=ctx.input_dtype)
        grad_input[pixels // (h * w), :, pixels % (h * w)] = dx  # (U, C) into (N, C, H*W)
        return grad_input.view(n, c, h, w), None, None, None, None, None, None, None

"""Felzenszwalb-Huttenlocher graph segmentation (IJCV 2004), the initial regions of selective search.

The image is a grid graph: every pixel joined to its 8 neighbours by an edge weighted with the
Euclidean distance of their (Gaussian-smoothed) colours. Edges are visited by ascending weight; an
edge joins two components C1, C2 when its weight w is at most

    MInt(C1, C2) = min(Int(C1) + k / |C1|, Int(C2) + k / |C2|)

where Int(C) is the largest edge weight that built C (the weight of the edge that made it last, as
edges come sorted). A second pass over the same sorted edges joins every component smaller than
``min_size`` pixels to its neighbour. Colours are read on a 0-255 scale (images in [0, 1] get k / 255),
as in the authors' code and scikit-image's ``felzenszwalb``, which implements the same algorithm.

Selective search segments each colour space at two or four scales k. Smoothing, edge weights and
their sort do not depend on k, so :func:`segment_scales` does them once per image and runs only the
union-find pass per k: that pass is compiled with numba (a Python loop over ~4 x H x W edges would
cost more than all of selective search).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from numba import njit

SIGMA = 0.8  # pre-smoothing, as in the paper


def edge_weights(image: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """(H, W, C) float image in [0, 1] -> (E,) float32 weights of the 8-connected grid's edges.

    Edge order (what :func:`_merge` decodes): the H x (W-1) right neighbours, the (H-1) x W down
    neighbours, the (H-1) x (W-1) down-right ones, then the (H-1) x (W-1) up-right ones (from
    (r + 1, c) to (r, c + 1)), each block in row-major order.
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    if sigma > 0:  # 7 taps for sigma 0.8 (radius 4 sigma), borders mirrored with the edge pixel repeated
        radius = max(1, int(4 * sigma + 0.5))
        img = cv2.GaussianBlur(img, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REFLECT)
        img = img.reshape(image.shape)
    if img.ndim == 2:
        img = img[..., None]

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = a - b
        return np.sqrt(np.einsum("...c,...c->...", d, d)).ravel()

    return np.concatenate([dist(img[:, 1:], img[:, :-1]), dist(img[1:], img[:-1]),
                           dist(img[1:, 1:], img[:-1, :-1]), dist(img[1:, :-1], img[:-1, 1:])])


@njit(cache=True, nogil=True)
def _find(parent: np.ndarray, p: int) -> int:
    while parent[p] != p:
        parent[p] = parent[parent[p]]  # path halving
        p = parent[p]
    return p


@njit(cache=True, nogil=True)
def _join(parent: np.ndarray, size: np.ndarray, a: int, b: int) -> int:
    """Union of the components with roots a and b (the larger keeps its root) -> the root."""
    if size[a] < size[b]:
        a, b = b, a
    parent[b] = a
    size[a] += size[b]
    return a


@njit(cache=True, nogil=True)
def _endpoints(e: int, height: int, width: int) -> tuple[int, int]:
    """Pixel indices (row-major) of edge number e in :func:`edge_weights`'s order."""
    n_right = height * (width - 1)
    if e < n_right:
        p = e // (width - 1) * width + e % (width - 1)
        return p, p + 1
    e -= n_right
    n_down = (height - 1) * width
    if e < n_down:
        return e, e + width
    e -= n_down
    n_diag = (height - 1) * (width - 1)
    if e < n_diag:
        p = e // (width - 1) * width + e % (width - 1)
        return p, p + width + 1
    e -= n_diag
    p = (e // (width - 1) + 1) * width + e % (width - 1)
    return p, p - width + 1


@njit(cache=True, nogil=True)
def _merge(order: np.ndarray, weights: np.ndarray, height: int, width: int, k: float,
           min_size: int) -> np.ndarray:
    """The union-find passes over the edges in ``order`` -> (H * W,) labels 0..n-1 in raster order
    of each region's first pixel."""
    n = height * width
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    internal = np.zeros(n, np.float64)  # Int(C): weight of the last edge that joined C
    for i in range(order.size):
        e = order[i]
        p, q = _endpoints(e, height, width)
        a, b = _find(parent, p), _find(parent, q)
        if a == b:
            continue
        w = weights[e]
        if w <= min(internal[a] + k / size[a], internal[b] + k / size[b]):
            internal[_join(parent, size, a, b)] = w
    for i in range(order.size):  # components below min_size join their neighbour across the lightest edge
        p, q = _endpoints(order[i], height, width)
        a, b = _find(parent, p), _find(parent, q)
        if a != b and (size[a] < min_size or size[b] < min_size):
            _join(parent, size, a, b)
    labels = np.empty(n, np.int64)
    number = np.full(n, -1, np.int64)
    count = 0
    for p in range(n):
        r = _find(parent, p)
        if number[r] < 0:
            number[r] = count
            count += 1
        labels[p] = number[r]
    return labels


def segment_scales(image: np.ndarray, scales: Sequence[float], min_sizes: Sequence[int] | None = None,
                   sigma: float = SIGMA) -> list[np.ndarray]:
    """(H, W[, C]) image in [0, 1] -> one (H, W) int64 label map (0..n-1) per scale k, with
    ``min_size`` = k unless ``min_sizes`` are given (the selective-search authors' setting)."""
    height, width = image.shape[:2]
    if height < 2 or width < 2:
        return [np.zeros((height, width), np.int64) for _ in scales]
    weights = edge_weights(image, sigma)
    order = np.argsort(weights, kind="stable")  # stable: ties in a fixed order on every platform
    min_sizes = list(scales) if min_sizes is None else list(min_sizes)
    return [_merge(order, weights, height, width, float(k) / 255.0, int(m)).reshape(height, width)
            for k, m in zip(scales, min_sizes)]

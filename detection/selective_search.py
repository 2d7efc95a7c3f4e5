"""Selective search (Uijlings, van de Sande, Gevers, Smeulders; IJCV 2013): class-agnostic object
proposals from hierarchically grouped superpixels, the proposal stage of R-CNN and Fast R-CNN.

Shape shorthand: H x W the image, C colour channels, n initial regions, m = 2n - 1 regions of one
hierarchy (the n initial ones, then one per merge, in creation order), R boxes, B histogram bins.

One *strategy* is a colour space, a segmentation scale k and a set of similarities:
1. Initial regions: Felzenszwalb-Huttenlocher graph segmentation of the image in that colour space
   (:mod:`detection.felzenszwalb`, scale = k, sigma = 0.8, min_size = k as in the authors' MATLAB
   code; the same segmentation as scikit-image's ``felzenszwalb``). It reads images in [0, 1] as
   8-bit images divided by 255, so every colour space is first mapped to [0, 1] per channel
   (:func:`to_colour_space`).
2. Region descriptors (vectorised with ``np.bincount`` over label x bin codes): colour histogram,
   25 bins per channel, L1-normalised over all C x 25 bins; texture histogram of Gaussian
   derivatives (sigma 1) in 8 orientations, half-wave rectified (orientations theta and
   theta + 180 degrees hold the two signs of one derivative), 10 bins per orientation per channel
   over [0, the image's maximum of that response], L1-normalised over all C x 80 bins; size; bbox.
3. Hierarchical grouping: the most similar pair of *adjacent* regions (adjacency = 4-neighbouring
   pixels with different labels) is merged until one region is left; a merged region's histograms
   are the size-weighted means of its parts (exactly the histogram of its pixels), its box the
   union. Similarity is a sum of the chosen terms (``C``olour, ``T``exture, ``S``ize, ``F``ill),
   each in [0, 1]: sum of bin-wise minima for the histograms, 1 - (size_i + size_j) / image size,
   1 - (union box area - size_i - size_j) / image size. A heap with lazy deletion keeps the pairs.
4. Ranking (the paper's): in each hierarchy region number i of m gets position m - i (the last
   merge, the whole image, is 1), times a uniform random number (seeded); all hierarchies'
   boxes are sorted by that value ascending, exact duplicates dropped (the best rank stays) and
   boxes with a side below ``min_size`` px dropped.

Diversification (:data:`MODES`, as in the paper's code): "fast" = HSV, Lab x k in {50, 100} x
{CTSF, TSF} (8 hierarchies); "quality" = HSV, Lab, rgI, H, I x k in {50, 100, 150, 300} x
{CTSF, TSF, F, S} (80 hierarchies).

Boxes are continuous xyxy pixels of the image given (pixel (i, j) covers [j, j+1) x [i, i+1)).
Free of torch, so that worker processes start fast.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from scipy.ndimage import find_objects

from detection.felzenszwalb import segment_scales

COLOUR_BINS = 25  # per channel
TEXTURE_BINS = 10  # per orientation per channel
ORIENTATIONS = 8


@dataclass(frozen=True)
class Strategy:
    """One hierarchy: colour space, Felzenszwalb scale k, similarity terms (letters of 'CTSF')."""

    colour_space: str  # hsv | lab | rgi | h | i
    k: int
    similarities: str


MODES: dict[str, list[Strategy]] = {
    "fast": [Strategy(c, k, s) for c in ("hsv", "lab") for k in (50, 100) for s in ("CTSF", "TSF")],
    "quality": [Strategy(c, k, s) for c in ("hsv", "lab", "rgi", "h", "i") for k in (50, 100, 150, 300)
                for s in ("CTSF", "TSF", "F", "S")],
}
COLOUR_SPACES = ("hsv", "lab", "rgi", "h", "i")


def to_colour_space(image: np.ndarray, name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, C) float32, every channel mapped to [0, 1].

    hsv: hue / 360, S, V; lab: L / 100, (a + 128) / 255, (b + 128) / 255; rgi: R / (R+G+B),
    G / (R+G+B), (R+G+B) / 3; h: hue alone; i: intensity (R+G+B) / 3 alone.
    """
    rgb = image.astype(np.float32) * (1.0 / 255.0)
    if name in ("hsv", "h"):
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # H in [0, 360), S and V in [0, 1]
        hsv[..., 0] *= 1.0 / 360.0
        return hsv if name == "hsv" else np.ascontiguousarray(hsv[..., :1])
    if name == "lab":
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)  # L in [0, 100], a and b in about [-128, 127]
        lab[..., 0] *= 1.0 / 100.0
        lab[..., 1:] = (lab[..., 1:] + 128.0) * (1.0 / 255.0)
        return np.clip(lab, 0.0, 1.0)
    total = rgb.sum(axis=2, keepdims=True)  # (H, W, 1)
    if name == "rgi":
        chroma = rgb[..., :2] / np.maximum(total, 1e-6)
        return np.concatenate((chroma, total * (1.0 / 3.0)), axis=2)
    if name == "i":
        return total * (1.0 / 3.0)
    raise ValueError(f"unknown colour space {name!r}; expected one of {', '.join(COLOUR_SPACES)}")


def _gaussian_derivative_kernels(sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    radius = int(np.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    g = np.exp(-x * x / (2 * sigma * sigma))
    g /= g.sum()
    return g, -x / (sigma * sigma) * g  # the Gaussian and its derivative


def colour_codes(img: np.ndarray) -> np.ndarray:
    """(H, W, C) in [0, 1] -> (H*W, C) int64 bin codes, channel c in c*25 .. c*25 + 24."""
    c = img.shape[2]
    bins = np.minimum((img.reshape(-1, c) * COLOUR_BINS).astype(np.int64), COLOUR_BINS - 1)
    return bins + COLOUR_BINS * np.arange(c)


def texture_codes(img: np.ndarray) -> np.ndarray:
    """(H, W, C) in [0, 1] -> (H*W, C*8) int16 bin codes of the rectified Gaussian derivatives in 8
    orientations (sigma 1), 10 bins each over [0, that response's maximum in the image]; column
    c*8 + o holds channel c at theta = o * 45 degrees, code = its column * 10 + bin."""
    h, w, c = img.shape
    g, dg = _gaussian_derivative_kernels(1.0)
    gx = cv2.sepFilter2D(img, cv2.CV_32F, dg, g, borderType=cv2.BORDER_REFLECT).reshape(h * w, c, 1)
    gy = cv2.sepFilter2D(img, cv2.CV_32F, g, dg, borderType=cv2.BORDER_REFLECT).reshape(h * w, c, 1)
    half = ORIENTATIONS // 2
    theta = np.arange(half, dtype=np.float32) * (2 * np.pi / ORIENTATIONS)
    steered = gx * np.cos(theta) + gy * np.sin(theta)  # (H*W, C, 4) at 0..135 degrees; 180..315 = minus these
    top = np.concatenate((steered.max(axis=0), -steered.min(axis=0)), axis=1)  # (C, 8) largest rectified response
    scale = (TEXTURE_BINS * (1 - 1e-6)) / np.maximum(top, 1e-12)  # the maximum lands in the last bin
    codes = np.empty((h * w, c, ORIENTATIONS), np.int16)
    for sl, sign in ((slice(0, half), 1.0), (slice(half, ORIENTATIONS), -1.0)):
        r = steered * (sign * scale[:, sl])
        codes[:, :, sl] = np.maximum(r, 0.0, out=r)  # rectified, truncated to the bin index
    codes += (TEXTURE_BINS * np.arange(c * ORIENTATIONS, dtype=np.int16)).reshape(c, ORIENTATIONS)
    return codes.reshape(h * w, c * ORIENTATIONS)


@dataclass
class Regions:
    """Descriptors of the initial regions of one segmentation (arrays over n regions)."""

    size: np.ndarray  # (n,) float64 pixels
    box: np.ndarray  # (n, 4) float64 xyxy
    colour: np.ndarray  # (n, C*25) float64, rows sum to 1
    texture: np.ndarray  # (n, C*80) float64, rows sum to 1
    pairs: np.ndarray  # (E, 2) int64 adjacent region pairs, i < j


def describe_regions(labels: np.ndarray, colour: np.ndarray, texture: np.ndarray, colour_bins: int,
                     texture_bins: int) -> Regions:
    """labels (H, W) int 0..n-1, colour (H*W, C) and texture (H*W, C*8) codes -> :class:`Regions`.

    colour_bins = C*25 and texture_bins = C*80: the histogram lengths.
    """
    n = int(labels.max()) + 1
    flat = labels.ravel().astype(np.int64)
    size = np.bincount(flat, minlength=n).astype(np.float64)
    col = np.bincount((flat[:, None] * colour_bins + colour).ravel(), minlength=n * colour_bins)
    tex = np.bincount((flat[:, None] * texture_bins + texture).ravel(), minlength=n * texture_bins)
    col = col.reshape(n, colour_bins) / (size[:, None] * colour.shape[1])
    tex = tex.reshape(n, texture_bins) / (size[:, None] * texture.shape[1])
    box = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in find_objects(labels + 1)],
                    np.float64).reshape(n, 4)
    # adjacency: labels of horizontally and vertically neighbouring pixels that differ
    u = np.concatenate((labels[:, :-1].ravel(), labels[:-1, :].ravel())).astype(np.int64)
    v = np.concatenate((labels[:, 1:].ravel(), labels[1:, :].ravel())).astype(np.int64)
    diff = u != v
    lo, hi = np.minimum(u[diff], v[diff]), np.maximum(u[diff], v[diff])
    codes = np.unique(lo * n + hi)
    pairs = np.stack((codes // n, codes % n), axis=1)
    return Regions(size, box, col, tex, pairs)


def pair_similarities(regions: Regions, terms: str, area: float) -> np.ndarray:
    """(E,) similarity of every adjacent pair of the initial regions."""
    i, j = regions.pairs[:, 0], regions.pairs[:, 1]
    s = np.zeros(len(i))
    if "C" in terms:
        s += np.minimum(regions.colour[i], regions.colour[j]).sum(axis=1)
    if "T" in terms:
        s += np.minimum(regions.texture[i], regions.texture[j]).sum(axis=1)
    if "S" in terms:
        s += 1.0 - (regions.size[i] + regions.size[j]) / area
    if "F" in terms:
        bi, bj = regions.box[i], regions.box[j]
        w = np.maximum(bi[:, 2], bj[:, 2]) - np.minimum(bi[:, 0], bj[:, 0])
        h = np.maximum(bi[:, 3], bj[:, 3]) - np.minimum(bi[:, 1], bj[:, 1])
        s += 1.0 - (w * h - regions.size[i] - regions.size[j]) / area
    return s


def group(regions: Regions, terms: str, area: float, return_histograms: bool = False):
    """Hierarchical grouping -> (m, 4) boxes in creation order (n initial regions, then one per merge).

    ``terms``: letters of 'CTSF'; ``area``: the image's pixel count. With ``return_histograms``
    also the (m,) sizes and the (m, C*25) colour and (m, C*80) texture histograms of every region
    (for tests).

    The colour and texture terms are one sum of bin-wise minima over the two histograms side by
    side. Per merge only the new region's
    similarities to its neighbours are computed (numpy for the histograms, plain Python for the
    few scalars); stale heap entries are skipped when popped.
    """
    n = len(regions.size)
    m = 2 * n - 1
    use_c, use_t = "C" in terms or return_histograms, "T" in terms or return_histograms
    parts = ([regions.colour] if use_c else []) + ([regions.texture] if use_t else [])
    hist = np.empty((m, sum(p.shape[1] for p in parts))) if parts else None  # (m, B) histograms side by side
    if parts:
        hist[:n] = np.concatenate(parts, axis=1)
        # a term that is off contributes nothing: its columns are left out of the sum of minima
        cols = np.concatenate([np.full(p.shape[1], t in terms) for p, t in zip(parts, "CT" if use_c else "T")])
        sim_cols = None if cols.all() else np.flatnonzero(cols)
    use_hist = "C" in terms or "T" in terms
    use_s, use_f = "S" in terms, "F" in terms
    size = regions.size.tolist() + [0.0] * (n - 1)
    box = [tuple(b) for b in regions.box.tolist()] + [None] * (n - 1)
    neighbours: list[set[int]] = [set() for _ in range(m)]
    pi, pj = regions.pairs[:, 0].tolist(), regions.pairs[:, 1].tolist()
    for a, b in zip(pi, pj):
        neighbours[a].add(b)
        neighbours[b].add(a)
    heap = list(zip((-pair_similarities(regions, terms, area)).tolist(), pi, pj))
    heapq.heapify(heap)
    alive = [True] * n + [False] * (n - 1)
    inv_area = 1.0 / area
    heappush = heapq.heappush
    t = n
    while heap:
        _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue  # a stale pair: one side was merged already
        sa, sb = size[a], size[b]
        st = size[t] = sa + sb
        if hist is not None:
            np.add(hist[a] * (sa / st), hist[b] * (sb / st), out=hist[t])
        ax0, ay0, ax1, ay1 = box[a]
        bx0, by0, bx1, by1 = box[b]
        tx0, ty0 = (ax0 if ax0 < bx0 else bx0), (ay0 if ay0 < by0 else by0)
        tx1, ty1 = (ax1 if ax1 > bx1 else bx1), (ay1 if ay1 > by1 else by1)
        box[t] = (tx0, ty0, tx1, ty1)
        alive[a] = alive[b] = False
        alive[t] = True
        nb = neighbours[a] | neighbours[b]
        nb.discard(a)
        nb.discard(b)
        neighbours[a] = neighbours[b] = set()
        for u in nb:
            s = neighbours[u]
            s.discard(a)
            s.discard(b)
            s.add(t)
        neighbours[t] = nb
        if nb:
            others = list(nb)
            if use_hist:
                h = hist[others] if sim_cols is None else hist[np.ix_(others, sim_cols)]
                ht = hist[t] if sim_cols is None else hist[t, sim_cols]
                sims = np.minimum(h, ht, out=h).sum(axis=1).tolist()
            else:
                sims = [0.0] * len(others)
            for s, u in zip(sims, others):
                if use_s:
                    s += 1.0 - (st + size[u]) * inv_area
                if use_f:
                    ux0, uy0, ux1, uy1 = box[u]
                    union = (((tx1 if tx1 > ux1 else ux1) - (tx0 if tx0 < ux0 else ux0))
                             * ((ty1 if ty1 > uy1 else uy1) - (ty0 if ty0 < uy0 else uy0)))
                    s += 1.0 - (union - st - size[u]) * inv_area
                heappush(heap, (-s, u, t))
        t += 1
    # a segmentation whose adjacency graph is not connected (not from one image) stops early
    boxes = np.array(box[:t], np.float64).reshape(-1, 4)
    if return_histograms:
        c = regions.colour.shape[1]
        return boxes, np.array(size[:t]), hist[:t, :c], hist[:t, c:]
    return boxes


def rank(hierarchies: Sequence[np.ndarray], rng: np.random.Generator, min_size: float = 0.0,
         max_proposals: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The paper's ranking of the boxes of several hierarchies -> (R, 4) float32 boxes best first
    and (R,) float32 scores, decreasing (1 / (1 + rank value)).

    hierarchies: (m_h, 4) boxes in creation order. Region i of m gets (m - i) * U(0, 1); sorted
    ascending; exact duplicates keep their best rank; boxes with a side < ``min_size`` dropped;
    the first ``max_proposals`` kept (0 = all).
    """
    if not hierarchies:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    boxes = np.concatenate(hierarchies)
    value = np.concatenate([np.arange(len(h), 0, -1) * rng.random(len(h)) for h in hierarchies])
    order = np.argsort(value, kind="stable")
    boxes, value = boxes[order], value[order]
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes, value = boxes[keep], value[keep]
    ib = boxes.astype(np.int64)  # integer pixel coordinates: one int64 key per box
    side = int(ib.max()) + 1 if len(ib) else 1
    key = ((ib[:, 0] * side + ib[:, 1]) * side + ib[:, 2]) * side + ib[:, 3]
    _, first = np.unique(key, return_index=True)
    first.sort()
    if max_proposals > 0:
        first = first[:max_proposals]
    return boxes[first].astype(np.float32), (1.0 / (1.0 + value[first])).astype(np.float32)


def selective_search(image: np.ndarray, mode: str = "fast", *, strategies: Sequence[Strategy] | None = None,
                     min_size: float = 0.0, max_proposals: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Object proposals of one image.

    image: (H, W, 3) uint8 RGB (grayscale: the same channel three times). ``mode``: "fast" or
    "quality" (:data:`MODES`), or an explicit list of ``strategies``. Returns (R, 4) float32 xyxy
    boxes in the image's pixels, best first, and (R,) float32 scores, decreasing. Deterministic
    for a given ``seed``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"selective_search needs an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    if strategies is None:
        if mode not in MODES:
            raise ValueError(f"unknown selective search mode {mode!r}; expected one of {', '.join(MODES)}")
        strategies = MODES[mode]
    area = float(image.shape[0] * image.shape[1])
    hierarchies = []
    for space in dict.fromkeys(s.colour_space for s in strategies):  # in order, each once
        img = to_colour_space(image, space)
        c = img.shape[2]
        col, tex = colour_codes(img), texture_codes(img)
        scales = list(dict.fromkeys(s.k for s in strategies if s.colour_space == space))
        for k, labels in zip(scales, segment_scales(img, scales)):  # edge weights and sort shared by the k's
            regions = describe_regions(labels, col, tex, c * COLOUR_BINS, c * ORIENTATIONS * TEXTURE_BINS)
            for s in strategies:
                if s.colour_space == space and s.k == k:
                    hierarchies.append(group(regions, s.similarities, area))
    return rank(hierarchies, np.random.default_rng(seed), min_size, max_proposals)

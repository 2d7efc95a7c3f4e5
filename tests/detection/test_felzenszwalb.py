"""detection/felzenszwalb.py: the graph segmentation under selective search, against hand-made images
and scikit-image's implementation of the same algorithm."""
import cv2
import numpy as np
import pytest

from detection.felzenszwalb import _endpoints, edge_weights, segment_scales


def test_edge_order_is_what_the_merge_decodes():
    rng = np.random.default_rng(0)
    img = rng.random((5, 7, 3)).astype(np.float32)
    w = edge_weights(img, sigma=0)
    height, width = img.shape[:2]
    assert w.shape == (height * (width - 1) + (height - 1) * width + 2 * (height - 1) * (width - 1),)
    flat = img.reshape(-1, 3)
    seen = set()
    for e in range(w.size):
        p, q = _endpoints(e, height, width)
        (rp, cp), (rq, cq) = divmod(p, width), divmod(q, width)
        assert max(abs(rp - rq), abs(cp - cq)) == 1  # 8-neighbours
        assert w[e] == pytest.approx(np.linalg.norm(flat[p] - flat[q]), abs=1e-6)
        seen.add(frozenset((p, q)))
    assert len(seen) == w.size  # every neighbouring pair exactly once


def test_flat_regions_and_the_min_size_pass():
    img = np.zeros((20, 30), np.float32)
    img[:, 15:] = 1.0  # two flat halves: a cut of weight 1 that k = 50 (50 / 255 per pixel) never crosses
    img[2:4, 2:4] = 0.6  # a 4-pixel blob, below min_size: joined to its surroundings
    labels = segment_scales(img, [50], min_sizes=[10], sigma=0)[0]
    assert labels.dtype == np.int64 and labels.shape == img.shape
    assert np.array_equal(labels, (img >= 1.0).astype(np.int64))
    kept = segment_scales(img, [50], min_sizes=[1], sigma=0)[0]
    assert kept.max() == 2 and len(np.unique(kept[2:4, 2:4])) == 1 and kept[0, 0] != kept[2, 2]


def test_larger_k_gives_fewer_regions_and_labels_come_in_raster_order():
    rng = np.random.default_rng(1)
    img = cv2.resize(rng.random((8, 10, 3)).astype(np.float32), (80, 64), interpolation=cv2.INTER_NEAREST)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    counts = []
    for labels in segment_scales(np.clip(img, 0, 1), [20, 100, 400]):
        _, first = np.unique(labels, return_index=True)
        assert np.all(np.diff(first) > 0) and labels.min() == 0  # 0..n-1 by first pixel
        counts.append(labels.max() + 1)
    assert counts[0] > counts[1] > counts[2] >= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_same_segmentation_as_scikit_image(channels):
    felzenszwalb = pytest.importorskip("skimage.segmentation").felzenszwalb
    rng = np.random.default_rng(channels)
    for _ in range(3):  # blocky images with noise and a smooth gradient: no ties among edge weights
        img = cv2.resize(rng.random((6, 9, channels)).astype(np.float32), (90, 60), interpolation=cv2.INTER_NEAREST)
        img = img.reshape(60, 90, channels) + np.linspace(0, 0.2, 90, dtype=np.float32)[None, :, None]
        img = np.clip(img + rng.normal(0, 0.03, img.shape).astype(np.float32), 0, 1)
        img = img[..., 0] if channels == 1 else img
        for k in (50, 300):
            ours = segment_scales(img, [k])[0]
            ref = felzenszwalb(img, scale=k, sigma=0.8, min_size=k, channel_axis=None if channels == 1 else -1)
            assert (ours == ref).mean() > 0.99  # float32 vs float64 weights may reorder near-equal edges
            assert abs(int(ours.max()) - int(ref.max())) <= 1

"""Selective search: region descriptors, similarities and merges on hand-made segmentations,
adjacency, the ranking's determinism, colour spaces."""
import numpy as np
import pytest

from detection.selective_search import (COLOUR_BINS, MODES, ORIENTATIONS, TEXTURE_BINS, Strategy, colour_codes,
                                        describe_regions, group, pair_similarities, rank, selective_search,
                                        texture_codes, to_colour_space)


def hand_made(seed=0):
    """A 12 x 16 image with 3 regions: 0 = left half, 1 = top right, 2 = bottom right.
    Regions 1 and 2 have the same colour distribution; region 0 differs."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((12, 16), np.int64)
    labels[:5, 8:] = 1
    labels[5:, 8:] = 2
    img = np.empty((12, 16, 3), np.float32)
    img[labels == 0] = rng.uniform(0.0, 0.3, ((labels == 0).sum(), 3))
    img[labels > 0] = rng.uniform(0.6, 1.0, ((labels > 0).sum(), 3))
    return labels, img


def histograms_of(mask, codes, bins):
    """L1-normalised histogram of the codes of the pixels in mask: what a region's must equal."""
    h = np.bincount(codes[mask.ravel()].ravel(), minlength=bins).astype(np.float64)
    return h / h.sum()


def test_region_descriptors_are_the_histograms_of_their_pixels():
    labels, img = hand_made()
    col, tex = colour_codes(img), texture_codes(img)
    r = describe_regions(labels, col, tex, 3 * COLOUR_BINS, 3 * ORIENTATIONS * TEXTURE_BINS)
    np.testing.assert_array_equal(r.size, [96, 40, 56])
    np.testing.assert_array_equal(r.box, [[0, 0, 8, 12], [8, 0, 16, 5], [8, 5, 16, 12]])
    np.testing.assert_array_equal(r.pairs, [[0, 1], [0, 2], [1, 2]])
    for i in range(3):
        np.testing.assert_allclose(r.colour[i], histograms_of(labels == i, col, 75))
        np.testing.assert_allclose(r.texture[i], histograms_of(labels == i, tex, 240))
    assert col.max() < 75 and tex.max() < 240 and tex.min() >= 0


def test_similarity_terms_on_a_hand_made_pair():
    labels, img = hand_made()
    r = describe_regions(labels, colour_codes(img), texture_codes(img), 75, 240)
    area = labels.size
    # pairs (0,1), (0,2), (1,2): size = 1 - (s_i + s_j) / area
    np.testing.assert_allclose(pair_similarities(r, "S", area), 1 - np.array([136, 152, 96]) / area)
    # fill: 1 - (union box area - s_i - s_j) / area; (0,1)'s union is the whole image
    np.testing.assert_allclose(pair_similarities(r, "F", area), 1 - np.array([192 - 136, 192 - 152, 96 - 96]) / area)
    c = pair_similarities(r, "C", area)
    assert c[2] > 0.3 and c[0] == 0 and c[1] == 0  # 1 and 2 share colours; 0 shares none
    np.testing.assert_allclose(pair_similarities(r, "CTSF", area),
                               sum(pair_similarities(r, t, area) for t in "CTSF"))


@pytest.mark.parametrize("terms", ["CTSF", "TSF", "C", "S", "F"])
def test_merged_region_histograms_equal_those_of_its_pixels(terms):
    labels, img = hand_made()
    col, tex = colour_codes(img), texture_codes(img)
    r = describe_regions(labels, col, tex, 75, 240)
    boxes, size, colour, texture = group(r, terms, labels.size, return_histograms=True)
    assert len(boxes) == 5  # 3 initial regions + 2 merges
    members = {0: {0}, 1: {1}, 2: {2}}
    # the third region is a merge of two of the first three: find which from its size
    for a, b in ((0, 1), (0, 2), (1, 2)):
        if size[3] == r.size[a] + r.size[b]:
            members[3] = {a, b}
    members[4] = {0, 1, 2}
    for t in (3, 4):
        mask = np.isin(labels, list(members[t]))
        assert size[t] == mask.sum()
        np.testing.assert_allclose(colour[t], histograms_of(mask, col, 75))
        np.testing.assert_allclose(texture[t], histograms_of(mask, tex, 240))
        ys, xs = np.nonzero(mask)
        np.testing.assert_array_equal(boxes[t], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    if terms == "C":
        assert members[3] == {1, 2}  # the pair with the same colours goes first


def test_only_adjacent_regions_merge():
    # four vertical stripes 0 | 1 | 2 | 3; by size alone 0 and 3 (the two smallest) would pair,
    # but they do not touch
    labels = np.repeat(np.array([[0] * 2 + [1] * 6 + [2] * 6 + [3] * 2]), 4, axis=0)
    img = np.random.default_rng(0).uniform(size=(*labels.shape, 3)).astype(np.float32)
    r = describe_regions(labels, colour_codes(img), texture_codes(img), 75, 240)
    np.testing.assert_array_equal(r.pairs, [[0, 1], [1, 2], [2, 3]])
    boxes = group(r, "S", labels.size)
    # sizes 8, 24, 24, 8: (0, 3) would be the most similar pair by size; adjacent, (0, 1) and (2, 3) are
    np.testing.assert_array_equal(boxes[4:], [[0, 0, 8, 4], [8, 0, 16, 4], [0, 0, 16, 4]])


def test_rank_is_deterministic_for_a_seed_and_drops_duplicates_and_small_boxes():
    h1 = np.array([[0, 0, 4, 4], [4, 0, 8, 4], [0, 0, 8, 4]], np.float64)
    h2 = np.array([[0, 0, 4, 4], [0, 0, 1, 9], [0, 0, 8, 4]], np.float64)
    a = rank([h1, h2], np.random.default_rng(3), min_size=2)
    b = rank([h1, h2], np.random.default_rng(3), min_size=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert len(a[0]) == 3  # 3 distinct boxes with both sides >= 2
    assert len({tuple(x) for x in a[0].tolist()}) == 3
    assert (np.diff(a[1]) <= 0).all()  # scores decrease with the rank
    assert len(rank([h1, h2], np.random.default_rng(3), max_proposals=2)[0]) == 2


def test_selective_search_on_an_image_is_deterministic_and_inside_the_image():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 56, 3), np.uint8)
    image[5:20, 8:30] = (200, 30, 30)
    image[22:38, 30:50] = (20, 180, 40)
    image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
    boxes, scores = selective_search(image, "fast", seed=0)
    again, _ = selective_search(image, "fast", seed=0)
    other, _ = selective_search(image, "fast", seed=1)
    np.testing.assert_array_equal(boxes, again)
    assert sorted(map(tuple, boxes.tolist())) == sorted(map(tuple, other.tolist()))  # same set, other order
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and len(scores) == len(boxes)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 56).all() and (boxes[:, 3] <= 40).all()
    assert [0, 0, 56, 40] in boxes.tolist()
    found = {tuple(b) for b in boxes.tolist()}
    assert (8, 5, 30, 20) in found and (30, 22, 50, 38) in found  # both objects exactly


def test_modes_are_the_papers():
    assert len(MODES["fast"]) == 8 and len(MODES["quality"]) == 80
    assert {s.colour_space for s in MODES["quality"]} == {"hsv", "lab", "rgi", "h", "i"}
    assert {s.k for s in MODES["quality"]} == {50, 100, 150, 300}
    boxes, _ = selective_search(np.full((16, 16, 3), 128, np.uint8), strategies=[Strategy("i", 50, "S")])
    assert boxes.tolist() == [[0, 0, 16, 16]]


@pytest.mark.parametrize("space", ["hsv", "lab", "rgi", "h", "i"])
def test_colour_spaces_are_mapped_to_0_1(space):
    image = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    image[0, 0] = 0
    image[0, 1] = 255
    out = to_colour_space(image, space)
    assert out.dtype == np.float32 and out.shape[:2] == (20, 20) and out.shape[2] == (1 if space in "hi" else 3)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match=r"needs an \(H, W, 3\) uint8 RGB image, got float32 \(4, 4\)"):
        selective_search(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="unknown selective search mode 'slow'; expected one of fast, quality"):
        selective_search(np.zeros((4, 4, 3), np.uint8), "slow")

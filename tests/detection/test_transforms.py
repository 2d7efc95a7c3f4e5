"""build_transforms: resize rule, flip with left/right keypoint swap, boxes/masks/keypoints in step."""
import numpy as np
import pytest

from detection.data import DatasetMeta, build_transforms

META = DatasetMeta(class_names=["a", "b"], category_ids=[1, 2],
                   keypoint_names=["nose", "left_eye", "right_eye"],
                   keypoint_flip_map=[("left_eye", "right_eye")])


def make_sample(h=60, w=100):
    """Two instances with box-shaped masks and keypoints: one at the left, one at the right."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2, 0] = 255  # left half red
    boxes = np.array([[10, 20, 30, 50], [60, 5, 90, 25]], np.float32)
    masks = np.zeros((2, h, w), np.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
        m[y0:y1, x0:x1] = 1
    kps = np.array([[[20, 30, 2], [15, 25, 1], [25, 25, 2]],
                    [[75, 10, 2], [0, 0, 0], [85, 8, 2]]], np.float32)
    return image, {"image_id": 7, "gt_boxes": boxes, "gt_classes": np.array([0, 1]),
                   "gt_masks": masks, "gt_keypoints": kps}


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_resize_short_side_and_cap():
    image, target = make_sample()
    t = build_transforms(META, train=False, min_size=30, max_size=1000)
    out, tt = t(image, target)
    assert out.shape == (30, 50, 3)  # short side 60 -> 30
    np.testing.assert_allclose(tt["gt_boxes"], target["gt_boxes"] / 2, atol=1e-4)
    np.testing.assert_allclose(tt["gt_keypoints"][0, :, :2], target["gt_keypoints"][0, :, :2] / 2, atol=1e-4)
    assert tt["gt_masks"].shape == (2, 30, 50) and tt["image_id"] == 7
    out, _ = build_transforms(META, train=False, min_size=120, max_size=150)(image, target)
    assert out.shape == (90, 150, 3)  # 120 / 60 = 2 would make the long side 200 > 150: capped at 1.5
    out, _ = build_transforms(META, train=False, min_size=(30, 90), max_size=0)(image, target)
    assert out.shape == (90, 150, 3)  # at test time a tuple uses its largest size


def test_train_sizes_are_a_random_choice_and_jitter():
    image, target = make_sample()
    t = build_transforms(META, train=True, min_size=(30, 45, 60), max_size=1000, hflip_prob=0.0)
    shapes = set()
    for s in range(30):
        t.set_random_seed(s)
        shapes.add(t(image, target)[0].shape[0])
    assert shapes == {30, 45, 60}
    t = build_transforms(META, train=True, min_size=60, max_size=1000, hflip_prob=0.0, scale_jitter=(0.5, 2.0))
    heights = []
    for s in range(30):
        t.set_random_seed(s)
        heights.append(t(image, target)[0].shape[0])
    assert 30 <= min(heights) < 50 and 80 < max(heights) <= 120


def test_flip_moves_boxes_masks_and_swaps_left_right_keypoints():
    image, target = make_sample()
    t = build_transforms(META, train=True, min_size=0, max_size=0, hflip_prob=1.0)
    out, tt = t(image, target)
    assert out[:, -1, 0].min() == 255 and out[:, 0, 0].max() == 0  # the red half moved to the right
    np.testing.assert_allclose(tt["gt_boxes"], [[70, 20, 90, 50], [10, 5, 40, 25]], atol=1e-4)
    for m, b in zip(tt["gt_masks"], tt["gt_boxes"]):
        np.testing.assert_allclose(tight_box(m), b, atol=1e-4)
    # keypoints are continuous coordinates like boxes: x -> W - x; left_eye and right_eye trade places
    np.testing.assert_allclose(tt["gt_keypoints"][0], [[80, 30, 2], [75, 25, 2], [85, 25, 1]])
    # instance 2's left_eye was unlabeled: after the swap right_eye is unlabeled, at (0, 0)
    np.testing.assert_allclose(tt["gt_keypoints"][1], [[25, 10, 2], [15, 8, 2], [0, 0, 0]])
    np.testing.assert_array_equal(tt["gt_classes"], [0, 1])


def test_flip_twice_is_identity():
    image, target = make_sample()
    t = build_transforms(META, train=True, min_size=0, max_size=0, hflip_prob=1.0)
    out, tt = t(*t(image, target))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_allclose(tt["gt_boxes"], target["gt_boxes"], atol=1e-4)
    np.testing.assert_array_equal(tt["gt_masks"], target["gt_masks"])
    np.testing.assert_allclose(tt["gt_keypoints"], target["gt_keypoints"], atol=1e-4)


def test_boxes_stay_consistent_with_masks_after_resize():
    image, target = make_sample()
    for size in (23, 37, 90):
        _, tt = build_transforms(META, train=False, min_size=size, max_size=0)(image, target)
        for m, b in zip(tt["gt_masks"], tt["gt_boxes"]):
            assert np.abs(tight_box(m) - b).max() <= 1.0


def test_degenerate_instances_dropped_in_step_and_keypoints_outside_invisible():
    image, target = make_sample()
    target["gt_boxes"][0] = [10, 20, 11.5, 50]  # 1.5 px wide: 0.75 px after halving
    target["gt_keypoints"][1, 2] = [150, 8, 2]  # outside the image (labelled anyway)
    _, tt = build_transforms(META, train=False, min_size=30, max_size=0)(image, target)
    np.testing.assert_array_equal(tt["gt_classes"], [1])
    assert tt["gt_masks"].shape == (1, 30, 50) and tt["gt_masks"][0].sum() == 15 * 10
    np.testing.assert_allclose(tt["gt_keypoints"], [[[37.5, 5, 2], [0, 0, 0], [0, 0, 0]]])


def test_empty_target_and_no_keypoints_or_masks():
    image, target = make_sample()
    empty = {"gt_boxes": np.zeros((0, 4), np.float32), "gt_classes": np.zeros(0, np.int64),
             "gt_masks": np.zeros((0, 60, 100), np.uint8), "gt_keypoints": np.zeros((0, 3, 3), np.float32)}
    t = build_transforms(META, train=True, min_size=30, max_size=0, hflip_prob=1.0, color_jitter=0.5)
    out, tt = t(image, empty)
    assert out.shape == (30, 50, 3)
    assert tt["gt_boxes"].shape == (0, 4) and tt["gt_masks"].shape == (0, 30, 50)
    assert tt["gt_keypoints"].shape == (0, 3, 3)
    plain = {"gt_boxes": target["gt_boxes"], "gt_classes": target["gt_classes"]}
    _, tt = t(image, plain)
    assert set(tt) == {"gt_boxes", "gt_classes"}
    np.testing.assert_allclose(tt["gt_boxes"], [[35, 10, 45, 25], [5, 2.5, 20, 12.5]], atol=1e-4)


def test_color_jitter_changes_pixels_not_geometry_and_is_seeded():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)
    _, target = make_sample()
    t = build_transforms(META, train=True, min_size=0, max_size=0, hflip_prob=0.0, color_jitter=1.0)
    t.set_random_seed(3)
    a, ta = t(image, target)
    t.set_random_seed(3)
    b, _ = t(image, target)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, image)
    np.testing.assert_allclose(ta["gt_boxes"], target["gt_boxes"])
    test = build_transforms(META, train=False, min_size=0, max_size=0, color_jitter=1.0, hflip_prob=1.0)
    np.testing.assert_array_equal(test(image, target)[0], image)  # no randomness at test time


@pytest.mark.parametrize("kwargs, message", [
    ({"min_size": -1}, r"min_size must be a positive int.*got -1"),
    ({"max_size": -5}, r"max_size must be >= 0.*got -5"),
    ({"hflip_prob": 1.5}, r"hflip_prob must be in \[0, 1\]; got 1.5"),
    ({"color_jitter": 2.0}, r"color_jitter is a strength in \[0, 1\]; got 2.0"),
    ({"scale_jitter": (2.0, 1.0)}, r"scale_jitter must be \(lo, hi\) with 0 < lo <= hi.*\(2.0, 1.0\)"),
])
def test_bad_arguments(kwargs, message):
    args = {"train": True, "min_size": 32, "max_size": 64, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_transforms(META, **args)

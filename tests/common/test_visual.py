"""Drawing: the pixels change where they should and nowhere else."""
import numpy as np
import pytest
import torch

from common.visual import (color_for, draw_boxes, draw_instances, draw_keypoints, draw_masks,
                           draw_semantic)


def gray(h=64, w=80):
    return np.full((h, w, 3), 100, np.uint8)


def test_color_for_is_deterministic_and_distinct():
    assert color_for(3) == color_for(3)
    colors = {color_for(i) for i in range(20)}
    assert len(colors) == 20
    assert all(0 <= c <= 255 for col in colors for c in col)


def test_draw_boxes_edges_in_class_colour():
    img = gray()
    out = draw_boxes(img, np.array([[10, 20, 50, 60]]), labels=[2], scores=[0.87],
                     class_names=["a", "b", "star"])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == 100).all()  # input untouched
    c = color_for(2)
    assert tuple(out[40, 10]) == c and tuple(out[40, 50]) == c and tuple(out[60, 30]) == c
    assert tuple(out[40, 30]) == (100, 100, 100)  # inside untouched
    assert tuple(out[5, 70]) == (100, 100, 100)   # far away untouched
    # the tag sits above the box, drawn in the box colour with some text pixels
    tag = out[5:19, 10:40].reshape(-1, 3)
    assert (tag == c).all(axis=1).sum() > 50 and not (tag == c).all()


def test_draw_boxes_accepts_tensors_and_explicit_colours():
    out = draw_boxes(torch.full((32, 32, 3), 0, dtype=torch.uint8), torch.tensor([[4.0, 4.0, 20.0, 20.0]]),
                     colors=[(255, 0, 0)])
    assert tuple(out[12, 4]) == (255, 0, 0)


def test_draw_masks_tints_region_and_outlines():
    img = gray()
    masks = np.zeros((1, 64, 80), np.float32)
    masks[0, 10:30, 20:50] = 0.9
    out = draw_masks(img, masks, colors=[(200, 0, 0)], alpha=0.5)
    assert tuple(out[20, 35]) == (150, 50, 50)  # half-way between grey and the colour
    assert tuple(out[10, 35]) == (200, 0, 0)    # contour in the full colour
    assert tuple(out[40, 35]) == (100, 100, 100)
    assert (out[:, :20] == 100).all()


def test_draw_masks_shape_mismatch():
    with pytest.raises(ValueError, match=r"masks of shape \(1, 10, 10\) do not match the image \(64, 80\)"):
        draw_masks(gray(), np.zeros((1, 10, 10), bool))


def test_draw_keypoints_threshold_and_skeleton():
    img = np.zeros((64, 64, 3), np.uint8)
    kps = np.array([[[10, 10, 2], [50, 10, 2], [30, 50, 0]]], np.float32)
    out = draw_keypoints(img, kps, skeleton=[(0, 1), (1, 2)])
    assert tuple(out[10, 10]) == color_for(0) and tuple(out[10, 50]) == color_for(1)
    assert tuple(out[10, 30]) == (255, 255, 255)   # the visible edge 0-1
    assert out[30, 40].sum() == 0 and out[50, 30].sum() == 0  # v=0: no dot, no edge 1-2
    with pytest.raises(ValueError, match=r"skeleton edge \(1, 3\) is out of range for 3 keypoints"):
        draw_keypoints(img, kps, skeleton=[(1, 3)])


def test_draw_instances_combines():
    img = gray()
    masks = np.zeros((2, 64, 80), bool)
    masks[0, 20:40, 10:30] = True
    masks[1, 20:40, 50:70] = True
    boxes = np.array([[10, 20, 30, 40], [50, 20, 70, 40]], np.float32)
    kps = np.zeros((2, 2, 3), np.float32)
    kps[1] = [[55, 30, 2], [65, 30, 2]]
    out = draw_instances(img, boxes=boxes, labels=[0, 3], scores=[0.9, 0.8], masks=masks,
                         keypoints=kps, class_names=["circle", "a", "b", "star"], skeleton=[(0, 1)])
    assert tuple(out[30, 10]) == color_for(0) and tuple(out[30, 70]) == color_for(3)  # box edges
    tinted = (np.asarray(color_for(0)) + 100) / 2
    assert np.abs(out[35, 20].astype(float) - tinted).max() <= 1  # mask interior tinted
    assert tuple(out[30, 60]) == color_for(3)  # skeleton line in the instance colour
    assert tuple(out[30, 55]) == color_for(0)  # keypoint 0 dot
    assert (out[45:, :] == 100).all()


def test_draw_semantic_tints_and_legend():
    img = gray(48, 48)
    label_map = np.zeros((48, 48), np.uint8)
    label_map[10:30, 10:30] = 2
    label_map[40:, :] = 255
    out = draw_semantic(img, label_map, ["background", "circle", "square"])
    assert out.shape[0] == 48 and out.shape[1] > 48  # legend panel on the right
    c2 = (np.asarray(color_for(2)) + 100) / 2
    assert np.abs(out[20, 20].astype(float) - c2).max() <= 1
    assert (out[45, :48] == 100).all()  # ignore left as is
    legend = out[:, 48:].reshape(-1, 3)
    # swatches of the two classes present, not of the absent one
    assert (legend == color_for(0)).all(axis=1).any() and (legend == color_for(2)).all(axis=1).any()
    assert not (legend == color_for(1)).all(axis=1).any()
    assert (legend.min(axis=1) > 200).sum() > 10  # names written in white


def test_draw_semantic_many_classes_wrap_into_columns():
    label_map = np.arange(64 * 64).reshape(64, 64) % 20
    out = draw_semantic(gray(64, 64), label_map, [f"c{i}" for i in range(20)])
    legend = out[:, 64:].reshape(-1, 3)
    assert all((legend == color_for(i)).all(axis=1).any() for i in range(20))


def test_draw_semantic_bad_value():
    with pytest.raises(ValueError, match="label map holds value 7, but there are only 3 class names"):
        draw_semantic(gray(8, 8), np.full((8, 8), 7), ["a", "b", "c"])


def test_bad_image():
    with pytest.raises(ValueError, match=r"expected an RGB uint8 image of shape \(H, W, 3\), got float32"):
        draw_boxes(np.zeros((8, 8, 3), np.float32), np.zeros((0, 4)))

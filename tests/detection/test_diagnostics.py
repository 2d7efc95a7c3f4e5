"""detection.diagnostics on the shapes val split with hand-edited results: PR curves from
pycocotools' precision array, the confusion matrix counts, recall per image, the drawings."""
import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from detection.diagnostics import (coco_precision, confusion_matrix, draw_side_by_side, image_recalls,
                                   match_image, write_diagnostics)


@pytest.fixture(scope="module")
def gt(shapes_dir):
    return COCO(str(shapes_dir / "val.json"))


def perfect(gt) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
            for a in gt.loadAnns(gt.getAnnIds()) if not a["iscrowd"]]


def test_confusion_matrix_counts_swaps_misses_and_extras(gt):
    results = perfect(gt)
    cats = sorted(gt.getCatIds())
    k = len(cats)
    expected = np.zeros((k + 1, k + 1), int)
    for r in results:
        expected[cats.index(r["category_id"]), cats.index(r["category_id"])] += 1
    a, b, c = results[0], results[1], results[2]
    true, other = cats.index(a["category_id"]), (cats.index(a["category_id"]) + 1) % k
    a["category_id"] = cats[other]                 # a swapped class: off the diagonal
    expected[true, true] -= 1
    expected[true, other] += 1
    b["score"] = 0.3                               # below the threshold: its gt box is missed
    expected[cats.index(b["category_id"]), cats.index(b["category_id"])] -= 1
    expected[cats.index(b["category_id"]), k] += 1
    # a 4 px box in a corner overlaps no gt box with IoU >= 0.5 (they are >= 9 px): a false positive
    results.append({"image_id": c["image_id"], "category_id": c["category_id"], "score": 0.8, "bbox": [0, 0, 4, 4]})
    expected[k, cats.index(c["category_id"])] += 1
    cm = confusion_matrix(gt, results, score_thresh=0.5, iou_thresh=0.5)
    assert cm["classes"][-1] == "background" and len(cm["classes"]) == k + 1
    np.testing.assert_array_equal(np.array(cm["counts"]), expected)


def test_matching_is_one_to_one_by_score():
    gt_boxes = np.array([[0, 0, 10, 10]], float)
    dets = np.array([[0, 0, 10, 10], [1, 0, 10, 10]], float)
    # both overlap the one gt box; the higher-scoring (second) takes it, the other is unmatched
    m = match_image(gt_boxes, np.array([1]), dets, np.array([1, 1]), np.array([0.5, 0.9]), 0.5, same_class=True)
    assert m.tolist() == [-1, 0]
    m = match_image(gt_boxes, np.array([1]), dets, np.array([2, 2]), np.array([0.5, 0.9]), 0.5, same_class=True)
    assert m.tolist() == [-1, -1]


def test_precision_array_and_worst_images(gt, shapes_dir, tmp_path):
    results = perfect(gt)
    precision, ev = coco_precision(gt, results)
    assert precision.shape == (10, 101, len(gt.getCatIds()), 4, 3)
    assert (precision[0, :, :, 0, -1] == 1).all()  # every class found exactly: precision 1 at every recall
    # drop every detection of image 2: it is the worst image, recall 0
    results = [r for r in results if r["image_id"] != 2]
    recalls = image_recalls(gt, results)
    assert recalls[0][:2] == (2, 0.0) and all(r == 1.0 for _, r, _ in recalls[1:])
    paths = write_diagnostics(gt, results, tmp_path / "plots", shapes_dir / "val", num_worst=2)
    names = sorted(p.relative_to(tmp_path / "plots").as_posix() for p in paths)
    assert names[:3] == ["confusion_matrix.json", "confusion_matrix.png", "pr_bbox.png"]
    worst = sorted((tmp_path / "plots" / "worst").iterdir())
    assert worst[0].name == "00_recall000_000002.jpg" and len(worst) == 2
    info = gt.imgs[2]
    drawn = cv2.imread(str(worst[0]))
    assert drawn.shape == (info["height"], 2 * info["width"] + 8, 3)
    counts = json.loads((tmp_path / "plots" / "confusion_matrix.json").read_text())["counts"]
    assert sum(row[-1] for row in counts) == len(gt.getAnnIds(imgIds=[2], iscrowd=False))


def test_side_by_side_draws_gt_left_and_detections_right(gt, shapes_dir):
    image = cv2.cvtColor(cv2.imread(str(shapes_dir / "val" / "000001.jpg")), cv2.COLOR_BGR2RGB)
    out = draw_side_by_side(image, gt, 1, [], 0.5)
    w = image.shape[1]
    right = out[:, w + 8:]
    assert np.abs(out[:-12, :w].astype(int) - image[:-12].astype(int)).mean() > 1.0  # boxes drawn on the gt side
    assert np.abs(right[:-12].astype(int) - image[:-12].astype(int)).mean() < 0.5   # no detections: untouched

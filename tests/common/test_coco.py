"""common.coco: one COCO reader and one set of checks, used by detection and segmentation alike.
Every bad-input case asserts its message; coco_problems lists all problems, not the first."""
import json

import numpy as np
import pytest

from common.coco import DatasetError, coco_problems, load_coco_json, without_images
from segmentation.data import load_coco_semantic



def small_coco():
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                   {"id": 2, "file_name": "b.png", "height": 20, "width": 30}],
        "categories": [{"id": 4, "name": "box"}, {"id": 9, "name": "walker", "keypoints": ["head", "foot"]}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 4, "bbox": [2, 2, 10, 10],
             "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": [[5, 5, 15, 5, 15, 15]], "keypoints": [6, 6, 2, 10, 14, 1]},
        ],
    }


def write(tmp_path, data, name="train.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    (tmp_path / "train").mkdir(exist_ok=True)
    return path


def test_every_problem_is_listed_with_file_image_and_value(tmp_path):
    d = small_coco()
    d["annotations"] += [
        {"id": 3, "image_id": 77, "category_id": 4, "bbox": [1, 1, 2, 2]},
        {"id": 4, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2]},
        {"id": 5, "image_id": 2, "category_id": 4, "bbox": [1, float("nan"), 2, 2]},
        {"id": 6, "image_id": 2, "category_id": 4, "bbox": [1, 1, 2, 2], "segmentation": {"size": [3, 3], "counts": [9]}},
        {"id": 7, "image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2], "keypoints": [1, 2, 2]},
    ]
    messages = [p.message for p in coco_problems(d, "t.json")]
    assert messages == [
        "t.json: annotation 3 points at unknown image_id 77",
        "t.json: annotation 4 (image 1) has unknown category_id 5 (known: [4, 9])",
        "t.json: annotation 5 (image 2) has a bbox that is not 4 finite numbers: [1, nan, 2, 2]",
        "t.json: annotation 6 (image 2) has an RLE of size [3, 3] but the image is [20, 30]",
        "t.json: annotation 7 (image 1) has 3 keypoint values; expected 3 x 2 = 6",
    ]
    assert [p.image_id for p in coco_problems(d, "t.json")] == [77, 1, 2, 2, 1]
    assert coco_problems(small_coco(), "t.json") == []


def test_load_raises_the_first_and_counts_the_rest(tmp_path):
    d = small_coco()
    d["annotations"][0]["bbox"] = [1, 2]
    d["annotations"][1]["bbox"] = "x"
    path = write(tmp_path, d)
    with pytest.raises(DatasetError, match=r"^.*train\.json: annotation 1 \(image 1\) has a bbox that is not 4 finite "
                                           r"numbers: \[1, 2\] \(and 1 more problem; tools/check_dataset\.py lists "
                                           r"them all\)$"):
        load_coco_json(path)
    # leaving the two images out leaves nothing wrong
    assert load_coco_json(path, skip_image_ids=[1, 2]).dataset["images"] == []
    assert without_images(d, [1])["annotations"] == [d["annotations"][1]]


def test_missing_annotations_key_is_a_test_set_file(tmp_path):
    d = small_coco()
    del d["annotations"]
    assert load_coco_json(write(tmp_path, d)).dataset["annotations"] == []


def test_dataset_error_from_a_worker_keeps_only_the_sentence():
    wrapped = ("Caught DatasetError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 3, in f\n    raise DatasetError(m)\n'
               "common.coco.DatasetError: image file a.png (image id 3) does not exist\n")
    assert str(DatasetError(wrapped)) == "image file a.png (image id 3) does not exist"
    assert str(DatasetError("plain: one line")) == "plain: one line"


# ---- the segmentation COCO path runs the same checks ---------------------------------------------

def first_ann(**fields):
    """An edit of small_coco(): its first annotation with ``fields`` changed."""
    def edit(d):
        d["annotations"][0].update(fields)
        return d
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda d: [], r"train\.json: the top level must be a JSON object with 'images', 'annotations' and "
                   r"'categories', got list$"),
    (first_ann(image_id=99), r"train\.json: annotation 1 points at unknown image_id 99$"),
    (first_ann(category_id=3),
     r"train\.json: annotation 1 \(image 1\) has unknown category_id 3 \(known: \[4, 9\]\)$"),
    (first_ann(segmentation=[[1, 2, 3]]),
     r"train\.json: annotation 1 \(image 1\) has a polygon that is not an even-length list of coordinates: \[1, 2, 3\]$"),
])
def test_segmentation_coco_reader_checks_like_the_detector(tmp_path, edit, message):
    path = write(tmp_path, edit(small_coco()))
    with pytest.raises(DatasetError, match=message):
        load_coco_semantic(path, tmp_path / "train")


def test_segmentation_bad_json_names_the_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"^.*train\.json is not valid JSON \(Expecting property name"):
        load_coco_semantic(path, tmp_path)


def test_segmentation_two_point_polygon_is_dropped_not_a_crash(tmp_path):
    d = small_coco()
    d["annotations"][0]["segmentation"] = [[2, 2, 12, 12], [2, 2, 12, 2, 12, 12, 2, 12]]  # a 2-point part
    d["annotations"][1]["segmentation"] = [[5, 5, 15, 15]]  # only a 2-point polygon: nothing painted
    ds = load_coco_semantic(write(tmp_path, d), tmp_path / "train")
    lab1, lab2 = ds.read_label(0), ds.read_label(1)
    assert (lab1 == 1).sum() == 100 and np.unique(lab2).tolist() == [0]

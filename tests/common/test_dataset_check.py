"""common.dataset_check: every image and label map decoded once (missing, empty, truncated, wrong
size, class ids out of range found), all problems listed, the summary, the cache, skipping."""
import json

import cv2
import numpy as np
import pytest

from common.coco import DatasetError
from common.dataset_check import check_label_split, check_split, check_splits, format_summary, report_checks


def make_dataset(root, n=4):
    """root/train.json + root/train/ with n 40x60 JPEGs, one box each (category 1), keypoints on image 0."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        cv2.imwrite(str(root / "train" / f"{i}.jpg"), rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 40, "width": 60})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 10 + i, 20],
                     "area": 200, "iscrowd": 0, "keypoints": [6, 6, 2, 8, 8, 1] if i == 0 else [0, 0, 0, 0, 0, 0]})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "thing", "keypoints": ["a", "b"]}, {"id": 2, "name": "other"}]}
    (root / "train.json").write_text(json.dumps(data))
    return root / "train.json", root / "train"


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_every_image_problem_listed_with_file_id_and_value(tmp_path):
    ann, images = make_dataset(tmp_path, 5)
    (images / "0.jpg").unlink()
    (images / "1.jpg").write_bytes(b"")
    truncate(images / "2.jpg")
    cv2.imwrite(str(images / "3.jpg"), np.zeros((30, 60, 3), np.uint8))
    check = check_split(ann, images, cache_dir=tmp_path / "cache")
    assert [p.image_id for p in check.problems] == [1, 2, 3, 4]
    messages = [p.message.replace(str(images), "D") for p in check.problems]
    assert messages[0] == "image file D/0.jpg (image id 1) does not exist"
    assert messages[1] == "image file D/1.jpg (image id 2) is empty (0 bytes)"
    assert messages[2].startswith("image file D/2.jpg (image id 3) is truncated or corrupt (image file is truncated")
    assert messages[3] == "image file D/3.jpg (image id 4) is 30x60 (h x w) but train.json says 40x60"


def test_truncated_png_is_caught(tmp_path):
    ann, images = make_dataset(tmp_path, 1)
    data = json.loads(ann.read_text())
    data["images"][0]["file_name"] = "0.png"
    ann.write_text(json.dumps(data))
    cv2.imwrite(str(images / "0.png"), np.full((40, 60, 3), 7, np.uint8))
    truncate(images / "0.png")
    [problem] = check_split(ann, images, cache_dir=tmp_path / "cache").problems
    assert problem.message.endswith("0.png (image id 1) is truncated or corrupt (image file is truncated)")


def test_summary(tmp_path):
    ann, images = make_dataset(tmp_path, 3)
    data = json.loads(ann.read_text())
    data["images"].append({"id": 9, "file_name": "0.jpg", "height": 40, "width": 60})  # no annotation
    data["annotations"].append({"id": 9, "image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 40], "iscrowd": 1})
    ann.write_text(json.dumps(data))
    check = check_split(ann, images, cache_dir=tmp_path / "cache")
    s = check.summary
    assert (s["images"], s["empty_images"], s["instances"], s["crowd"]) == (4, 1, {"thing": 3, "other": 0}, 1)
    assert s["box_w"] == [10.0, 12.0] and s["box_h"] == [20.0, 20.0]
    assert s["keypoints"] == {"v0": 4, "v1": 1, "v2": 1}
    text = format_summary(check)
    assert "4 images, 1 without instances; 3 instances, 1 crowd" in text
    assert "box width 10.0-12.0 px, height 20.0-20.0 px; sqrt(area): 8-16 3" in text
    assert "keypoints: 1 visible (v=2), 1 occluded (v=1), 4 unlabelled (v=0)" in text


def test_second_run_decodes_nothing_until_a_file_changes(tmp_path):
    ann, images = make_dataset(tmp_path, 4)
    cache = tmp_path / "cache"
    assert check_split(ann, images, cache_dir=cache).decoded == 4
    again = check_split(ann, images, cache_dir=cache)
    assert again.decoded == 0 and again.problems == [] and again.summary["images"] == 4
    truncate(images / "1.jpg")  # size and mtime change: only that image is decoded again
    third = check_split(ann, images, cache_dir=cache)
    assert third.decoded == 1 and [p.image_id for p in third.problems] == [2]
    data = json.loads(ann.read_text())  # a changed JSON is read again (images whose entry is the same are not)
    data["annotations"][0]["bbox"] = [1, 2]
    ann.write_text(json.dumps(data))
    fourth = check_split(ann, images, cache_dir=cache)
    assert [p.image_id for p in fourth.problems] == [1, 2] and "bbox that is not 4 finite" in fourth.problems[0].message


def test_check_splits_fails_with_every_problem_or_skips_and_lists(tmp_path, capsys):
    ann, images = make_dataset(tmp_path, 4)
    (images / "0.jpg").unlink()
    truncate(images / "3.jpg")
    with pytest.raises(DatasetError, match=r"^2 problems in .*train\.json \(listed above, one per line\); fix them "
                                           r"or set data.skip_bad_images=true to leave those images out$"):
        check_splits([(ann, images)], log=lambda s: None)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("problem: image file ") and "0.jpg (image id 1) does not exist" in err[0]
    run = tmp_path / "run"
    logged = []
    result = check_splits([(ann, images)], skip_bad_images=True, run_dir=run, log=logged.append)
    assert result.skip_ids(ann) == {1, 4}
    skipped = (run / "skipped_images.txt").read_text().splitlines()
    assert len(skipped) == 2 and skipped[0].endswith("0.jpg (image id 1) does not exist")
    assert logged[-1] == f"dataset check: skipping 2 bad images (data.skip_bad_images=true); the list is in {run}/skipped_images.txt"


def test_a_missing_image_folder_cannot_be_skipped(tmp_path):
    ann, images = make_dataset(tmp_path, 1)
    with pytest.raises(DatasetError, match=r"^1 problem in .*train\.json \(listed above, one per line\); fix them$"):
        check_splits([(ann, tmp_path / "nope")], skip_bad_images=True, log=lambda s: None)


def test_an_image_entry_without_a_size_is_one_problem_not_a_crash(tmp_path):
    ann, images = make_dataset(tmp_path, 2)
    data = json.loads(ann.read_text())
    del data["images"][0]["height"]
    data["images"][1]["width"] = float("nan")
    ann.write_text(json.dumps(data))
    check = check_split(ann, images, cache_dir=tmp_path / "cache")
    assert [p.message.replace(str(ann), "A") for p in check.problems] == [
        "A: image 1 has no 'height'", "A: image 2 (1.jpg) has width nan and height 40; expected positive numbers"]


def make_label_split(root, n=5):
    """root/img/{i}.jpg (20x30) with root/lab/{i}.png: single-channel class ids 0..2 and 255 (ignore)."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    items = []
    for i in range(n):
        cv2.imwrite(str(root / "img" / f"{i}.jpg"), np.full((20, 30, 3), 40 * i, np.uint8))
        lab = np.zeros((20, 30), np.uint8)
        lab[5:10, 5:10], lab[0, 0] = 2, 255
        Image.fromarray(lab, mode="L").save(root / "lab" / f"{i}.png")
        items.append((f"{i:03d}", root / "img" / f"{i}.jpg", root / "lab" / f"{i}.png"))
    return items


def test_every_label_map_problem_listed_with_file_id_and_value(tmp_path):
    from PIL import Image

    items = make_label_split(tmp_path, 7)
    lab = tmp_path / "lab"
    (lab / "0.png").unlink()
    (lab / "1.png").write_bytes(b"")
    truncate(lab / "2.png")
    Image.fromarray(np.zeros((19, 30), np.uint8), mode="L").save(lab / "3.png")
    bad_values = np.zeros((20, 30), np.uint8)
    bad_values[0, :3] = [3, 7, 255]  # 255 is the ignore value: not a problem
    Image.fromarray(bad_values, mode="L").save(lab / "4.png")
    Image.new("RGB", (30, 20)).save(lab / "5.png")
    (tmp_path / "img" / "6.jpg").unlink()
    check = check_label_split(lab, tmp_path / "img", items, 3, 255, cache_dir=tmp_path / "cache")
    assert [p.image_id for p in check.problems] == ["000", "001", "002", "003", "004", "005", "006"]
    assert {p.file for p in check.problems} == {str(lab)}
    messages = [p.message.replace(str(tmp_path), "D") for p in check.problems]
    assert messages[0] == "label file D/lab/0.png (image id 000) does not exist"
    assert messages[1] == "label file D/lab/1.png (image id 001) is empty (0 bytes)"
    assert messages[2].startswith("label file D/lab/2.png (image id 002) is truncated or corrupt (")
    assert messages[3] == "label file D/lab/3.png (image id 003) is 19x30 (h x w) but its image 3.jpg is 20x30"
    assert messages[4] == ("label file D/lab/4.png (image id 004) holds class ids 3, 7, outside the 3 classes "
                           "0..2 (ignore index 255)")
    assert messages[5] == ("label file D/lab/5.png (image id 005) is a RGB image; expected single-channel class "
                           "ids or a palette PNG")
    assert messages[6] == "image file D/img/6.jpg (image id 006) does not exist"
    assert check.summary["images"] == 7


def test_label_maps_are_cached_until_a_file_or_the_classes_change(tmp_path):
    items = make_label_split(tmp_path, 3)
    args = (tmp_path / "lab", tmp_path / "img", items)
    cache = tmp_path / "cache"
    assert check_label_split(*args, 3, 255, cache_dir=cache).decoded == 3
    assert check_label_split(*args, 3, 255, cache_dir=cache).decoded == 0
    truncate(tmp_path / "lab" / "1.png")
    third = check_label_split(*args, 3, 255, cache_dir=cache)
    assert third.decoded == 1 and [p.image_id for p in third.problems] == ["001"]
    fewer = check_label_split(*args, 2, 255, cache_dir=cache)  # class 2 is out of range now: every map again
    assert fewer.decoded == 3 and [p.image_id for p in fewer.problems] == ["000", "001", "002"]


def test_label_problems_stop_or_skip_like_coco_ones(tmp_path, capsys):
    items = make_label_split(tmp_path, 3)
    (tmp_path / "lab" / "2.png").unlink()

    def checks():
        return [check_label_split(tmp_path / "lab", tmp_path / "img", items, 3, 255, cache_dir=tmp_path / "c")]

    with pytest.raises(DatasetError, match=r"^1 problem in .*lab \(listed above, one per line\); fix them or set "
                                           r"data.skip_bad_images=true to leave those images out$"):
        report_checks(checks, log=lambda s: None)
    assert capsys.readouterr().err.splitlines() == [f"problem: label file {tmp_path}/lab/2.png (image id 002) does not exist"]
    result = report_checks(checks, skip_bad_images=True, run_dir=tmp_path / "run", log=lambda s: None)
    assert result.skip_ids(tmp_path / "lab") == {"002"}
    assert (tmp_path / "run" / "skipped_images.txt").read_text() == \
        f"label file {tmp_path}/lab/2.png (image id 002) does not exist\n"

"""detection/build.py, data side: where the data is, and train/val consistency; bad input names the value."""
import json
import re
import shutil

import pytest

from common.config import load_config
from detection.build import build_datasets, meta_for_old_checkpoint, resolve_data_paths
from detection.config import DataConfig, DetConfig
from detection.data import DatasetError


def test_synthetic_layout_resolves(shapes_dir):
    paths = resolve_data_paths(DataConfig(), str(shapes_dir))
    assert paths.train_json == shapes_dir / "train.json" and paths.val_images == shapes_dir / "val"


def test_explicit_paths_need_all_four(shapes_dir):
    cfg = DataConfig(train_json=str(shapes_dir / "train.json"), train_images=str(shapes_dir / "train"))
    with pytest.raises(DatasetError, match="missing: data.val_json, data.val_images"):
        resolve_data_paths(cfg)


def test_missing_image_folder_is_named(shapes_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.json", "val.json"):
        shutil.copy(shapes_dir / name, data / name)
    (data / "train").mkdir()
    with pytest.raises(DatasetError, match=rf"image folder not found: {data / 'val'} \(data.val_images\)"):
        resolve_data_paths(DataConfig(), str(data))


def test_train_and_val_must_share_categories(shapes_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    val = json.loads((data / "val.json").read_text())
    val["categories"] = [c for c in val["categories"] if c["id"] != 7]
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] != 7]
    (data / "val.json").write_text(json.dumps(val))
    cfg = load_config(DetConfig, None, ["model.mask_on=true"])
    with pytest.raises(DatasetError, match=r"has categories \[1, 3, 5\] but .*train.json has \[1, 3, 5, 7\]"):
        build_datasets(cfg, resolve_data_paths(cfg.data, str(data)))


def test_data_that_is_a_file_says_so(shapes_dir):
    with pytest.raises(DatasetError, match=rf"^dataset folder {shapes_dir / 'train.json'} is a file, not a folder; "
                                           r"a dataset folder holds train\.json, val\.json, train/ and val/ \(or give "
                                           r"data\.train_json, data\.train_images, data\.val_json and data\.val_images\)$"):
        resolve_data_paths(DataConfig(), str(shapes_dir / "train.json"))


def _one_split_dataset(shapes_dir, tmp_path, edit):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    train = json.loads((data / "train.json").read_text())
    edit(train)
    (data / "train.json").write_text(json.dumps(train))
    return data


@pytest.mark.parametrize("edit, why", [
    (lambda d: d.pop("annotations"), r" \(it has no annotations at all\): data\.filter_empty=true drops images "
                                     r"without a usable instance, and 12 have no annotations;"),
    (lambda d: [a.update(bbox=[1, 1, 0.5, 0.5]) for a in d["annotations"]],
     r": data\.filter_empty=true drops images without a usable instance, and 12 have only degenerate boxes "
     r"\(side < 1 px after clipping\), crowd annotations or instances without a valid polygon;"),
    (lambda d: [a.update(iscrowd=1) for a in d["annotations"]],
     r": data\.filter_empty=true drops images without a usable instance, and 12 have only crowd annotations;"),
])
@pytest.mark.filterwarnings("ignore::detection.data.DatasetWarning")
def test_empty_training_set_names_the_file_the_reasons_and_the_setting(shapes_dir, tmp_path, edit, why):
    data = _one_split_dataset(shapes_dir, tmp_path, edit)
    cfg = load_config(DetConfig, None, ["model.mask_on=false", "model.keypoint_on=false"])
    with pytest.raises(DatasetError, match=rf"^{data / 'train.json'}: none of its 12 images is left for training"
                                           rf"{why} set data\.filter_empty=false to train on them as background only$"):
        build_datasets(cfg, resolve_data_paths(cfg.data, str(data)))


def test_an_old_checkpoint_takes_its_classes_from_an_annotation_file(shapes_dir, tmp_path, capsys):
    meta = meta_for_old_checkpoint("old.pth", shapes_dir / "val.json")
    categories = json.loads((shapes_dir / "val.json").read_text())["categories"]
    assert meta.class_names == [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    assert f"note: old.pth has no dataset metadata; classes are read from {shapes_dir / 'val.json'}" in \
        capsys.readouterr().out
    missing = tmp_path / "val.json"
    with pytest.raises(DatasetError, match=rf"old\.pth has no dataset metadata \(class names\) and "
                                           rf"{re.escape(str(missing))} does not exist"):
        meta_for_old_checkpoint("old.pth", missing)

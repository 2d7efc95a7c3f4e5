"""tools/browse_dataset.py: one drawing per image, ground truth visibly drawn, one-line errors."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np

import common.shapes
from common.visual import color_for
from detection.data import CocoDetection

import tool_helpers

ROOT = tool_helpers.ROOT
TOOL = ROOT / "tools" / "browse_dataset.py"


def load_tool():
    return tool_helpers.load_tool("browse_dataset")


def read_rgb(path):
    return cv2.imread(str(path))[:, :, ::-1]


def test_draws_every_image_with_semantic_panel(shapes_dir, tmp_path, capsys):
    out = tmp_path / "vis"
    assert load_tool().main(["--data", str(shapes_dir), "--out", str(out)]) == 0
    assert "wrote 6 drawings" in capsys.readouterr().out
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(1, 7)]

    dataset = CocoDetection(shapes_dir / "val.json", shapes_dir / "val")
    image, target = dataset.load_numpy(0)
    h, w = image.shape[:2]
    drawing = read_rgb(files[0])
    assert drawing.shape[0] == h and drawing.shape[1] > 2 * w  # instances | gap | semantic + legend
    left = drawing[:, :w].reshape(-1, 3)
    for label in np.unique(target["gt_classes"]):  # every class present is drawn in its colour
        assert (left == color_for(int(label))).all(axis=1).sum() > 10, dataset.meta.class_names[label]
    assert (drawing[:, w:w + 4] == 255).all()  # the white gap between the panels


def test_limit_scale_and_default_dataset(shapes_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(common.shapes, "ensure_shapes_dataset", lambda: shapes_dir)
    out = tmp_path / "vis"
    assert load_tool().main(["--out", str(out), "--limit", "2", "--scale", "2"]) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 2
    h = json.loads((shapes_dir / "val.json").read_text())["images"][0]["height"]
    assert read_rgb(files[0]).shape[0] == 2 * h


def test_without_semantic_maps_draws_instances_only(shapes_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    (data / "semantic.json").unlink()
    out = tmp_path / "vis"
    assert load_tool().main(["--data", str(data), "--split", "train", "--out", str(out), "--limit", "3"]) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 3
    assert read_rgb(files[0]).shape == cv2.imread(str(data / "train" / "000001.jpg")).shape


def test_bad_data_path_one_line_exit_2(tmp_path, capsys):
    # in-process: a subprocess would spend seconds importing torch (tools/eval_coco's test runs
    # the script itself, through the same sys.path line)
    assert load_tool().main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "vis")]) == 2
    err = capsys.readouterr().err
    assert err == f"browse_dataset: error: dataset directory {tmp_path / 'missing'} does not exist\n"
    assert not (tmp_path / "vis").exists()


def test_missing_split_and_broken_semantic_json(shapes_dir, tmp_path, capsys):
    tool = load_tool()
    assert tool.main(["--data", str(shapes_dir), "--split", "test", "--out", str(tmp_path / "v")]) == 2
    assert f"dataset directory {shapes_dir} has no test.json (found: " in capsys.readouterr().err
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    (data / "semantic.json").write_text("{")
    assert tool.main(["--data", str(data), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"browse_dataset: error: {data / 'semantic.json'} is not a semantic class file")
    assert len(err.splitlines()) == 1

"""tools/check_dataset.py on a copy of the shapes fixture (COCO and label-map layouts): problems
one per line, the summary, the plot, the exit status; bad arguments are one line."""
import re
import shutil

import pytest

from tool_helpers import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("check_dataset")


def test_lists_problems_summary_and_plot(tool, shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    bad = sorted((data / "val").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:300])  # cut short
    out = tmp_path / "out"
    assert tool.main(["--data", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"problem: image file {bad} \(image id \d+\) is truncated or corrupt \(.+\)", lines[0]), lines[0]
    assert f"{data / 'train.json'} (images in {data / 'train'})" in lines
    assert any(re.fullmatch(r"  12 images, \d+ without instances; \d+ instances, \d+ crowd", x) for x in lines)
    assert lines[-1] == f"1 problem in {data / 'train.json'}, {data / 'val.json'}"
    assert (out / "dataset_check.png").stat().st_size > 1000
    # the split flags of train_det; the val split alone is clean
    args = ["--train-json", str(data / "train.json"), "--train-images", str(data / "train"), "--out", str(out)]
    assert tool.main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no problems"


@pytest.mark.parametrize("args, message", [
    (["--data", "FILE"], r"--data .*FILE is a file, not a folder; a dataset folder holds train\.json, val\.json, "
                         r"train/ and val/"),
    (["--data", "NOPE"], r"dataset folder .*NOPE does not exist"),
    (["--train-json", "x.json"], r"--train-json and --train-images go together"),
    ([], r"give --data DIR"),
])
def test_bad_arguments_are_one_line(tool, tmp_path, capsys, args, message):
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / a) if a in ("FILE", "NOPE") else a for a in args]
    assert tool.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_label_map_layouts(tool, shapes_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    bad = sorted((data / "val_semantic").iterdir())[0]
    lab = np.array(Image.open(bad))
    lab[0, 0] = 5  # the shapes have classes 0..4
    Image.fromarray(lab, mode="L").save(bad)
    args = ["--data", str(data), "--format", "semantic_dir", "--cache-dir", str(tmp_path / "c")]
    assert tool.main(args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"problem: label file {bad} (image id {bad.stem}) holds class id 5, outside the 5 classes "
                        "0..4 (ignore index 255)")
    assert lines[1:4] == [f"{data / 'train_semantic'} (images in {data / 'train'})",
                          "  12 images with label maps of 5 classes", "  problems: none"]
    assert lines[-1] == f"1 problem in {data / 'train_semantic'}, {data / 'val_semantic'}"
    assert tool.main(["--data", str(data), "--format", "voc"]) == 2
    assert capsys.readouterr().err == (f"check_dataset: error: {data} holds no train or val split; a data.format=voc "
                                       "folder holds JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/\n")

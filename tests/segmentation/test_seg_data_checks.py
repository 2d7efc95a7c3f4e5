"""The segmentation tools and bad data: every layout gets the start-up dataset check before any work
(COCO: the detectors' check; semantic_dir: every image and label map decoded, sizes and class ids
checked), in train_seg, eval_seg and benchmark_seg alike; a DataLoader worker's error is one line;
--data FILE says it is a file."""
import shutil

import numpy as np
import pytest
from PIL import Image

from tool_helpers import TINY_SEG, load_tool


@pytest.fixture(scope="module")
def train_seg():
    return load_tool("train_seg")


def test_coco_layout_problems_stop_before_training(train_seg, shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    missing = sorted((data / "val").iterdir())[1]
    missing.unlink()
    out = tmp_path / "run"
    assert train_seg.main(["--data", str(data), "--output", str(out), "--max-iters", "2", *TINY_SEG,
                           "data.format=coco"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"problem: image file {missing} (image id ") and err[0].endswith("does not exist")
    assert err[1] == (f"train_seg: error: 1 problem in {data / 'val.json'} (listed above, one per line); fix them "
                      "or set data.skip_bad_images=true to leave those images out")
    assert not any(out.glob("*.pth"))


def test_coco_layout_skips_bad_images_on_request(train_seg, shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    bad = sorted((data / "train").iterdir())[3]
    bad.write_bytes(b"")
    out = tmp_path / "run"
    assert train_seg.main(["--data", str(data), "--output", str(out), "--max-iters", "1", *TINY_SEG,
                           "data.format=coco", "data.skip_bad_images=true"]) == 0
    [line] = (out / "skipped_images.txt").read_text().splitlines()
    assert line.startswith(f"image file {bad} (image id ") and line.endswith("is empty (0 bytes)")


def test_worker_error_is_one_line(train_seg, shapes_dir, tmp_path, capsys, monkeypatch):
    import segmentation.build

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    checked = segmentation.build.check_data

    def check_then_break(*args, **kwargs):  # the files change after the start-up check
        result = checked(*args, **kwargs)
        for image in (data / "train").iterdir():
            image.write_bytes(b"")
        return result

    monkeypatch.setattr(segmentation.build, "check_data", check_then_break)
    assert train_seg.main(["--data", str(data), "--output", str(tmp_path / "run"), "--max-iters", "2", *TINY_SEG,
                           "data.num_workers=2"]) == 2
    err = capsys.readouterr().err  # no progress bar: stderr is not a terminal
    assert len(err.splitlines()) == 1 and "Caught" not in err
    assert err.startswith(f"train_seg: error: image file {data / 'train'}/0000")
    assert err.endswith(" cannot be read as an image\n")


def test_data_file_says_it_is_a_file(train_seg, shapes_dir, tmp_path, capsys):
    assert train_seg.main(["--data", str(shapes_dir / "train.json"), "--output", str(tmp_path / "r"), *TINY_SEG,
                           "data.format=coco"]) == 2
    assert capsys.readouterr().err == (f"train_seg: error: dataset folder {shapes_dir / 'train.json'} is a file, "
                                       "not a folder; a data.format=coco dataset folder holds train.json, val.json, "
                                       "train/ and val/\n")


def break_label_maps(data):
    """Three faults in the semantic_dir copy ``data``: a class id out of range (with the ignore value
    beside it), a truncated PNG, a map smaller than its image. Returns the three label files."""
    maps = sorted((data / "train_semantic").iterdir())[:2] + sorted((data / "val_semantic").iterdir())[:1]
    lab = np.array(Image.open(maps[0]))
    lab[0, :2] = [9, 255]
    Image.fromarray(lab, mode="L").save(maps[0])
    maps[1].write_bytes(maps[1].read_bytes()[:100])
    Image.fromarray(np.array(Image.open(maps[2]))[:-4], mode="L").save(maps[2])
    return maps


def test_semantic_layout_problems_stop_before_training(train_seg, shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    values, truncated, small = break_label_maps(data)
    out = tmp_path / "run"
    assert train_seg.main(["--data", str(data), "--output", str(out), "--max-iters", "2", *TINY_SEG]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"problem: label file {values} (image id {values.stem}) holds class id 9, outside the 5 "
                      "classes 0..4 (ignore index 255)")
    assert err[1].startswith(f"problem: label file {truncated} (image id {truncated.stem}) is truncated or corrupt (")
    w, h = Image.open(data / "val" / f"{small.stem}.jpg").size
    assert err[2] == (f"problem: label file {small} (image id {small.stem}) is {h - 4}x{w} (h x w) but its image "
                      f"{small.stem}.jpg is {h}x{w}")
    assert err[3] == (f"train_seg: error: 3 problems in {data / 'train_semantic'}, {data / 'val_semantic'} (listed "
                      "above, one per line); fix them or set data.skip_bad_images=true to leave those images out")
    assert len(err) == 4 and not any(out.glob("*.pth"))


def test_semantic_layout_skips_bad_images_on_request(train_seg, shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    maps = break_label_maps(data)
    out = tmp_path / "run"
    assert train_seg.main(["--data", str(data), "--output", str(out), "--max-iters", "1", *TINY_SEG,
                           "data.skip_bad_images=true"]) == 0
    skipped = (out / "skipped_images.txt").read_text().splitlines()
    assert [line.split(" (image id")[0] for line in skipped] == [f"label file {m}" for m in maps]
    assert "dataset check: skipping 3 bad images (data.skip_bad_images=true)" in capsys.readouterr().out


def test_eval_seg_and_benchmark_seg_check_the_data_first(train_seg, shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    run = tmp_path / "run"
    assert train_seg.main(["--data", str(data), "--output", str(run), "--max-iters", "1", *TINY_SEG]) == 0
    capsys.readouterr()
    eval_seg = load_tool("eval_seg")
    assert eval_seg.main(["--checkpoint", str(run / "model_final.pth"), "--output", str(tmp_path / "e1")]) == 0
    # the same cache as train_seg's check: nothing is decoded again
    assert f"dataset check: {data / 'val_semantic'}: 6 images, no problems (cached)" in capsys.readouterr().out

    bad = sorted((data / "val_semantic").iterdir())[2]
    bad.write_bytes(b"")
    out = tmp_path / "e2"
    assert eval_seg.main(["--checkpoint", str(run / "model_final.pth"), "--output", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"problem: label file {bad} (image id {bad.stem}) is empty (0 bytes)",
        f"eval_seg: error: 1 problem in {data / 'val_semantic'} (listed above, one per line); fix them or set "
        "data.skip_bad_images=true to leave those images out"]
    assert not (out / "metrics.json").exists()
    assert eval_seg.main(["--checkpoint", str(run / "model_final.pth"), "--output", str(out),
                          "data.skip_bad_images=true"]) == 0
    assert (out / "skipped_images.txt").read_text().startswith(f"label file {bad} ")

    bench = load_tool("benchmark_seg")
    assert bench.main(["--data", str(data), "--max-iters", "1", "--rows", "unet", *TINY_SEG]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"benchmark_seg: error: 1 problem in {data / 'val_semantic'} (listed above, one per line); fix them or "
        "set data.skip_bad_images=true to leave those images out")

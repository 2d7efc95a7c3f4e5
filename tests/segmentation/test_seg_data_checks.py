"""tools/train_seg.py and bad data: the COCO layout gets the detectors' start-up check, a DataLoader
worker's error is one line, --data FILE says it is a file."""
import shutil

import numpy as np
import pytest
from PIL import Image

from tool_helpers import load_tool

TINY = ["--device", "cpu", "model.unet_width=4", "model.unet_depth=2", "data.crop_size=48",
        "solver.ims_per_batch=2", "solver.warmup_iters=0", "solver.checkpoint_period=0",
        "solver.eval_period=0", "solver.log_period=1", "data.num_vis=0"]

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def train_seg():
    return load_tool("train_seg")


def test_coco_layout_problems_stop_before_training(train_seg, shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    missing = sorted((data / "val").iterdir())[1]
    missing.unlink()
    out = tmp_path / "run"
    assert train_seg.main(["--data", str(data), "--output", str(out), "--max-iters", "2", *TINY,
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
    assert train_seg.main(["--data", str(data), "--output", str(out), "--max-iters", "1", *TINY,
                           "data.format=coco", "data.skip_bad_images=true"]) == 0
    [line] = (out / "skipped_images.txt").read_text().splitlines()
    assert line.startswith(f"image file {bad} (image id ") and line.endswith("is empty (0 bytes)")


def test_worker_error_is_one_line(train_seg, shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    for image in (data / "train").iterdir():  # the semantic_dir layout reads images only in the loader
        image.write_bytes(b"")
    assert train_seg.main(["--data", str(data), "--output", str(tmp_path / "run"), "--max-iters", "2", *TINY,
                           "data.num_workers=2"]) == 2
    err = capsys.readouterr().err  # no progress bar: stderr is not a terminal
    assert len(err.splitlines()) == 1 and "Caught" not in err
    assert err.startswith(f"train_seg: error: image file {data / 'train'}/0000")
    assert err.endswith(" cannot be read as an image\n")


def test_data_file_says_it_is_a_file(train_seg, shapes_dir, tmp_path, capsys):
    assert train_seg.main(["--data", str(shapes_dir / "train.json"), "--output", str(tmp_path / "r"), *TINY,
                           "data.format=coco"]) == 2
    assert capsys.readouterr().err == (f"train_seg: error: dataset folder {shapes_dir / 'train.json'} is a file, "
                                       "not a folder; a data.format=coco dataset folder holds train.json, val.json, "
                                       "train/ and val/\n")

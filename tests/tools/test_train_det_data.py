"""tools/train_det.py and bad data: every problem of both splits found before the first iteration
(one line each), skipping them on request, the empty training set, --data FILE."""
import json
import shutil

import pytest

from tool_helpers import TINY_DET, load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("train_det")


@pytest.fixture
def bad_data(shapes_dir, tmp_path):
    """A copy of the shapes data with a missing val image, an empty and a truncated train image."""
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    train, val = sorted((data / "train").iterdir()), sorted((data / "val").iterdir())
    val[2].unlink()
    train[0].write_bytes(b"")
    train[5].write_bytes(train[5].read_bytes()[:400])
    return data, [train[0], train[5], val[2]]


def test_problems_of_both_splits_stop_before_training(tool, bad_data, tmp_path, capsys):
    data, (empty, truncated, missing) = bad_data
    out = tmp_path / "run"
    assert tool.main(["--data", str(data), "--output", str(out), "--max-iters", "2", *TINY_DET]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4
    assert err[0].startswith(f"problem: image file {empty} (image id ") and err[0].endswith(") is empty (0 bytes)")
    assert err[1].startswith(f"problem: image file {truncated} (image id ") and ") is truncated or corrupt (" in err[1]
    assert err[2].startswith(f"problem: image file {missing} (image id ") and err[2].endswith(") does not exist")
    assert err[3] == (f"train_det: error: 3 problems in {data / 'train.json'}, {data / 'val.json'} (listed above, one per line); "
                      "fix them or set data.skip_bad_images=true to leave those images out")
    assert not any(out.glob("*.pth"))  # nothing trained


def test_skip_bad_images_trains_without_them_and_lists_them(tool, bad_data, tmp_path, capsys):
    data, bad = bad_data
    out = tmp_path / "run"
    args = ["--data", str(data), "--output", str(out), "--max-iters", "1", *TINY_DET, "data.skip_bad_images=true"]
    assert tool.main(args) == 0
    printed = capsys.readouterr().out
    assert (f"dataset check: skipping 3 bad images (data.skip_bad_images=true); the list is in "
            f"{out / 'skipped_images.txt'}") in printed
    skipped = (out / "skipped_images.txt").read_text().splitlines()
    assert [line.split(" (image id")[0] for line in skipped] == [f"image file {p}" for p in bad]
    results = json.loads((out / "results.json").read_text())
    assert (out / "model_final.pth").is_file() and results is not None


def test_second_run_reads_the_check_from_the_cache(tool, shapes_dir, tmp_path, capsys):
    args = ["--data", str(shapes_dir), "--max-iters", "1", *TINY_DET]
    assert tool.main(args + ["--output", str(tmp_path / "a")]) == 0
    assert tool.main(args + ["--output", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert f"dataset check: {shapes_dir / 'val.json'}: 6 images, no problems (cached)" in printed


def test_epochs_size_the_run_by_the_training_set_and_config_yaml_records_it(tool, shapes_dir, tmp_path, capsys):
    from common.config import load_config
    from detection.config import DetConfig

    out = tmp_path / "run"  # 12 training images, 2 per step: half an epoch is 3 steps
    assert tool.main(["--data", str(shapes_dir), "--output", str(out), *TINY_DET, "solver.time_budget_min=0",
                      "solver.epochs=0.5"]) == 0
    assert ("note: schedule: 3 iterations of 2 images = 0.5 epochs of 12 training images (solver.epochs=0.5; "
            "solver.epochs=0 uses solver.max_iters)") in capsys.readouterr().out
    assert load_config(DetConfig, out / "config.yaml").solver.max_iters == 3
    assert (out / "metrics.csv").read_text().splitlines()[1].startswith("3,train,")  # the last step run


def test_empty_training_set_is_one_line_without_the_head_notes(tool, shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    train = json.loads((data / "train.json").read_text())
    del train["annotations"]
    (data / "train.json").write_text(json.dumps(train))
    assert tool.main(["--data", str(data), "--output", str(tmp_path / "run"), "--max-iters", "2", *TINY_DET]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"train_det: error: {data / 'train.json'}: none of its 12 images is left for training (it has no "
                            "annotations at all): data.filter_empty=true drops images without a usable instance, and "
                            "12 have no annotations; set data.filter_empty=false to train on them as background only\n")
    assert "note:" not in captured.out


def test_data_file_is_one_line(tool, shapes_dir, tmp_path, capsys):
    assert tool.main(["--data", str(shapes_dir / "train.json"), "--output", str(tmp_path / "r"), *TINY_DET]) == 2
    assert capsys.readouterr().err == (f"train_det: error: dataset folder {shapes_dir / 'train.json'} is a file, not a folder; "
                                       "a dataset folder holds train.json, val.json, train/ and val/ (or give "
                                       "data.train_json, data.train_images, data.val_json and data.val_images)\n")


def test_pretrained_weights_with_trainable_bn_get_a_warning_that_names_frozen_bn(tool, shapes_dir, tmp_path, capsys):
    import torch
    from torchvision.models import resnet18

    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18(num_classes=10).state_dict(), weights)  # a classifier head of another class count
    args = ["--data", str(shapes_dir), "--max-iters", "1", *TINY_DET, "model.backbone.name=resnet18",
            f"model.backbone.weights={weights}", "solver.ims_per_batch=2"]
    assert tool.main(args + ["--output", str(tmp_path / "bn"), "model.backbone.norm=BN"]) == 0
    assert (f"warning: the backbone starts from pretrained weights ({weights}) but its BatchNorm trains on 2 images "
            f"per step (model.backbone.norm=BN); model.backbone.norm=FrozenBN") in capsys.readouterr().out
    assert tool.main(args + ["--output", str(tmp_path / "frozen"), "model.backbone.norm=FrozenBN"]) == 0
    assert "BatchNorm trains" not in capsys.readouterr().out


def test_adapt_bn_images_gives_the_frozen_statistics_the_training_images(tool, shapes_dir, tmp_path, capsys):
    import torch
    from torchvision.models import resnet18

    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18(num_classes=10).state_dict(), weights)  # statistics 0 / 1: not the data's
    args = ["--data", str(shapes_dir), "--max-iters", "1", *TINY_DET, "model.backbone.name=resnet18",
            f"model.backbone.weights={weights}", "model.backbone.norm=FrozenBN", "solver.ims_per_batch=2"]
    assert tool.main(args + ["--output", str(tmp_path / "a"), "model.backbone.adapt_bn_images=3"]) == 0
    out = capsys.readouterr().out
    assert ("note: backbone BatchNorm statistics from 3 training images (model.backbone.adapt_bn_images, AdaBN): "
            "20 layers, their means moved by") in out
    state = torch.load(tmp_path / "a" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert state["backbone.body.stem.bn1.running_mean"].abs().min() > 0  # the weights file's zeros are gone
    assert "adapt_bn_images: 3" in (tmp_path / "a" / "config.yaml").read_text()
    assert tool.main(args + ["--output", str(tmp_path / "b"), "model.backbone.adapt_bn_images=-1"]) == 2
    assert capsys.readouterr().err == ("train_det: error: model.backbone.adapt_bn_images = -1 must be >= 0 (0 keeps "
                                       "the backbone's BatchNorm statistics)\n")
    # R-CNN's backbone sees warped windows, not whole images: refused before its data is read
    rcnn = ["--data", str(shapes_dir), "--config", "configs/detection/rcnn_R18.yaml", "--max-iters", "1", *TINY_DET,
            "--output", str(tmp_path / "r"), "model.backbone.adapt_bn_images=3"]
    assert tool.main(rcnn) == 2
    assert capsys.readouterr().err == ("train_det: error: model.backbone.adapt_bn_images is for the end-to-end "
                                       "detectors, whose backbone sees whole images; R-CNN's sees warped windows, "
                                       "and its config trains BN on them (model.backbone.norm=BN)\n")

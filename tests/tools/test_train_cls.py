"""tools/train_cls.py: 2 iterations on a tiny generated ImageFolder set write a torchvision-format
classifier.pth that loads as a backbone; resume; the run folder is checked before any work; bad
input is one line."""
import json

import pytest
import torch
import torchvision

from classification.source_data import generate_source_dataset
from tool_helpers import assert_output_checked_first, files_of, load_tool

TINY = ["--no-progress", "--device", "cpu", "data.image_size=32", "data.num_workers=0",
        "solver.ims_per_batch=4", "solver.log_period=1", "solver.checkpoint_period=1", "eval_batch_size=8"]


@pytest.fixture(scope="module")
def tool():
    return load_tool("train_cls")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return generate_source_dataset(tmp_path_factory.mktemp("cls") / "data", num_train=2, num_val=1, size=40)


def test_two_iterations_write_a_torchvision_classifier(tool, folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert tool.main(["--data", str(folder), "--arch", "resnet18", "--output", str(out),
                      "--max-iters", "2", *TINY]) == 0
    state = torch.load(out / "classifier.pth", weights_only=True)
    reference = torchvision.models.resnet18(num_classes=10).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    assert (out / "plots" / "loss_curve.png").is_file()  # the run layout of common/tooling.py
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 2 and final["metadata"]["arch"] == "resnet18"
    assert torch.equal(final["model"]["net.conv1.weight"], state["conv1.weight"])
    assert "top-1" in capsys.readouterr().out

    # a finished run is not overwritten without --resume
    before = files_of(out)
    assert tool.main(["--data", str(folder), "--output", str(out), "--max-iters", "2", *TINY]) == 2
    assert capsys.readouterr().err == (f"train_cls: error: {out} already holds a train_cls run; pass --resume "
                                       "to continue it or choose another --output\n")
    assert files_of(out) == before

    # resumed from iteration 1 it ends with the same weights as the uninterrupted run
    (out / "last_checkpoint").write_text("model_0000001.pth")
    (out / "model_final.pth").unlink()
    assert tool.main(["--data", str(folder), "--output", str(out), "--max-iters", "2", "--resume", *TINY]) == 0
    again = torch.load(out / "classifier.pth", weights_only=True)
    assert all(torch.allclose(again[k].float(), state[k].float(), atol=1e-6) for k in state)

    from common.backbones import build_backbone
    backbone = build_backbone("resnet18", weights=out / "classifier.pth")
    assert torch.equal(backbone.body.stem.conv1.weight, state["conv1.weight"])


def test_bad_input_is_one_line(tool, tmp_path, capsys):
    assert tool.main(["--data", str(tmp_path / "none"), "--output", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"train_cls: error: image folder {tmp_path / 'none' / 'train'} does not exist " \
                  f"(expected {tmp_path / 'none' / 'train'}/<class>/<image> as in ImageNet)"
    assert tool.main(["--arch", "alexnet", "--output", str(tmp_path / "r"), *TINY]) == 2
    assert "unknown arch 'alexnet'; choose one of resnet18" in capsys.readouterr().err


def test_output_folder_is_checked_before_any_work(tool, tmp_path, capsys, monkeypatch):
    foreign = tmp_path / "foreign"  # someone else's results
    foreign.mkdir()
    (foreign / "config.yaml").write_text("model:\n  arch: unet\n")  # a train_seg config
    (foreign / "metrics.json").write_text("{}")
    assert_output_checked_first(lambda out, *extra: tool.main(["--data", str(tmp_path / "none"), "--output", str(out),
                                                               *TINY, *extra]),
                                "train_cls", foreign, capsys, monkeypatch)

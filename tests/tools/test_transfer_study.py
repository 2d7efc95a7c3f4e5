"""tools/transfer_study.py: seeded nested subsets, the arms' overrides, the table / JSON / PNG
writer on stubbed metrics, and a tiny real study that a second call resumes without training."""
import json

import pytest
import torch
import torchvision

from tool_helpers import TINY_DET, load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("transfer_study")


def test_subsets_are_seeded_fixed_and_nested(tool):
    ids = list(range(1, 101))
    a = tool.select_subsets(ids, [5, 20, "all"], seed=0)
    assert a == tool.select_subsets(list(reversed(ids)), [5, 20, "all"], seed=0)  # fixed by ids and seed
    assert len(a["5"]) == 5 and len(a["20"]) == 20 and a["all"] == ids
    assert set(a["5"]) < set(a["20"]) < set(a["all"])  # nested
    assert tool.select_subsets(ids, [5], seed=1)["5"] != a["5"]
    assert tool.select_subsets(ids, [500], seed=0)["500"] == ids  # more than there are: all of them


def test_sizes_and_arms_are_checked(tool):
    assert tool.parse_sizes("50, 200,all") == [50, 200, "all"]
    with pytest.raises(tool.StudyError, match=r"--sizes '200,50' must increase, without repeats, 'all' last"):
        tool.parse_sizes("200,50")
    with pytest.raises(tool.StudyError, match=r"'x' is neither a positive number of images nor 'all'"):
        tool.parse_sizes("50,x")
    with pytest.raises(tool.StudyError, match=r"--arms 'scratch,lora': choose distinct arms among scratch, probe"):
        tool.parse_arms("scratch,lora")
    with pytest.raises(tool.StudyError, match=r"^--max-iters 0 must be at least 1$"):
        tool.study(tool.parse_args(["--output", "unused", "--max-iters", "0"]))


def test_arm_overrides(tool):
    assert tool.arm_overrides(tool.ARMS["finetune"], "det", "/w.pth") == [
        "model.backbone.weights=/w.pth", "model.backbone.freeze_at=0", "model.backbone.norm=FrozenBN",
        "solver.time_budget_min=0", "solver.lr_mults={backbone.body: 0.1}"]
    assert tool.arm_overrides(tool.ARMS["scratch"], "seg", "/w.pth") == [
        "model.backbone.weights=null", "model.backbone.freeze_at=0", "model.backbone.norm=BN",
        "solver.time_budget_min=0", "solver.lr_mults={}"]
    assert tool.arm_overrides(tool.ARMS["freeze3"], "seg", "/w.pth")[-1] == "solver.lr_mults={net.backbone.body: 0.1}"
    assert "model.backbone.freeze_at=5" in tool.arm_overrides(tool.ARMS["probe"], "det", "/w.pth")


def test_a_detection_cell_measures_box_ap_without_the_other_heads_unless_asked(tool, tmp_path):
    args = tool.parse_args(["--output", str(tmp_path), "model.mask_on=true"])
    assert args.max_iters == tool.DEFAULT_MAX_ITERS
    subset = {"json": tmp_path / "train_50.json", "images": tmp_path / "train_50"}
    argv = tool.cell_argv("det", tmp_path / "cell", subset, tmp_path, args, ["model.backbone.freeze_at=5"])
    assert argv[argv.index("--max-iters") + 1] == str(tool.DEFAULT_MAX_ITERS)
    tail = argv[argv.index("--no-progress") + 1:]
    assert tail == ["model.mask_on=false", "model.keypoint_on=false", "solver.eval_period=0",
                    "model.backbone.freeze_at=5", "model.mask_on=true"]  # the user's override last, so it wins


def test_report_on_stubbed_metrics(tool, tmp_path):
    results = [{"arm": "scratch", "size": "50", "num_images": 50, "metric": 3.5, "seconds": 10.0},
               {"arm": "finetune", "size": "50", "num_images": 50, "metric": 9.9, "seconds": 11.0},
               {"arm": "scratch", "size": "all", "num_images": 600, "metric": 30.25, "seconds": 90.0}]
    table = tool.write_report(tmp_path, results, ["scratch", "finetune"], ["50", "all"], "bbox AP", {"task": "det"})
    assert table.splitlines() == ["| bbox AP | 50 | all (600 img) |", "|---|---|---|",
                                  "| scratch | 3.5 | 30.2 |", "| finetune | 9.9 | - |"]
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["cells"] == results and saved["table"] == table and saved["task"] == "det"
    assert (tmp_path / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tiny_study_runs_and_resumes_without_training(tool, shapes_dir, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "cls.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    out = tmp_path / "study"
    argv = ["--weights", str(weights), "--output", str(out), "--data", str(shapes_dir), "--sizes", "4,all",
            "--arms", "scratch,finetune", "--max-iters", "1", "--val-size", "3", "--device", "cpu",
            *[o for o in TINY_DET if not o.startswith("--") and o != "cpu"], "test.num_vis=0"]
    real = tool.run_cell
    monkeypatch.setattr(tool, "run_cell", _only(real, {"scratch_4", "finetune_4", "scratch_all"}))
    with pytest.raises(SystemExit):  # stopped before the last cell, as an interrupted study would be
        tool.main(argv)
    subset = json.loads((out / "subsets" / "train_4.json").read_text())
    assert len(subset["images"]) == 4 and {a["image_id"] for a in subset["annotations"]} <= \
        {im["id"] for im in subset["images"]}
    assert (out / "cells" / "finetune_4" / "metrics.json").is_file()
    assert len(json.loads((out / "subsets" / "val.json").read_text())["images"]) == 3  # --val-size
    assert "solver.lr_mults={backbone.body: 0.1}" in (out / "cells" / "finetune_4" / "study_cell.json").read_text()
    capsys.readouterr()

    calls = []
    monkeypatch.setattr(tool, "run_cell", lambda task, argv, run: calls.append(run.name) or real(task, argv, run))
    assert tool.main(argv) == 0
    assert calls == ["finetune_all"]  # the three finished cells were read, not trained again
    report = json.loads((out / "study.json").read_text())
    assert [(c["arm"], c["size"], c["num_images"]) for c in report["cells"]] == [
        ("scratch", "4", 4), ("finetune", "4", 4), ("scratch", "all", 12), ("finetune", "all", 12)]
    assert all(0 <= c["metric"] <= 100 and c["seconds"] > 0 for c in report["cells"])
    assert "| bbox AP | 4 | all (12 img) |" in capsys.readouterr().out


def _only(run_cell, allowed):
    def guarded(task, argv, run):
        if run.name not in allowed:
            raise SystemExit(f"interrupted before {run.name}")
        return run_cell(task, argv, run)
    return guarded


def test_segmentation_study_trains_through_train_seg(tool, shapes_dir, tmp_path, capsys):
    weights = tmp_path / "cls.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    out = tmp_path / "seg"
    assert tool.main(["--task", "seg", "--weights", str(weights), "--output", str(out), "--data", str(shapes_dir),
                      "--sizes", "4", "--arms", "probe", "--max-iters", "1", "--device", "cpu",
                      "solver.ims_per_batch=2", "data.crop_size=64", "data.num_vis=0"]) == 0
    cell = json.loads((out / "cells" / "probe_4" / "study_cell.json").read_text())
    assert cell["num_images"] == 4 and 0 <= cell["metric"] <= 100
    assert "model.backbone.freeze_at=5" in cell["argv"] and "data.train_split=train_4" in cell["argv"]
    out_text = capsys.readouterr().out
    assert "left out its 3-class classification head" in out_text and "| mIoU | 4 |" in out_text

"""tools/benchmark.py: its configs, the table, the clock-budget loop, each mode end to end (tiny), one-line errors."""
import json
import re

import pytest
import torch

import tool_helpers

TINY_OVERRIDES = [o for o in tool_helpers.TINY_DET if "=" in o]  # key=value only (no --flags)


@pytest.fixture(scope="module")
def bench():
    return tool_helpers.load_tool("benchmark")


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[-1]


def test_equal_iteration_config_is_the_wide_recipe_without_keypoints(bench):
    cfg = bench.compare_config(bench.parse_args(["--iters", "10", "--size", "128", "solver.base_lr=0.002"]))
    assert not cfg.model.keypoint_on and cfg.model.mask_on and cfg.model.box_head.fc_dim == 1024
    assert (cfg.data.min_size, cfg.data.test_min_size, cfg.data.max_size) == ((128,), 128, 171)
    assert (cfg.solver.max_iters, cfg.solver.warmup_iters, cfg.solver.log_period) == (10, 10, 1)
    assert cfg.solver.base_lr == 0.002  # the user's overrides come last
    assert (cfg.solver.eval_period, cfg.solver.checkpoint_period, cfg.test.num_vis) == (0, 0, 0)


def test_gpu_mode_compares_stock_r50_models_from_scratch(bench):
    from detection.build import build_model

    cfg = bench.compare_config(bench.parse_args(["--gpu-r50", "--iters", "300"]))
    b = cfg.model.backbone
    assert (b.name, b.weights, b.norm, b.freeze_at) == ("resnet50", None, "BN", 0)
    assert (cfg.solver.ims_per_batch, cfg.data.min_size, cfg.data.test_min_size) == (2, (800,), 800)
    assert cfg.solver.base_lr == pytest.approx(0.02 * 2 / 16)  # the 1x recipe's LR at batch 2
    ours, _ = bench.build_side("ours", cfg, 3, gpu=True)
    theirs, pad = bench.build_side("torchvision", cfg, 3, gpu=True)
    assert theirs.model.transform.min_size == (800,) and pad == bench.PAD
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == pytest.approx(count(theirs), rel=1e-3)  # the same architecture, about 44 M


def test_table_ratios_say_ours_better_above_one_and_ap_in_points(bench):
    columns = {"ours": {"train_s_per_iter": 1.0, "infer_img_per_s": 6.0, "box_AP": 32.5, "mask_AP": None},
               "torchvision": {"train_s_per_iter": 2.0, "infer_img_per_s": 4.0, "box_AP": 30.0, "mask_AP": 20.0},
               "torchvision_stock": {"train_s_per_iter": 4.0, "infer_img_per_s": 1.0, "box_AP": 35.0, "mask_AP": 1.0}}
    lines = bench.format_table(columns, bench.ROWS).splitlines()
    assert lines[0] == "|  | ours | torchvision | torchvision_stock | ours vs torchvision | ours vs torchvision_stock |"
    assert lines[2] == "| train s/iter | 1 | 2 | 4 | 2.00x | 4.00x |"
    assert lines[3] == "| inference img/s (batch 1) | 6 | 4 | 1 | 1.50x | 6.00x |"
    assert lines[4] == "| box AP | 32.5 | 30 | 35 | +2.5 pts | -2.5 pts |"
    assert lines[5] == "| mask AP | - | 20 | 1 | - | - |"
    assert bench.format_table({"ours": {"ratio": 1.5}}, (("ratio", "r", "lower"),)).splitlines()[-1] == "| r | 1.5 |"


def test_clock_budget_stops_on_time_and_drops_the_lr_for_the_last_15_percent(bench, shapes_dir, monkeypatch):
    """The lean recipe's loop on a toy model: it stops once the budget has passed, warms up, and
    runs its last steps at a tenth of the LR."""
    import time

    cfg = bench.load_config(bench.DetConfig, None, ["data.min_size=[64]", "data.max_size=64", "data.num_workers=0",
                                                    "solver.optimizer=adamw", "solver.base_lr=0.001",
                                                    "solver.warmup_iters=2", "solver.ims_per_batch=2"])
    train_set, _ = bench.build_datasets(cfg, bench.resolve_data_paths(cfg.data, str(shapes_dir)))
    optimizers, lrs = [], []
    real = bench.build_optimizer
    monkeypatch.setattr(bench, "build_optimizer", lambda m, s: optimizers.append(real(m, s)) or optimizers[-1])

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, images, targets):
            lrs.append(optimizers[0].param_groups[0]["lr"])  # the LR this step runs at
            time.sleep(0.05)
            return [], {"loss_a": (self.w * images.tensor.mean()) ** 2}

    t0 = time.perf_counter()
    iters = bench.train_by_clock(Toy(), cfg, train_set, torch.device("cpu"), budget_s=1.5)
    assert 1.5 <= time.perf_counter() - t0 < 4.0 and iters == len(lrs) >= 5
    assert lrs[0] == pytest.approx(1e-6) and lrs[2] == pytest.approx(1e-3)  # warm-up from 0.001x over 2 steps
    assert lrs[-1] == pytest.approx(1e-4)  # the last 15% of the budget at a tenth


def test_bad_arguments_fail_with_one_line(bench, capsys):
    cases = [(["--iters", "0"], r"--iters must be at least 1, got 0"),
             (["--size", "16"], r"--size must be at least 32, got 16"),
             (["--budget-s", "60"], r"--budget-s needs a positive number of seconds and --data DIR"),
             (["--budget-s", "60", "--anatomy", "x.pth"], r"are separate modes; choose one"),
             (["--budget-s", "60", "--data", "d", "--sides", "torchvision_stock"], r"names neither"),
             (["--sides", "ours,detectron2"], r"--sides takes ours, torchvision, torchvision_stock; got 'ours,detectron2'"),
             (["--device", "tpu"], r"--device 'tpu' is not a device")]
    for argv, message in cases:
        assert bench.main(argv) == 2
        assert re.search(message, error_line(capsys)), argv


def test_gpu_mode_refuses_without_cuda(bench, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--gpu-r50"]) == 2
    assert error_line(capsys) == "benchmark: error: --gpu-r50 needs a CUDA GPU and torch sees none"


def test_missing_dataset_bad_override_and_no_masks_are_one_line(bench, shapes_dir, tmp_path, capsys):
    import shutil

    assert bench.main(["--data", str(tmp_path / "nowhere"), "--iters", "1"]) == 2
    assert "annotation file not found" in error_line(capsys)
    assert bench.main(["--data", str(shapes_dir), "--iters", "1", "solver.no_such_key=1"]) == 2
    assert error_line(capsys).startswith("benchmark: error: command line: unknown config key 'solver.no_such_key'")
    data = tmp_path / "boxes_only"
    for split in ("train", "val"):
        shutil.copytree(shapes_dir / split, data / split)
        coco = json.loads((shapes_dir / f"{split}.json").read_text())
        for ann in coco["annotations"]:
            ann.pop("segmentation", None)
        (data / f"{split}.json").write_text(json.dumps(coco))
    assert bench.main(["--data", str(data), "--iters", "1"]) == 2
    assert "train.json has no instance masks; this benchmark compares Mask R-CNNs" in error_line(capsys)


@pytest.mark.slow  # trains and evaluates two small Mask R-CNNs for 2 iterations each
def test_equal_iterations_run_writes_one_table_and_json(bench, shapes_dir, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--data", str(shapes_dir), "--iters", "2", "--size", "64", "--warmup", "1",
                       "--infer-images", "2", "--sides", "ours,torchvision", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    s = result["settings"]
    assert (s["mode"], s["size"], s["batch"], s["iters"]) == ("iterations", 64, 4, 2)
    assert "solver.amp" in s["precision"] and f"precision: {s['precision']}" in printed
    assert set(result["columns"]) == {"ours", "torchvision"}
    for col in result["columns"].values():
        assert col["train_s_per_iter"] > 0 and col["infer_img_per_s"] > 0
        assert 0 <= col["box_AP"] <= 100 and 0 <= col["mask_AP"] <= 100
    assert result["columns"]["torchvision"]["params_M"] > 10
    for label in ("| train s/iter |", "| inference img/s (batch 1) |", "| box AP |", "| mask AP |", "ours vs torchvision"):
        assert label in printed


@pytest.mark.slow  # trains the tiny default detector for 2 iterations, then torchvision's lean recipe for 2 s
def test_budget_mode_trains_both_on_the_folder(bench, shapes_dir, tmp_path, capsys):
    out = tmp_path / "budget.json"
    assert bench.main(["--budget-s", "2", "--data", str(shapes_dir), "--out", str(out), "solver.max_iters=2",
                       *TINY_OVERRIDES]) == 0
    result = json.loads(out.read_text())
    ours, lean = result["columns"]["ours"], result["columns"]["torchvision_lean"]
    assert ours["iterations"] == 2 and ours["wall_s"] > 0 and 0 <= ours["box_AP"] <= 100
    assert lean["iterations"] >= 1 and lean["wall_s"] >= 2 and 0 <= lean["box_AP"] <= 100
    assert result["settings"]["budget_s"] == 2
    assert "| training + evaluation wall s |" in capsys.readouterr().out
    assert bench.main(["--budget-s", "1", "--data", str(shapes_dir), "--out", str(out), "--sides", "torchvision",
                       *TINY_OVERRIDES]) == 0                      # torchvision alone, beside a run made before
    assert list(json.loads(out.read_text())["columns"]) == ["torchvision_lean"]


@pytest.mark.slow  # trains the tiny default detector for 1 iteration to get a checkpoint
def test_anatomy_times_backbone_and_whole_model(bench, shapes_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert tool_helpers.load_tool("train_det").main(["--data", str(shapes_dir), "--output", str(run),
                                                     "--max-iters", "1", *tool_helpers.TINY_DET]) == 0
    capsys.readouterr()
    out = tmp_path / "anatomy.json"
    assert bench.main(["--anatomy", str(run / "model_final.pth"), "--data", str(shapes_dir),
                       "--infer-images", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    col = result["columns"]["ours"]
    assert 0 < col["backbone_ms"] < col["full_ms"] and col["ratio"] == pytest.approx(col["full_ms"] / col["backbone_ms"])
    assert result["settings"]["images"] == 3 and result["settings"]["keypoint_on"]
    assert "| whole / backbone |" in capsys.readouterr().out


def test_lr_multipliers_are_refused_for_torchvision_columns(bench, shapes_dir, capsys):
    assert bench.main(["--data", str(shapes_dir), "--iters", "1", "solver.lr_mults={roi_heads: 2.0}"]) == 2
    assert error_line(capsys) == ("benchmark: error: solver.lr_mults names our modules, not torchvision's; "
                                  "measure it with --sides ours")

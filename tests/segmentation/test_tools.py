"""tools/train_seg.py and tools/eval_seg.py end to end on the tiny shapes fixture."""
import json
import subprocess
import sys

import pytest
import torch

from tool_helpers import ROOT, TINY_SEG, assert_output_checked_first, load_tool

TINY = [*TINY_SEG, "solver.warmup_iters=1", "solver.checkpoint_period=2", "data.num_vis=2"]


@pytest.fixture(scope="module")
def train_seg():
    return load_tool("train_seg")


def _train(train_seg, shapes_dir, out, iters, *extra):
    torch.manual_seed(123)  # the tool must not depend on the caller's RNG
    rc = train_seg.main(["--data", str(shapes_dir), "--output", str(out), "--max-iters", str(iters), *TINY, *extra])
    assert rc == 0
    return torch.load(out / "model_final.pth", weights_only=True)


def test_train_resume_and_eval(train_seg, shapes_dir, tmp_path, capsys, monkeypatch):
    full = _train(train_seg, shapes_dir, tmp_path / "full", 4)
    assert full["iteration"] == 4
    # the run layout of common/tooling.py, the same as train_det's
    for name in ("config.yaml", "metrics.csv", "model_0000004.pth", "model_best.pth", "last_checkpoint",
                 "metrics.json", "plots/confusion_matrix.png", "vis/vis_00_000001.jpg", "plots/loss_curve.png"):
        assert (tmp_path / "full" / name).is_file(), name
    assert not (tmp_path / "full" / "eval").exists()
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert set(metrics) == {"mIoU", "pixel_acc", "fwIoU", "boundary_IoU", "per_class_IoU"}
    assert 0 <= metrics["mIoU"] <= 100 and len(metrics["per_class_IoU"]) == 5
    assert "mIoU" in full["metrics"] and "val/loss_seg" in full["metrics"]

    # pretend the run died after iteration 2: resuming from model_0000002.pth must give the same weights
    run = tmp_path / "full"
    metrics_before = (run / "metrics.json").read_text()
    (run / "last_checkpoint").write_text("model_0000002.pth")
    (run / "model_final.pth").unlink()
    resumed = _train(train_seg, shapes_dir, run, 4, "--resume")
    assert resumed["iteration"] == 4
    for k, v in full["model"].items():
        assert torch.allclose(v.float(), resumed["model"][k].float(), atol=1e-6), k
    assert (run / "metrics.json").read_text() == metrics_before

    # a finished run is not overwritten without --resume: model_final, model_best, config.yaml stay
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc = train_seg.main(["--data", str(shapes_dir), "--output", str(run), "--max-iters", "1", *TINY])
    assert rc == 2
    assert capsys.readouterr().err == (f"train_seg: error: {run} already holds a train_seg run; pass --resume "
                                       "to continue it or choose another --output\n")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    # eval_seg builds the model from the config the checkpoint stores (no --config, no overrides)
    # and writes beside the checkpoint by default, never into the current directory
    eval_seg = load_tool("eval_seg")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert eval_seg.main(["--checkpoint", str(run / "model_final.pth"), "--data", str(shapes_dir),
                          "--device", "cpu"]) == 0
    assert list(cwd.iterdir()) == []
    out = run / "eval_model_final"
    again = json.loads((out / "metrics.json").read_text())
    assert again["mIoU"] == pytest.approx(metrics["mIoU"])   # same weights, same val set, same numbers
    assert (out / "plots" / "confusion_matrix.png").is_file() and (out / "vis" / "vis_00_000001.jpg").is_file()


def test_errors_are_one_line_exit_2(shapes_dir, tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "train_seg.py"), "--data", str(shapes_dir),
           "--output", str(tmp_path / "r"), "model.no_such_key=1"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "unknown config key 'model.no_such_key'" in p.stderr


def test_eval_bad_checkpoint_names_it(shapes_dir, tmp_path, capsys):
    eval_seg = load_tool("eval_seg")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    rc = eval_seg.main(["--config", str(ROOT / "configs/segmentation/unet_shapes_cpu.yaml"),
                        "--checkpoint", str(bad), "--data", str(shapes_dir), "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eval_seg: error: checkpoint {bad} ") and err.count("\n") == 1


def test_benchmark_seg_rows_share_the_recipe(shapes_dir, capsys):
    bench = load_tool("benchmark_seg")
    tiny = ["model.unet_width=4", "model.unet_depth=2", "data.crop_size=64", "solver.ims_per_batch=2",
            "solver.warmup_iters=1", "data.num_vis=0"]
    rc = bench.main(["--data", str(shapes_dir), "--max-iters", "1", "--threads", "1", *tiny])
    assert rc == 0
    table = capsys.readouterr().out
    assert "1 iterations x 2 images" in table
    for row in bench.ROWS:
        assert row in table

    # torchvision's head starts at the class prior like ours; the ResNet rows run at full resolution
    import argparse

    from segmentation.build import build_class_prior, build_datasets, class_pixel_stats_of

    cfg, _ = load_tool("train_seg").load_cfg(argparse.Namespace(
        overrides=tiny, data=str(shapes_dir), max_iters=1, config=ROOT / "configs/segmentation/unet_shapes_cpu.yaml"))
    train_ds, _ = build_datasets(cfg.data)
    stats = class_pixel_stats_of(train_ds)
    prior = build_class_prior(cfg.model, stats)
    assert prior is not None and cfg.model.input_scale == 0.5
    tv = bench.build_row("tv_fcnhead_R18", cfg, train_ds.num_classes, train_ds.ignore_index, stats)
    torch.testing.assert_close(tv.net.score.bias.detach(), prior.float())
    for row in ("fcn8s_R18", "tv_fcnhead_R18", "fcn32s_R18"):
        assert bench.build_row(row, cfg, train_ds.num_classes, 255, stats).input_scale == 1.0
    assert bench.build_row("unet", cfg, train_ds.num_classes, 255, stats).input_scale == 0.5
    with pytest.raises(ValueError, match="unknown row 'fcn4s'"):
        bench.build_row("fcn4s", cfg, train_ds.num_classes, 255, stats)


def test_eval_seg_device_typo_is_one_line(tmp_path, capsys):
    eval_seg = load_tool("eval_seg")
    assert eval_seg.main(["--checkpoint", str(tmp_path / "any.pth"), "--device", "gpu0"]) == 2
    assert capsys.readouterr().err == "eval_seg: error: --device 'gpu0' is not a device; use cpu, cuda or cuda:N\n"
    if not torch.cuda.is_available():
        assert eval_seg.main(["--checkpoint", str(tmp_path / "any.pth"), "--device", "cuda"]) == 2
        assert capsys.readouterr().err == ("eval_seg: error: --device 'cuda' but CUDA is not available here; "
                                           "use --device cpu\n")


def test_eval_seg_random_bytes_checkpoint_is_not_a_checkpoint(tmp_path, capsys):
    noise = tmp_path / "model_final.pth"
    noise.write_bytes(bytes(range(256)) * 8)
    assert load_tool("eval_seg").main(["--checkpoint", str(noise), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == (f"eval_seg: error: checkpoint {noise} is corrupt or not a torch file (not a checkpoint, "
                   "or one cut off while it was written)\n")
    assert "weights_only" not in err


def test_output_folder_is_checked_before_any_work(train_seg, tmp_path, capsys, monkeypatch):
    foreign = tmp_path / "foreign"  # a detector's run is not a train_seg run
    foreign.mkdir()
    (foreign / "config.yaml").write_text("model:\n  meta_architecture: mask_rcnn\n")
    (foreign / "model_final.pth").write_bytes(b"weights")
    assert_output_checked_first(lambda out, *extra: train_seg.main(["--data", str(tmp_path / "no_such_data"),
                                                                    "--output", str(out), *TINY, *extra]),
                                "train_seg", foreign, capsys, monkeypatch)
    # eval_seg: before the checkpoint is even read (it does not exist here)
    out = tmp_path / "ro"
    assert load_tool("eval_seg").main(["--checkpoint", str(tmp_path / "none.pth"), "--output", str(out),
                                       "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"eval_seg: error: cannot write to --output {out}: Read-only file system\n"

"""tools/train_det.py end to end on the tiny shapes fixture: the run directory, exact resume,
the NaN guard, bad input, datasets without masks/keypoints, and DDP on CPU (gloo).

One 4-iteration run is shared by the module; the model is shrunk by overrides (ResNet-18 at
64 px, thin heads, few proposals) so each training run takes a few seconds on one CPU thread.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tool_helpers import ROOT, TINY_DET, assert_output_checked_first, load_tool

TOOL = ROOT / "tools" / "train_det.py"
# the tiny recipe with periodic evaluation, validation loss and checkpoints every 2 iterations
TINY = TINY_DET + ["solver.log_period=1", "solver.eval_period=2", "solver.checkpoint_period=2",
                   "test.eval_images=2", "test.val_loss_batches=1", "test.num_vis=2", "test.ims_per_batch=2"]


@pytest.fixture(scope="module")
def tool():
    return load_tool("train_det")


def train(tool, data, out, iters, *extra) -> int:
    torch.manual_seed(123)  # the tool must not depend on the caller's RNG
    return tool.main(["--data", str(data), "--output", str(out), "--max-iters", str(iters), *TINY, *extra])


@pytest.fixture(scope="module")
def run(tool, shapes_dir, tmp_path_factory):
    """A finished 4-iteration run (checkpoints at 2 and 4, evaluations at 2 and 4)."""
    out = tmp_path_factory.mktemp("det_run") / "run"
    assert train(tool, shapes_dir, out, 4) == 0
    return out


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_run_directory_holds_every_promised_file(run, shapes_dir):
    from common.config import load_config
    from detection.config import DetConfig

    for name in ("config.yaml", "metrics.csv", "model_final.pth", "model_best.pth", "model_0000002.pth",
                 "model_0000004.pth", "last_checkpoint", "metrics.json", "results.json",
                 "plots/loss_curve.png", "plots/metric_curve.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "last_checkpoint").read_text().strip() == "model_0000004.pth"
    assert sorted(p.name for p in (run / "vis").glob("*.jpg")) == ["000001.jpg", "000002.jpg"]

    metrics = json.loads((run / "metrics.json").read_text())
    for t in ("bbox", "segm", "keypoints"):
        assert isinstance(metrics[t]["AP"], float) and 0.0 <= metrics[t]["AP"] <= 100.0
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert set(metrics["per_category"]["bbox"]) == {"circle", "square", "triangle", "star"}

    results = json.loads((run / "results.json").read_text())
    assert results and {"image_id", "category_id", "score", "bbox", "segmentation", "keypoints"} <= set(results[0])
    assert {r["category_id"] for r in results} <= {1, 3, 5, 7}

    cfg = load_config(DetConfig, run / "config.yaml")
    assert cfg.solver.max_iters == 4 and cfg.model.backbone.fpn_channels == 32 and cfg.data.min_size == (64,)
    assert cfg.model.mask_on and cfg.model.keypoint_on
    assert cfg.data.root == str(shapes_dir.resolve())  # the data the run used, not the default

    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert {"iter", "phase", "loss_mask", "loss_keypoint", "bbox/AP", "val/total_loss"} <= set(header)
    assert [line.split(",")[:2] for line in lines[1:] if line.split(",")[1] == "eval"] == [["2", "eval"], ["4", "eval"]]


def test_checkpoints_carry_the_dataset_metadata(run):
    from common.engine.checkpoint import load_checkpoint
    from detection.data import DatasetMeta

    for name, iterations in (("model_final.pth", {4}), ("model_best.pth", {2, 4}), ("model_0000002.pth", {2})):
        state = load_checkpoint(run / name)  # weights_only=True
        assert state["iteration"] in iterations
        meta = DatasetMeta.from_dict(state["metadata"]["dataset"])
        assert meta.class_names == ["circle", "square", "triangle", "star"]
        assert meta.category_ids == [1, 3, 5, 7]
        assert meta.num_keypoints == 5 and meta.skeleton and all(isinstance(e, tuple) for e in meta.skeleton)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_repeats_the_uninterrupted_run(tool, run, shapes_dir, tmp_path, workers):
    """A run stopped after its iteration-2 checkpoint and resumed ends with the same weights."""
    straight = run
    if workers:  # the shared run used no workers: the straight run with workers is its own
        straight = tmp_path / "straight"
        assert train(tool, shapes_dir, straight, 4, f"data.num_workers={workers}") == 0
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(straight / "model_0000002.pth", part)  # what a run killed after iteration 2 leaves
    (part / "last_checkpoint").write_text("model_0000002.pth")
    assert train(tool, shapes_dir, part, 4, "--resume", f"data.num_workers={workers}") == 0

    a, b = weights(straight / "model_final.pth"), weights(part / "model_final.pth")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # and training did change the weights between iterations 2 and 4
    w2 = weights(straight / "model_0000002.pth")
    assert any(not torch.equal(w2[k], a[k]) for k in a if a[k].is_floating_point())


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tool, shapes_dir, tmp_path, capsys,
                                                                    monkeypatch):
    from common.engine.checkpoint import load_checkpoint
    from detection.generalized_rcnn import GeneralizedRCNN

    forward = GeneralizedRCNN.forward
    calls = {"train": 0}

    def nan_at_third_step(self, images, targets=None):
        predictions, losses = forward(self, images, targets)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 3:
                losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return predictions, losses

    monkeypatch.setattr(GeneralizedRCNN, "forward", nan_at_third_step)
    out = tmp_path / "run"
    assert train(tool, shapes_dir, out, 4, "solver.checkpoint_period=1", "solver.eval_period=0") == 2
    err = capsys.readouterr().err.strip()
    # model_0000002.pth holds the weights whose loss was NaN: the one offered predates them
    assert err == (f"train_det: error: iteration 3: loss_mask is nan; stopped. The last good checkpoint is "
                   f"{out / 'model_0000001.pth'}")
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "model_0000003.pth").exists() and not (out / "model_final.pth").exists()
    state = load_checkpoint(out / "model_0000001.pth")
    assert state["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    # the run resumes from it once the cause is gone
    monkeypatch.setattr(GeneralizedRCNN, "forward", forward)
    assert train(tool, shapes_dir, out, 3, "--resume", "solver.checkpoint_period=1", "solver.eval_period=0") == 0
    assert "resuming from iteration 1" in capsys.readouterr().out
    assert load_checkpoint(out / "model_final.pth")["iteration"] == 3


def test_diverging_learning_rate_is_caught_by_the_guard(tool, shapes_dir, tmp_path, capsys):
    """No monkeypatch: SGD at LR 1e30 blows the weights up after one step."""
    out = tmp_path / "run"
    rc = train(tool, shapes_dir, out, 3, "solver.optimizer=sgd", "solver.base_lr=1.0e+30", "solver.warmup_iters=0",
               "solver.clip_grad_norm=0", "solver.checkpoint_period=1", "solver.eval_period=0")
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train_det: error: iteration 2: loss_") and ("is nan" in err or "is inf" in err), err
    # model_0000001.pth holds the weights after one step at LR 1e30: it is not offered (issue 12)
    assert err.endswith("stopped. No checkpoint was written before the loss stopped being finite")
    assert not (out / "last_checkpoint").exists()


def test_bad_input_is_one_line_exit_2(tool, run, shapes_dir, tmp_path, capsys):
    assert train(tool, shapes_dir, tmp_path / "a", 2, "model.rpn.bogus_key=3") == 2
    assert "unknown config key 'model.rpn.bogus_key'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()

    missing = tmp_path / "no_such_data"
    assert train(tool, missing, tmp_path / "b", 2) == 2
    assert capsys.readouterr().err.strip() == (f"train_det: error: annotation file not found: {missing / 'train.json'} "
                                               "(data.train_json; a dataset folder must hold train.json, "
                                               "val.json, train/ and val/)")

    config_before = (run / "config.yaml").read_text()
    assert train(tool, shapes_dir, run, 2, "solver.base_lr=0.5") == 2
    assert capsys.readouterr().err.strip() == (f"train_det: error: {run} already holds a train_det run; pass "
                                               "--resume to continue it or choose another --output")
    assert (run / "config.yaml").read_text() == config_before  # the old run is untouched

    assert train(tool, shapes_dir, tmp_path / "c", 2, "--config", str(tmp_path / "nope.yaml")) == 2
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in capsys.readouterr().err

    assert train(tool, shapes_dir, tmp_path / "d", 2, "--device", "gpu0") == 2
    assert capsys.readouterr().err == "train_det: error: --device 'gpu0' is not a device; use cpu, cuda or cuda:N\n"
    if not torch.cuda.is_available():
        assert train(tool, shapes_dir, tmp_path / "e", 2, "--device", "cuda") == 2
        assert "--device 'cuda' but CUDA is not available here" in capsys.readouterr().err


def test_solver_numbers_are_named_before_the_warmup(tool, shapes_dir, tmp_path, capsys):
    for value in ("nan", "inf", ".inf"):
        assert train(tool, shapes_dir, tmp_path / "a", 20, f"solver.base_lr={value}") == 2
        assert capsys.readouterr().err == f"train_det: error: solver.base_lr = {float(value.strip('.'))!r} " \
                                          "must be a finite number\n"
    assert train(tool, shapes_dir, tmp_path / "a", 20, "solver.ims_per_batch=0", "solver.warmup_iters=50") == 2
    assert capsys.readouterr().err == "train_det: error: solver.ims_per_batch = 0 must be at least 1\n"
    assert not (tmp_path / "a").exists()  # refused before the run folder is made


def test_short_run_shortens_the_warmup_and_logs_without_a_terminal(tool, shapes_dir, tmp_path, capsys):
    """`--max-iters 2` under a 5-iteration warm-up runs (one note); stdout is not a terminal here,
    so a log line comes every solver.log_period iterations."""
    out = tmp_path / "run"
    assert train(tool, shapes_dir, out, 2, "solver.warmup_iters=5", "solver.log_period=1") == 0
    printed = capsys.readouterr().out
    assert "note: solver.warmup_iters shortened from 5 to 2 to fit solver.max_iters = 2\n" in printed
    assert [line.split("  ")[0] for line in printed.splitlines() if line.startswith("iter ")] == \
        ["iter 1/2", "iter 2/2"]
    assert "\r" not in printed
    from common.config import load_config
    from detection.config import DetConfig

    assert load_config(DetConfig, out / "config.yaml").solver.warmup_iters == 2


def test_a_failing_final_evaluation_keeps_model_final(tool, shapes_dir, tmp_path, capsys, monkeypatch):
    import detection.inference
    from detection.data import DatasetError

    def broken(*args, **kwargs):
        raise DatasetError("image file val/000002.jpg (image id 2) does not exist")

    monkeypatch.setattr(detection.inference, "evaluate_detector", broken)
    out = tmp_path / "run"
    assert train(tool, shapes_dir, out, 2) == 2
    assert capsys.readouterr().err == "train_det: error: image file val/000002.jpg (image id 2) does not exist\n"
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 2


def test_output_folder_is_checked_before_any_work(tool, tmp_path, capsys, monkeypatch):
    # a folder of someone else's results (no config.yaml of a train_det run)
    foreign = tmp_path / "foreign"
    (foreign / "vis").mkdir(parents=True)
    for name in ("model_best.pth", "metrics.json", "results.json", "vis/1.jpg"):
        (foreign / name).write_bytes(name.encode())
    assert_output_checked_first(lambda out, *extra: train(tool, tmp_path / "no_such_data", out, 2, *extra),
                                "train_det", foreign, capsys, monkeypatch)


def strip_dataset(src: Path, dst: Path) -> Path:
    """A copy of the shapes dataset without masks and keypoints (boxes and classes only)."""
    dst.mkdir()
    for split in ("train", "val"):
        data = json.loads((src / f"{split}.json").read_text())
        for ann in data["annotations"]:
            ann.pop("segmentation", None)
            ann.pop("keypoints", None)
            ann.pop("num_keypoints", None)
        for cat in data["categories"]:
            cat.pop("keypoints", None)
            cat.pop("skeleton", None)
        (dst / f"{split}.json").write_text(json.dumps(data))
        (dst / split).symlink_to(src / split, target_is_directory=True)
    return dst


def test_boxes_only_dataset_switches_heads_off(tool, shapes_dir, tmp_path, capsys):
    data = strip_dataset(shapes_dir, tmp_path / "boxes_only")
    out = tmp_path / "run"
    assert train(tool, data, out, 2) == 0
    printed = capsys.readouterr().out
    assert f"note: {data / 'train.json'} has no instance masks: the mask head is off" in printed
    assert f"note: {data / 'train.json'} has no keypoints: the keypoint head is off" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "per_category"}
    keys = weights(out / "model_final.pth").keys()
    assert not any("mask_head" in k or "keypoint_head" in k for k in keys)
    assert any(k.startswith("roi_heads.box_predictor") or "box" in k for k in keys)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(shapes_dir, tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TOOL), "--data", str(shapes_dir), "--output", str(out), "--max-iters", "2", *TINY,
           "solver.eval_period=0", "test.val_loss_batches=0", "test.num_vis=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # the bare model, not the DDP wrapper
    assert (out / "metrics.json").is_file() and "done: bbox AP" in proc.stdout

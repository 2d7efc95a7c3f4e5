"""The skeleton the tools share (common/tooling.py): start-up, device, arguments, run folder,
progress, one-line errors."""
import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from common import tooling
from common.tooling import ToolError

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_packages_changes_nothing_and_start_tool_does():
    code = ("import os, warnings\n"
            "import common, detection, segmentation, common.tooling\n"
            "msg = \"__array__ implementation doesn't accept a copy keyword\"\n"
            "def filtered():\n"
            "    return any(f[1] is not None and f[1].pattern == msg for f in warnings.filters)\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), filtered())\n"
            "common.tooling.start_tool()\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), filtered())\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    first, second = out.stdout.split("\n")[:2]
    assert first == "None False"
    assert second in ("None True", "PASSIVE True")  # PASSIVE only when the CPU is busy elsewhere


def test_busy_cores_are_measured(monkeypatch):
    if Path("/proc/stat").is_file():  # the real file's first line
        total, idle = tooling._cpu_ticks()
        assert 0 <= idle <= total
    ticks = iter([(1000, 800), (1400, 1000)])
    monkeypatch.setattr(tooling, "_cpu_ticks", lambda: next(ticks))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    # 400 ticks passed, 200 idle: half of the time busy, on 2 cores one busy core
    assert tooling.cores_busy_elsewhere(interval=0) == pytest.approx(1.0)


def test_a_busy_cpu_makes_idle_threads_sleep(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(tooling, "cores_busy_elsewhere", lambda: 1.0)
    tooling.start_tool()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(tooling, "cores_busy_elsewhere", lambda: 0.1)
    tooling.start_tool()
    assert "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.parametrize("name, message", [
    ("gpu0", "--device 'gpu0' is not a device; use cpu, cuda or cuda:N"),
    ("meta", "--device 'meta' is not supported; use cpu, cuda or cuda:N"),
])
def test_bad_devices_are_one_sentence(name, message):
    with pytest.raises(ToolError) as err:
        tooling.parse_device(name)
    assert str(err.value) == message


def test_devices():
    assert tooling.parse_device("cpu") == torch.device("cpu")
    assert tooling.parse_device(None, torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ToolError, match=r"^--device 'cuda:1' but CUDA is not available here; use --device cpu$"):
            tooling.parse_device("cuda:1")
        assert tooling.parse_device("auto") == torch.device("cpu")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ToolError, match=rf"^--device 'cuda:{n}' but this machine has {n} GPU"):
            tooling.parse_device(f"cuda:{n}")


def test_arguments_have_one_spelling():
    p = argparse.ArgumentParser()
    tooling.add_arguments(p, "config", "output", "device", "max_iters", "resume", "resume_from", "no_progress",
                          "overrides", defaults={"config": "a.yaml"}, shown={"output": "runs/<name>"})
    args = p.parse_intermixed_args(["solver.base_lr=0.1", "--max-iters", "5", "--no-progress",
                                    "--resume-from", "x.pth", "model.k=1"])
    assert (args.config, args.output, args.device, args.resume, args.resume_from, args.no_progress) == \
        ("a.yaml", None, None, False, "x.pth", True)
    # --max-iters runs exactly that many: the time budget and epochs off, unless an override sets them
    assert tooling.overrides_of(args, config="unused.key") == [
        "solver.time_budget_min=0", "solver.epochs=0", "solver.base_lr=0.1", "model.k=1", "solver.max_iters=5",
        "unused.key=a.yaml"]
    assert "runs/<name>" in p.format_help()


def test_warmup_longer_than_a_short_run_is_shortened_with_a_note(tmp_path):
    from detection.config import DetConfig

    cfg, notes = tooling.load_run_config(DetConfig, None, ["solver.max_iters=20", "solver.warmup_iters=50"])
    assert cfg.solver.warmup_iters == 20 and cfg.solver.max_iters == 20
    assert notes == ["solver.warmup_iters shortened from 50 to 20 to fit solver.max_iters = 20"]
    cfg, notes = tooling.load_run_config(DetConfig, None, ["solver.max_iters=100", "solver.warmup_iters=50"])
    assert cfg.solver.warmup_iters == 50 and notes == []


def test_run_folder_checks(tmp_path):
    from segmentation.config import SegConfig

    new = tooling.prepare_run_dir(tmp_path / "a" / "b", resume=False, config_cls=SegConfig, tool="train_seg")
    assert new.root.is_dir() and list(new.root.iterdir()) == []
    assert (new.metrics, new.plots, new.vis) == (new.root / "metrics.json", new.root / "plots", new.root / "vis")
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ToolError, match=rf"^--output {a_file} is a file, not a folder$"):
        tooling.prepare_run_dir(a_file, resume=False, config_cls=SegConfig, tool="train_seg")
    # a detection run is not a segmentation run
    det = tmp_path / "det"
    det.mkdir()
    (det / "config.yaml").write_text("test:\n  num_vis: 2\n")
    with pytest.raises(ToolError, match=r"holds no train_seg run to resume \(no train_seg config.yaml; "):
        tooling.prepare_run_dir(det, resume=True, config_cls=SegConfig, tool="train_seg")
    seg = tmp_path / "seg"
    seg.mkdir()
    (seg / "config.yaml").write_text("solver:\n  max_iters: 5\n")
    assert tooling.prepare_run_dir(seg, resume=True, config_cls=SegConfig, tool="train_seg").root == seg


def test_metrics_json_is_strict(tmp_path):
    run = tooling.RunDir(tmp_path)
    run.write_metrics({"mIoU": float("nan"), "per_class_IoU": {"a": 1.5, "b": float("inf")}})
    assert run.metrics.read_text() == '{\n  "mIoU": null,\n  "per_class_IoU": {\n    "a": 1.5,\n    "b": null\n  }\n}\n'


@pytest.mark.parametrize("stdout_tty, stderr_tty, no_progress, bar, lines", [
    (True, True, False, True, False),    # watching a terminal: the bar only
    (False, True, False, True, True),    # `> log`: the bar on the terminal, lines in the file
    (False, False, False, False, True),  # `> log 2>&1`: no carriage-return frames, lines
    (True, True, True, False, True),     # --no-progress: lines
])
def test_progress_bar_only_on_a_terminal(monkeypatch, stdout_tty, stderr_tty, no_progress, bar, lines):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: stdout_tty, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: stderr_tty, raising=False)
    args = argparse.Namespace(no_progress=no_progress)
    assert (tooling.show_bar(args), tooling.print_log(args)) == (bar, lines)


def test_run_tool_prints_one_line(capsys):
    from common.engine.trainer import TrainingError

    def fails(args):
        raise TrainingError("iteration 3: loss_cls is nan; stopped.\nmore text")

    def warns(args):
        warnings.warn("skipped 2 of 5 images\nsecond line", stacklevel=1)
        return {"mIoU": 1.0}

    assert tooling.run_tool("t", fails, argparse.Namespace()) == 2
    assert capsys.readouterr().err == "t: error: iteration 3: loss_cls is nan; stopped.\n"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert tooling.run_tool("t", warns, argparse.Namespace()) == 0
    assert capsys.readouterr().err == "t: warning: skipped 2 of 5 images\n"
    with pytest.raises(KeyError):  # a bug is a traceback, not a one-line error
        tooling.run_tool("t", lambda a: {}["x"], argparse.Namespace())

"""The skeleton every script in ``tools/`` shares: start-up, arguments, device, seeds, the run
folder, one-line errors and progress. A change to any of these is made here, once.

A tool reads top to bottom:

    from common.tooling import start_tool
    start_tool()                                   # before torch is imported (see start_tool)

    def parse_args(argv):
        p = tool_parser(__doc__)
        add_arguments(p, "config", "output", "device", "resume", "no_progress", "overrides",
                      defaults={"config": DEFAULT_CONFIG}, shown={"output": "runs/<config name>"})
        return p.parse_intermixed_args(argv)

    def train(args):
        cfg, notes = load_run_config(DetConfig, args.config, overrides_of(args))
        run = prepare_run_dir(args.output, resume=args.resume, config_cls=DetConfig, tool="train_det")
        device = select_device(args.device)
        seed_process(cfg.solver.seed, cfg.solver.deterministic)     # seed + rank
        model = sync_batchnorm(build_model(...), cfg.model.backbone.norm)
        trainer = Trainer(..., progress=show_bar(args), print_log=print_log(args))
        ...
        run.write_metrics(metrics); run.plot_curves()

    def main(argv=None):
        return run_tool("train_det", train, parse_args(argv))

Conventions: ``--config YAML``, ``--output DIR`` (a run folder), ``--device cpu|cuda|cuda:N``,
``--resume`` / ``--resume-from PATH``, ``--no-progress``, ``key=value`` config overrides before or
after the options. Errors the user can fix are one line ``<tool>: error: ...`` on stderr and exit
status 2; warnings are one line ``<tool>: warning: ...``.

The run layout (training tools and eval_seg alike)::

    RUN/config.yaml         the resolved config
    RUN/metrics.csv         training and evaluation scalars (+ TensorBoard events)
    RUN/model_XXXXXXX.pth   periodic, resumable checkpoints; RUN/last_checkpoint names the newest
    RUN/model_best.pth      weights at the best evaluation (solver.best_metric)
    RUN/model_final.pth     weights at the end, written before the final evaluation
    RUN/metrics.json        the final evaluation (percent; null where undefined)
    RUN/plots/              loss_curve.png, metric_curve.png (+ confusion_matrix.png for segmentation)
    RUN/vis/                predictions drawn on a few val images
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

METRICS_JSON = "metrics.json"
PLOTS = "plots"
VIS = "vis"


class ToolError(ValueError):
    """A command line that cannot work (bad device, an output folder in the way); one sentence."""


# ------------------------------------------------------------------------------ start-up


def start_tool() -> None:
    """Process-wide settings a tool makes before importing torch (never on ``import common``).

    - OpenMP's wait policy, unless OMP_WAIT_POLICY is set: PASSIVE (idle threads sleep at once)
      when other processes already keep at least half a core busy, OpenMP's default (spin
      briefly, then sleep) otherwise. Measured on 2 cores, a Mask R-CNN training step
      (tools/train_det.py, 30 iterations): alone 0.94 s spinning vs 1.27 s sleeping; beside one
      busy process 2.67 s spinning vs 1.53 s sleeping. It must be set before torch starts OpenMP.
    - pycocotools (built against numpy 1) warns on every mask decode under numpy 2; the results
      are right, so that one warning is silenced.
    - every other warning prints as one line, ``<tool>: warning: <message>`` (see run_tool).
    """
    if "OMP_WAIT_POLICY" not in os.environ and cores_busy_elsewhere() >= 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                            category=DeprecationWarning)


def cores_busy_elsewhere(interval: float = 0.2) -> float:
    """How many cores other processes keep busy, from /proc/stat over ``interval`` seconds (this
    process is idle meanwhile). 0.0 where /proc/stat cannot be read (not Linux)."""
    import time

    try:
        total0, idle0 = _cpu_ticks()
        time.sleep(interval)
        total1, idle1 = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 <= total0:
        return 0.0
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def _cpu_ticks() -> tuple[int, int]:
    """(all, idle + iowait) clock ticks of every CPU since boot, from /proc/stat's first line."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]


# ------------------------------------------------------------------------------ arguments

_ARGUMENTS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "config": (("--config",), dict(help="YAML config (default: %(default)s)")),
    "output": (("--output",), dict(help="folder for everything the tool writes (default: %(default)s)")),
    "device": (("--device",), dict(help="cpu, cuda or cuda:N (default: cuda when available)")),
    "max_iters": (("--max-iters",), dict(type=int, help="run exactly this many steps: solver.max_iters, "
                                                        "no time budget (the warm-up is shortened to fit)")),
    "resume": (("--resume",), dict(action="store_true", help="continue the run in --output from its "
                                                             "last checkpoint")),
    "resume_from": (("--resume-from",), dict(metavar="PATH", help="continue from this checkpoint "
                                             "(e.g. an older model_XXXXXXX.pth); implies --resume")),
    "no_progress": (("--no-progress",), dict(action="store_true", help="no progress bar: a log line every "
                                             "solver.log_period iterations (also when stdout is not a "
                                             "terminal)")),
    "overrides": (("overrides",), dict(nargs="*", help="config overrides key=value, e.g. solver.base_lr=0.01")),
}


def tool_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a tool whose module docstring is ``doc``: its first paragraph describes the
    tool above the options, the rest (examples, what it writes) follows them as written."""
    summary, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(description=summary, epilog=rest or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_arguments(parser: argparse.ArgumentParser, *names: str, defaults: dict[str, Any] | None = None,
                  shown: dict[str, str] | None = None) -> None:
    """Add the conventional arguments ``names`` (keys of ``_ARGUMENTS``) with one spelling and help
    text for every tool. ``defaults`` sets a default per name; ``shown`` describes a default the
    tool computes later (``{"output": "runs/<config name>"}``)."""
    defaults, shown = defaults or {}, shown or {}
    for name in names:
        flags, kwargs = _ARGUMENTS[name]
        kwargs = dict(kwargs)
        if name in defaults:
            kwargs["default"] = defaults[name]
        text = kwargs.get("help", "")
        if name in shown:
            kwargs["help"] = text.replace("%(default)s", shown[name])
        elif "%(default)s" in text and kwargs.get("default") is None:
            kwargs["help"] = text.replace(" (default: %(default)s)", "")
        parser.add_argument(*flags, **kwargs)


def overrides_of(args: argparse.Namespace, **flags: str) -> list[str]:
    """``args.overrides`` plus ``--max-iters`` and each ``flags`` item (argument -> config key) given.
    ``--max-iters N`` runs exactly N steps: it also turns the config's time budget and epochs off (an
    explicit ``solver.time_budget_min`` among the overrides still sets one)."""
    out = list(getattr(args, "overrides", None) or [])
    if getattr(args, "max_iters", None) is not None:
        out = ["solver.time_budget_min=0", "solver.epochs=0", *out, f"solver.max_iters={args.max_iters}"]
    for arg, key in flags.items():
        value = getattr(args, arg, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


# ------------------------------------------------------------------------------ configs


def load_run_config(cls: type, path: str | Path | None, overrides: list[str]) -> tuple[Any, list[str]]:
    """``load_config(cls, path, overrides)`` with its solver checked (a sentence naming the key);
    a warm-up longer than a shortened run is cut to fit. Returns (config, notes to print)."""
    from common.config import load_config
    from common.engine.build import check_solver

    cfg = load_config(cls, path, overrides)
    solver = cfg.solver
    fitted = dataclasses.replace(solver, warmup_iters=min(solver.warmup_iters, max(solver.max_iters, 0)))
    check_solver(fitted)
    notes = []
    if fitted.warmup_iters != solver.warmup_iters:
        notes.append(f"solver.warmup_iters shortened from {solver.warmup_iters} to {fitted.warmup_iters} "
                     f"to fit solver.max_iters = {solver.max_iters}")
        cfg = dataclasses.replace(cfg, solver=fitted)
    return cfg, notes


# ------------------------------------------------------------------------------ device, seeds, norms


def parse_device(name: str | None, default=None):
    """A ``--device`` value as a torch.device. None or "auto" gives ``default`` (else cuda when
    available, else cpu); a typo or a missing GPU is a one-line ToolError."""
    import torch

    if name in (None, "", "auto"):
        if default is not None:
            return torch.device(default)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ToolError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ToolError(f"--device {name!r} is not supported; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ToolError(f"--device {name!r} but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ToolError(f"--device {name!r} but this machine has {torch.cuda.device_count()} GPU(s) "
                            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


def select_device(name: str | None):
    """Join torchrun's process group if there is one, then :func:`parse_device` (default: this
    process's GPU under torchrun, else cuda when available, else cpu)."""
    import torch

    from common.engine.distributed import init_distributed

    default = init_distributed()
    if default.type == "cpu" and torch.cuda.is_available():
        default = torch.device("cuda")
    return parse_device(name, default)


def seed_process(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch with ``seed + rank``: processes draw different augmentations."""
    from common.engine.checkpoint import seed_everything
    from common.engine.distributed import get_rank

    seed_everything(seed + get_rank(), deterministic)


def sync_batchnorm(model, norm: str):
    """Under several processes and ``norm == "SyncBN"``, every BatchNorm of ``model`` (heads too)
    becomes ``nn.SyncBatchNorm``; otherwise ``model`` unchanged."""
    import torch

    from common.engine.distributed import get_world_size

    if get_world_size() > 1 and norm == "SyncBN":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


# ------------------------------------------------------------------------------ the run folder


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Where a run's files go (see the module docstring for the layout)."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_JSON

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    @property
    def vis(self) -> Path:
        return self.root / VIS

    def write_metrics(self, metrics: dict) -> Path:
        """``metrics.json``: strict JSON, NaN written as null."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.metrics.write_text(json.dumps(_nan_to_none(metrics), indent=2, allow_nan=False) + "\n")
        return self.metrics

    def plot_curves(self) -> list[Path]:
        """``plots/loss_curve.png`` and ``plots/metric_curve.png`` from ``metrics.csv``."""
        from common.engine.curves import plot_curves

        return plot_curves(self.root / "metrics.csv", self.plots)


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def check_writable(folder: Path, what: str = "--output", keep: bool = False) -> None:
    """Raise one ToolError sentence unless a file can be written in ``folder``. Folders made for
    the check are removed again (a later error leaves none behind) unless ``keep``."""
    made = [] if keep else [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ToolError(f"cannot write to {what} {folder}: {e.strerror or e}") from None
    finally:
        for p in made:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()


def holds_run(folder: Path, config_cls: type) -> bool:
    """True when ``folder`` is a run of the tool whose config is ``config_cls``: its config.yaml
    is such a config, or (a copy without it) it holds a ``last_checkpoint`` to resume."""
    from common.config import ConfigError, load_config

    if not (folder / "config.yaml").is_file():
        return (folder / "last_checkpoint").is_file()
    try:
        load_config(config_cls, folder / "config.yaml")
    except ConfigError:
        return False
    return True


def prepare_run_dir(output: str | Path, *, resume: bool, config_cls: type, tool: str) -> RunDir:
    """Check the run folder before any work: writable, and either empty (a new run) or, with
    ``--resume``, a run of this tool. Anything else is refused with one sentence, untouched."""
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise ToolError(f"--output {folder} is a file, not a folder")
    held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if held:
        is_run = holds_run(folder, config_cls)
        if not resume:
            if is_run:
                raise ToolError(f"{folder} already holds a {tool} run; pass --resume to continue it "
                                "or choose another --output")
            raise ToolError(f"--output {folder} is not empty ({_listing(held)}); choose another --output")
        if not is_run:
            raise ToolError(f"--output {folder} holds no {tool} run to resume (no {tool} config.yaml; "
                            f"it has {_listing(held)}); choose another --output")
    check_writable(folder, keep=True)  # kept: every torchrun process checks it at the same time
    return RunDir(folder)


def _listing(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ------------------------------------------------------------------------------ progress


def show_bar(args: argparse.Namespace) -> bool:
    """The tqdm bar: only on a terminal (it draws on stderr) and without ``--no-progress``."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def print_log(args: argparse.Namespace) -> bool:
    """Log lines on stdout: with ``--no-progress`` or whenever stdout is not a terminal (a file)."""
    return getattr(args, "no_progress", False) or not sys.stdout.isatty()


# ------------------------------------------------------------------------------ one-line errors


def error_types() -> tuple[type[BaseException], ...]:
    """What a user can cause and fix: bad configs, data, checkpoints, paths, a diverging run.

    ConfigError, DatasetError, SegDataError, EvaluationError and ToolError are ValueErrors. The
    checkpoint and training errors are looked up among the modules already imported, not imported
    here: a tool that never loads the engine (selective search) does not pay torch's start-up for
    them, and an error whose module was never imported cannot have been raised.
    """
    found = [ValueError, OSError]
    for module, name in (("common.engine.checkpoint", "CheckpointError"), ("common.engine.trainer", "TrainingError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def run_tool(tool: str, fn: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """``fn(args)``; a user error prints ``<tool>: error: <first line>`` on stderr and returns 2.
    Warnings print as ``<tool>: warning: <message>``, one line each."""
    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"{tool}: warning: {str(message).strip().splitlines()[0]}", file=file or sys.stderr)

    show = warnings.showwarning
    warnings.showwarning = one_line_warning
    try:
        rc = fn(args)
    except Exception as e:
        if not isinstance(e, error_types()):
            raise
        text = str(e).strip() or type(e).__name__
        print(f"{tool}: error: {text.splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = show
    return rc if isinstance(rc, int) else 0  # a tool's run() may return what it computed

"""The training loop shared by detection and segmentation.

    trainer = Trainer(model, optimizer, scheduler, make_data_iter, output_dir=RUN, max_iters=...)
    trainer.resume()          # continue from RUN/last_checkpoint if there is one
    summary = trainer.train()

One iteration = one optimizer step over ``accumulate`` batches:
    forward (under autocast when ``amp`` asks for it, see precision.py) -> check every loss term
    is finite -> backward (scaled for fp16, / accumulate)
    -> [unscale, clip the gradient norm] -> optimizer step -> scheduler step.
The model follows the contract in ARCHITECTURE.md: ``model(images, targets) -> (predictions,
losses)`` with ``losses`` a dict of scalar tensors. Iteration numbers are 1-based counts of
finished optimizer steps: ``model_0000100.pth`` holds the state after 100 steps.

Files written by rank 0 in ``output_dir``: ``model_{iter:07d}.pth`` (resumable, the last few
kept) + ``last_checkpoint`` (the name of the newest one), ``model_best.pth`` and
``model_final.pth`` (weights, iteration, metrics, the config YAML text and ``metadata``, e.g. the
dataset's class names), ``metrics.csv``,
TensorBoard events and ``config.yaml``.
"""
from __future__ import annotations

import contextlib
import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common.engine import distributed as dist
from common.engine.checkpoint import (CheckpointError, get_rng_state, load_checkpoint,
                                      load_model_state, save_checkpoint, set_rng_state,
                                      write_text_atomic)
from common.engine.metrics_log import MetricsLog, flatten_metrics
from common.engine.precision import autocast, autocast_dtype

PERIODIC = re.compile(r"model_(\d{7})\.pth")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, an exhausted data iterator, a missing metric)."""


def to_device(obj, device):
    """Move tensors inside lists, tuples and dicts, and objects with ``.to`` (e.g. an ImageList)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        items = [to_device(v, device) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if hasattr(obj, "to") and callable(obj.to):
        return obj.to(device)
    return obj


def clip_gradients(params: list[torch.Tensor], max_norm: float, kind: str = "full_model") -> torch.Tensor:
    """Clip gradients in place; returns the norm of all of them together, before clipping.

    ``full_model``: all gradients scaled by one factor so their joint norm is at most ``max_norm``;
    ``norm``: each parameter's gradient on its own (detectron2's "norm" clip type).
    """
    if kind == "full_model":
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = torch.stack([p.grad.detach().float().norm() for p in params]) if params else torch.zeros(1)
    for p, n in zip(params, norms):
        if n > max_norm:
            p.grad.mul_(max_norm / (float(n) + 1e-6))
    return norms.norm()


def log_line(iteration: int, max_iters: int, losses: dict[str, float], lr: float, seconds_per_iter: float) -> str:
    """``iter 40/200  total_loss 1.234  loss_cls 0.512 ...  lr 1.00e-02  0.412 s/iter  eta 0:01:06``."""
    order = sorted(losses, key=lambda k: (k != "total_loss", k))  # the total first, then by name
    shown = "  ".join(f"{k} {losses[k]:.4g}" for k in order)
    eta = int(round(seconds_per_iter * (max_iters - iteration)))
    return (f"iter {iteration}/{max_iters}  {shown}  lr {lr:.2e}  {seconds_per_iter:.3f} s/iter  "
            f"eta {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")


class Trainer:
    """Runs ``max_iters`` optimizer steps with periodic logging, checkpoints and evaluation.

    make_data_iter(start) -> iterator of (images, targets), positioned at batch number ``start``
        (``start = iteration * accumulate``), so a resumed run sees exactly the batches the
        uninterrupted one would have. Its randomness must come from (seed, start), e.g.
        ``InfiniteSampler(size, seed=seed, start=start * ims_per_batch, rank=..., world_size=...)``
        (``start`` there counts indices); the global RNG state is restored around the call.
    evaluate(model) -> dict of metrics, e.g. {"bbox/AP": 41.2} (nested dicts are flattened with
        "/"). Called in eval mode under no_grad on every rank; rank 0's answer is used.
    validation_loss(model) -> dict of loss values; logged as "val/<key>" plus "val/total_loss",
        averaged over ranks.
    best_metric: the key that selects ``model_best.pth`` and drives early stopping. Higher is
        better unless the name contains "loss".
    early_stop_patience: stop after this many evaluations in a row without improvement (0 = off).
    progress: draw a tqdm bar (on stderr; tools pass True only on a terminal).
    print_log: print a line every ``log_period`` iterations and after each evaluation (iteration,
        losses, LR, s/iter, ETA), as detectron2's metric printer does; for logs nobody watches live.
    time_budget_s: a cap on the seconds of training, periodic evaluations included (0 = none).
        A fresh run times its steps (from the 11th) and evaluations; at iteration 30 and after
        each evaluation it sets ``max_iters`` to what fits at the pace so far, never above the
        ``max_iters`` given (a run cut when its first steps were slow grows back when later ones
        are faster) and only when that moves it by more than 1% (``BUDGET_MIN_CHANGE``); it fits
        the schedule to it (``scheduler.fit_to``), prints one line and rewrites ``config.yaml``
        with the new ``solver.max_iters``, so a resumed run keeps it. Every rank takes rank 0's
        count.
    metadata: what a checkpoint needs to be used on its own, e.g. ``{"dataset": meta.to_dict()}``
        (class names, keypoints); saved as ``"metadata"`` in every checkpoint (no such key without
        it). Plain dicts, lists, strings and numbers only, so ``weights_only=True`` loading works.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 make_data_iter: Callable[[int], Iterator], *, output_dir: str | Path,
                 max_iters: int, device: str | torch.device = "cpu", amp: bool | str = False,
                 clip_grad_norm: float = 0.0, clip_grad_type: str = "full_model", accumulate: int = 1,
                 checkpoint_period: int = 1000,
                 eval_period: int = 0, log_period: int = 20,
                 evaluate: Callable[[nn.Module], dict] | None = None,
                 validation_loss: Callable[[nn.Module], dict] | None = None,
                 best_metric: str | None = None, early_stop_patience: int = 0,
                 config_yaml: str | None = None, metadata: dict | None = None, keep_checkpoints: int = 3,
                 find_unused_parameters: bool = False, progress: bool = True, print_log: bool = False,
                 tensorboard: bool = True, time_budget_s: float = 0.0):
        if max_iters < 1:
            raise ValueError(f"max_iters = {max_iters} must be at least 1")
        if accumulate < 1:
            raise ValueError(f"accumulate = {accumulate} must be at least 1")
        if log_period < 1:
            raise ValueError(f"log_period = {log_period} must be at least 1")
        if min(checkpoint_period, eval_period, early_stop_patience) < 0:
            raise ValueError("checkpoint_period, eval_period and early_stop_patience must be >= 0")
        if best_metric and evaluate is None and validation_loss is None:
            raise ValueError(f"best_metric {best_metric!r} needs an evaluate or validation_loss callback")
        if early_stop_patience > 0 and not best_metric:
            raise ValueError("early_stop_patience needs best_metric (the metric that must improve)")

        self.device = torch.device(device)
        self.model = model.to(self.device)  # the bare model: checkpoints and evaluation use it
        self.net = self.model  # what the loop calls forward on (DDP-wrapped when world size > 1)
        if dist.is_distributed():
            cuda = self.device.type == "cuda"
            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if cuda else None,
                                               find_unused_parameters=find_unused_parameters)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.make_data_iter = make_data_iter
        self.output_dir = Path(output_dir)
        self.max_iters = max_iters
        # autocast dtype (None: float32); only float16 needs its gradients scaled
        self.amp_dtype = autocast_dtype(amp, self.device)
        self.amp = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        if clip_grad_type not in ("full_model", "norm"):
            raise ValueError(f"solver.clip_grad_type must be 'full_model' or 'norm', got {clip_grad_type!r}")
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_type = clip_grad_type
        self.accumulate = accumulate
        self.checkpoint_period = checkpoint_period
        self.eval_period = eval_period
        self.log_period = log_period
        self.evaluate = evaluate
        self.validation_loss = validation_loss
        self.best_metric = best_metric
        self.minimize = bool(best_metric) and "loss" in best_metric.lower()
        self.early_stop_patience = early_stop_patience
        self.config_yaml = config_yaml
        self.metadata = dict(metadata or {})
        self.keep_checkpoints = max(1, keep_checkpoints)
        self.progress = progress
        self.print_log = print_log
        self.tensorboard = tensorboard
        self.time_budget_s = time_budget_s
        self.is_main = dist.is_main_process()

        self.iter = 0  # finished optimizer steps
        self.best_value: float | None = None
        self.best_iteration: int | None = None
        self.evals_without_improvement = 0
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self._last_eval_iter = -1

        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if config_yaml is not None:
                (self.output_dir / "config.yaml").write_text(config_yaml)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict:
        """Everything a resumed run needs. Collective: call on every rank (RNG states are gathered)."""
        rng = dist.all_gather_object(get_rng_state())
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.amp else {},
            "iteration": self.iter,
            "rng": rng,  # one entry per rank
            "best_metric": self.best_metric,
            "best_value": self.best_value,
            "best_iteration": self.best_iteration,
            "evals_without_improvement": self.evals_without_improvement,
            "config_yaml": self.config_yaml,
            **({"metadata": self.metadata} if self.metadata else {}),
        }

    def _weights_state(self) -> dict:
        return {"model": self.model.state_dict(), "iteration": self.iter,
                "metrics": dict(self.last_metrics), "config_yaml": self.config_yaml,
                **({"metadata": self.metadata} if self.metadata else {})}

    def _save_periodic(self) -> None:
        name = f"model_{self.iter:07d}.pth"
        state = self.checkpoint_state()
        if self.is_main:
            save_checkpoint(self.output_dir / name, state)
            write_text_atomic(self.output_dir / "last_checkpoint", name)
            periodic = sorted(p for p in self.output_dir.iterdir() if PERIODIC.fullmatch(p.name))
            for old in periodic[: -self.keep_checkpoints]:
                if old.name != name:
                    old.unlink(missing_ok=True)
        self.last_checkpoint = self.output_dir / name

    def _last_good_checkpoint(self, iteration: int) -> Path | None:
        """The newest periodic checkpoint that predates the divergence at ``iteration``, and
        ``last_checkpoint`` pointed at it (or removed when there is none), so ``--resume`` starts
        from weights that gave finite losses. The checkpoint of the step just before (its weights
        gave the non-finite loss; after a huge LR they are already exploded) is not offered."""
        if not self.is_main:
            return None
        periodic = sorted(p for p in self.output_dir.iterdir() if PERIODIC.fullmatch(p.name))
        good = [p for p in periodic if int(PERIODIC.fullmatch(p.name).group(1)) < iteration - 1]
        pointer = self.output_dir / "last_checkpoint"
        if good:
            write_text_atomic(pointer, good[-1].name)
            return good[-1]
        pointer.unlink(missing_ok=True)
        return None

    def resume(self, path: str | Path | None = None) -> int:
        """Load a training checkpoint (default: the one ``output_dir/last_checkpoint`` names).

        Returns the iteration to continue from; 0 when ``path`` is None and there is none yet.
        """
        if self.is_main:  # what a process killed in the middle of an atomic write left behind
            for tmp in self.output_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        if path is None:
            pointer = self.output_dir / "last_checkpoint"
            if not pointer.is_file():
                return 0
            path = self.output_dir / pointer.read_text().strip()
            try:
                state = load_checkpoint(path)
            except CheckpointError as e:
                older = sorted(p.name for p in self.output_dir.iterdir()
                               if PERIODIC.fullmatch(p.name) and p.name != path.name)
                hint = f"; pass --resume-from {self.output_dir / older[-1]} to continue from an older one" \
                    if older else ""
                raise CheckpointError(f"{e}{hint}") from None
        else:
            path = Path(path)
            state = load_checkpoint(path)
        missing = [k for k in ("model", "optimizer", "scheduler", "iteration", "rng") if k not in state]
        if missing:
            raise CheckpointError(f"{path} is not a resumable training checkpoint (it has no "
                                  f"{', '.join(missing)}); to start from its weights, load them "
                                  "into the model instead")
        load_model_state(self.model, state["model"], str(path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: the optimizer state does not fit this optimizer ({e})") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if self.amp and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iter = int(state["iteration"])
        self.best_value = state.get("best_value")
        self.best_iteration = state.get("best_iteration")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        rng = state["rng"]
        rank = dist.get_rank()
        set_rng_state(rng[rank] if rank < len(rng) else rng[0])
        self.last_checkpoint = path
        return self.iter

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        """Train to ``max_iters`` (or an early stop); return a summary dict.

        Summary keys: iteration, stopped_early, best_metric, best_value, best_iteration, metrics
        (the last evaluation), seconds.
        """
        start = self.iter
        log = MetricsLog(self.output_dir, enabled=self.is_main, tensorboard=self.tensorboard,
                         start_iter=start)
        rng = get_rng_state()  # keep the global RNG where it is, whatever make_data_iter does
        data_iter = iter(self.make_data_iter(start * self.accumulate))
        set_rng_state(rng)
        bar = tqdm(total=self.max_iters, initial=start, desc="train", dynamic_ncols=True,
                   disable=not (self.is_main and self.progress))
        window: dict[str, float] = defaultdict(float)
        window_iters, window_start = 0, time.perf_counter()
        stopped_early = False
        # time_budget_s: steps after the first few and periodic evaluations are timed (a resumed
        # run keeps the max_iters its config.yaml recorded)
        budgeted = self.time_budget_s > 0 and start < self.BUDGET_UNTIMED
        clock = {"step_s": 0.0, "steps": 0, "eval_s": 0.0, "evals": 0, "ceiling": self.max_iters,
                 "next_fit": self.BUDGET_FIRST_FIT}
        t0 = time.perf_counter()
        self.net.train()
        try:
            while self.iter < self.max_iters:
                step_t0 = time.perf_counter()
                losses, lr = self.run_step(data_iter)
                if self.iter > self.BUDGET_UNTIMED:
                    clock["step_s"] += time.perf_counter() - step_t0
                    clock["steps"] += 1
                for k, v in losses.items():
                    window[k] += v
                window_iters += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()} | {"lr": f"{lr:.2e}"},
                                refresh=False)

                if self.iter % self.log_period == 0 or self.iter == self.max_iters:
                    seconds = (time.perf_counter() - window_start) / window_iters
                    means = dist.all_reduce_dict({k: v / window_iters for k, v in window.items()})
                    log.log(self.iter, "train", {"lr": lr, **means, "time_per_iter": seconds})
                    if self.is_main and self.print_log:
                        print(log_line(self.iter, self.max_iters, means, lr, seconds), flush=True)
                    window.clear()
                    window_iters, window_start = 0, time.perf_counter()

                stop = False
                if self.eval_period and self.iter % self.eval_period == 0 and self.iter < self.max_iters:
                    eval_t0 = time.perf_counter()
                    stop = self._run_evaluation(log)
                    clock["eval_s"] += time.perf_counter() - eval_t0
                    clock["evals"] += 1
                    if budgeted:
                        self._fit_to_budget(clock, time.perf_counter() - t0)
                if budgeted and self.iter == clock["next_fit"]:
                    self._fit_to_budget(clock, time.perf_counter() - t0)
                bar.total = self.max_iters
                if self.checkpoint_period and self.iter % self.checkpoint_period == 0:
                    self._save_periodic()
                if stop:
                    stopped_early = True
                    if self.is_main:
                        tqdm.write(f"early stop at iteration {self.iter}: {self.best_metric} has not "
                                   f"improved for {self.evals_without_improvement} evaluations "
                                   f"(best {self.best_value:.4g} at iteration {self.best_iteration})")
                    break

            # the weights first: a problem in the final evaluation never costs them
            if self.is_main:
                save_checkpoint(self.output_dir / "model_final.pth", self._weights_state())
            if self._last_eval_iter != self.iter:
                self._run_evaluation(log)
                if self.is_main:  # again, now with the metrics of these weights
                    save_checkpoint(self.output_dir / "model_final.pth", self._weights_state())
        finally:
            bar.close()
            log.close()
        dist.barrier()
        return {"iteration": self.iter, "stopped_early": stopped_early,
                "best_metric": self.best_metric, "best_value": self.best_value,
                "best_iteration": self.best_iteration, "metrics": dict(self.last_metrics),
                "seconds": time.perf_counter() - t0}

    BUDGET_UNTIMED = 10  # time_budget_s: the first steps start the data workers and warm caches
    BUDGET_FIRST_FIT = 30  # the first cut, from the mean of steps 11-30; again after each evaluation
    BUDGET_REFIT = 0.1  # and after as many steps as take this fraction of the budget at the pace of
    # the last fit: a run without evaluations (eval_period 0) still grows back when slow first steps
    # cut it (a step count, not a clock reading, so that every DDP process fits at the same step)
    BUDGET_MIN_CHANGE = 0.01  # the budget moves the end of a run only by more than this fraction of
    # it: the pace estimate wanders by a fraction of a percent between evaluations, and so little is seconds

    def _fit_to_budget(self, clock: dict, elapsed: float) -> None:
        """Set ``max_iters`` to what fits in ``time_budget_s`` at the mean step time so far plus,
        once there has been one, each evaluation's mean time spread over ``eval_period`` steps;
        never above ``clock["ceiling"]``, the run's length before any budget changed it."""
        if not clock["steps"]:  # an evaluation before any step was timed: wait for one
            return
        step = clock["step_s"] / clock["steps"]
        evaluation = clock["eval_s"] / clock["evals"] if clock["evals"] else 0.0
        per_iter = step + (evaluation / self.eval_period if self.eval_period else 0.0)
        fits = self.iter + int((self.time_budget_s - elapsed) / per_iter)
        # at least one more step, unless this is the last one: a run over its budget ends there
        new, clock["next_fit"] = dist.broadcast_object(
            (max(min(self.iter + 1, self.max_iters), min(clock["ceiling"], fits)),
             self.iter + max(1, int(self.BUDGET_REFIT * self.time_budget_s / per_iter))))
        if abs(new - self.max_iters) <= self.BUDGET_MIN_CHANGE * self.max_iters:
            return
        if self.is_main:
            how = f"{step:.3f} s per step" + (f" and {evaluation:.1f} s per evaluation" if clock["evals"] else "")
            change = "now ends" if new < self.max_iters else f"is lengthened again (it ended at {self.max_iters})"
            tqdm.write(f"note: solver.time_budget_min={self.time_budget_s / 60:g}: at {how} so far, {new} of "
                       f"{clock['ceiling']} iterations fit; the schedule {change} at {new} (config.yaml records "
                       f"it; solver.time_budget_min=0 runs them all)")
        self.max_iters = new
        self.scheduler.fit_to(new)
        if self.config_yaml is not None:
            cfg = yaml.safe_load(self.config_yaml)
            cfg["solver"]["max_iters"] = new
            cfg["solver"]["steps"] = list(self.scheduler.params["steps"])
            self.config_yaml = yaml.safe_dump(cfg, sort_keys=False)
            if self.is_main:
                (self.output_dir / "config.yaml").write_text(self.config_yaml)

    def run_step(self, data_iter: Iterator) -> tuple[dict[str, float], float]:
        """One optimizer step over ``accumulate`` batches. Returns (loss values, the LR used)."""
        iteration = self.iter + 1
        self.optimizer.zero_grad(set_to_none=True)
        values: dict[str, float] = defaultdict(float)
        for k in range(self.accumulate):
            try:
                images, targets = next(data_iter)
            except StopIteration:
                raise TrainingError(f"iteration {iteration}: the data iterator is exhausted; "
                                    "make_data_iter must return an endless iterator") from None
            images, targets = to_device(images, self.device), to_device(targets, self.device)
            last = k == self.accumulate - 1
            # inside an accumulation, let DDP skip the gradient all-reduce until the last batch
            sync = contextlib.nullcontext() if last or self.net is self.model else self.net.no_sync()
            with sync:
                with autocast(self.amp_dtype, self.device):
                    _, losses = self.net(images, targets)
                losses = self._check_losses(losses, iteration)
                total = sum(losses.values())
                self.scaler.scale(total / self.accumulate).backward()
            for name, value in losses.items():
                values[name] += float(value.detach()) / self.accumulate
        values["total_loss"] = sum(values.values())

        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            values["grad_norm"] = float(clip_gradients(params, self.clip_grad_norm, self.clip_grad_type))
        lr = max(group["lr"] for group in self.optimizer.param_groups)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iter = iteration
        return dict(values), lr

    def _check_losses(self, losses: dict, iteration: int) -> dict[str, torch.Tensor]:
        """Stop, before any optimizer step, when a loss term is not a finite scalar (on any rank)."""
        if not isinstance(losses, dict) or not losses:
            raise TrainingError(f"iteration {iteration}: the model returned no losses ({losses!r}); "
                                "it must return (predictions, dict of loss tensors) when given targets")
        bad = None
        for name, value in losses.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TrainingError(f"iteration {iteration}: {name} is {shape}, expected a scalar tensor")
        finite = torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in losses.values()]))
        if not bool(finite.all()):
            name = list(losses)[int((~finite).nonzero()[0])]
            bad = f"{name} is {float(losses[name].detach())}"
        if not dist.all_ranks_true(bad is None):
            good = self._last_good_checkpoint(iteration)
            where = f"The last good checkpoint is {good}" if good else \
                "No checkpoint was written before the loss stopped being finite"
            what = bad or f"a loss on another process (not rank {dist.get_rank()}) is not finite"
            raise TrainingError(f"iteration {iteration}: {what}; stopped. {where}")
        return losses

    # ------------------------------------------------------------------ evaluation

    def _run_evaluation(self, log: MetricsLog) -> bool:
        """Evaluate, log, keep model_best.pth; return True when early stopping says stop."""
        if self.evaluate is None and self.validation_loss is None:
            return False
        metrics: dict[str, float] = {}
        self.model.eval()
        try:
            with torch.no_grad():
                if self.evaluate is not None:
                    metrics.update(flatten_metrics(dist.broadcast_object(self.evaluate(self.model) or {})))
                if self.validation_loss is not None:
                    val = dist.all_reduce_dict(flatten_metrics(self.validation_loss(self.model) or {}))
                    val.setdefault("total_loss", sum(v for k, v in val.items() if k.startswith("loss")))
                    metrics.update({f"val/{k}": v for k, v in val.items()})
        finally:
            self.model.train()
        self.last_metrics = metrics
        self._last_eval_iter = self.iter
        log.log(self.iter, "eval", metrics)
        log.flush()
        if self.is_main and self.print_log:
            # the headline numbers: no per-class or per-size breakdown (metrics.csv has them all)
            shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                              if "/" not in k or k.endswith("/AP") or k.startswith("val/"))
            print(f"eval at iter {self.iter}: {shown}", flush=True)
        if not self.best_metric:
            return False
        if self.best_metric not in metrics:
            raise TrainingError(f"iteration {self.iter}: best_metric {self.best_metric!r} is not among "
                                f"the evaluation results ({', '.join(sorted(metrics)) or 'none'})")
        value = metrics[self.best_metric]
        better = self.best_value is None or (value < self.best_value if self.minimize
                                             else value > self.best_value)
        if better and math.isfinite(value):
            self.best_value, self.best_iteration = value, self.iter
            self.evals_without_improvement = 0
            if self.is_main:
                save_checkpoint(self.output_dir / "model_best.pth", self._weights_state())
        else:
            self.evals_without_improvement += 1
        return 0 < self.early_stop_patience <= self.evals_without_improvement

"""Learning-rate schedules, evaluated per iteration: linear warmup, then step or cosine decay.

    lr(group, it) = base_lr * group["lr_mult"] * warmup(it) * decay(it)

``it`` is the 0-based index of the iteration being run (the first optimizer step uses it = 0).
"""
from __future__ import annotations

import bisect
import math
from typing import Sequence

import torch


def lr_factor(it: int, *, max_iters: int, schedule: str = "step", steps: Sequence[int] = (),
              gamma: float = 0.1, warmup_iters: int = 0, warmup_factor: float = 0.001) -> float:
    """The LR multiplier at iteration ``it`` (0-based), warmup included.

    warmup: rises linearly from ``warmup_factor`` at it = 0 to 1 at it = ``warmup_iters``.
    step:   gamma ** (number of ``steps`` <= it).
    cosine: 0.5 * (1 + cos(pi * it / max_iters)), from 1 down to 0 at ``max_iters``.
    """
    if schedule == "step":
        decay = gamma ** bisect.bisect_right(sorted(steps), it)
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * min(it, max_iters) / max_iters))
    elif schedule == "constant":
        decay = 1.0
    else:
        raise ValueError(f"unknown LR schedule {schedule!r}; use 'step', 'cosine' or 'constant'")
    if it < warmup_iters:
        alpha = it / warmup_iters
        decay *= warmup_factor * (1.0 - alpha) + alpha
    return decay


class WarmupSchedule:
    """Sets every group's LR to ``base_lr * group.get("lr_mult", 1) * lr_factor(it)``.

    The LR for iteration 0 is set on construction; call :meth:`step` after each optimizer step.
    ``state_dict`` / ``load_state_dict`` hold the iteration only, so a resumed run recomputes the
    same LRs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, base_lr: float, max_iters: int,
                 schedule: str = "step", steps: Sequence[int] = (), gamma: float = 0.1,
                 warmup_iters: int = 0, warmup_factor: float = 0.001):
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.params = dict(max_iters=max_iters, schedule=schedule, steps=tuple(steps), gamma=gamma,
                           warmup_iters=warmup_iters, warmup_factor=warmup_factor)
        lr_factor(0, **self.params)  # fail now on an unknown schedule name
        self.configured = dict(self.params)  # what fit_to scales from, however often it is called
        self.last_iter = 0
        self._apply()

    def _apply(self) -> None:
        factor = lr_factor(self.last_iter, **self.params)
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * group.get("lr_mult", 1.0) * factor

    def step(self) -> None:
        self.last_iter += 1
        self._apply()

    def fit_to(self, max_iters: int) -> None:
        """Fit the schedule to a run whose length a time budget changed to ``max_iters`` (shorter or,
        when the pace picks up, longer again, up to the constructed length): the cosine ends there,
        LR steps sit at the same fractions of the run as constructed, the warmup stays as it is."""
        configured = self.configured["max_iters"]
        steps = tuple(round(x * max_iters / configured) for x in self.configured["steps"])
        self.params.update(max_iters=max_iters, steps=tuple(x for x in steps if x < max_iters))
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_iter": self.last_iter}

    def load_state_dict(self, state: dict) -> None:
        self.last_iter = int(state["last_iter"])
        self._apply()

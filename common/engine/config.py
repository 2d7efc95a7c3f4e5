"""The solver section of every training config (detection and segmentation share it).

Iterations count optimizer steps. With ``accumulate = k`` one iteration consumes k batches of
``ims_per_batch`` images, so the effective batch is ``k * ims_per_batch`` (times the world size).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SolverConfig:
    optimizer: Literal["sgd", "adamw"] = "sgd"  # the update rule
    base_lr: float = 0.01  # learning rate of a group with lr_mult 1, after warmup
    momentum: float = 0.9  # SGD momentum
    betas: tuple[float, ...] = (0.9, 0.999)  # AdamW moment decay rates (two numbers)
    weight_decay: float = 1e-4  # L2 / decoupled decay on weights
    norm_weight_decay: float = 0.0  # decay on norm-layer weights and biases (usually none)
    lr_mults: dict[str, float] = field(default_factory=dict)  # module-name prefix -> LR multiplier (longest prefix wins)
    max_iters: int = 1000  # optimizer steps in the whole run
    epochs: float = 0.0  # > 0: the run is this many passes over the training images instead:
    # max_iters = ceil(epochs x images / images per step), steps and the checkpoint and evaluation
    # periods scaled with it (one line printed; config.yaml records the result). 0 = max_iters as written
    time_budget_min: float = 0.0  # cap on the minutes of training, periodic evaluations included
    # (not the final one): at iteration 30 and after each evaluation of a fresh run, max_iters is
    # cut to what fits at the times measured so far and the schedule fitted to it (one line
    # printed; config.yaml records the new max_iters). 0 = off; a tool's --max-iters N turns it off
    warmup_iters: int = 100  # linear warmup length in iterations (0 = no warmup)
    warmup_factor: float = 0.001  # LR factor at iteration 0 of the warmup
    schedule: Literal["step", "cosine", "constant"] = "step"  # LR decay after warmup
    steps: tuple[int, ...] = (700, 900)  # "step": iterations at which the LR is multiplied by gamma
    gamma: float = 0.1  # "step": decay factor at each of `steps`
    clip_grad_norm: float = 0.0  # clip gradient L2 norms to this value (0 = off)
    clip_grad_type: Literal["full_model", "norm"] = "full_model"  # full_model: the norm of all gradients
    # together; norm: each parameter's own (detectron2's two norm clip types): one large gradient
    # (a noisy head's) then does not shrink every other parameter's step
    accumulate: int = 1  # batches whose gradients are summed per optimizer step
    amp: bool | Literal["off", "bf16", "fp16", "auto"] = False  # mixed precision: off, bf16, fp16 (+ gradient scaling) or auto (bf16 on GPUs and CPUs with native bf16, else fp16 on CUDA / off on the CPU); true = the old fp16-on-CUDA-only (common/engine/precision.py)
    ims_per_batch: int = 4  # images per batch on each process
    reference_batch: int = 0  # total images per step (ims_per_batch x accumulate x world size) that
    # base_lr and the iteration counts were written for; when the run's total differs, base_lr scales
    # linearly with it and max_iters, steps, warmup and periods inversely (the linear scaling rule,
    # detectron2's REFERENCE_WORLD_SIZE). 0 = use them as written
    checkpoint_period: int = 500  # save a resumable checkpoint every this many iterations (0 = off)
    keep_checkpoints: int = 3  # how many periodic checkpoints to keep on disk
    eval_period: int = 500  # evaluate every this many iterations (0 = only at the end)
    log_period: int = 20  # write metrics.csv / TensorBoard every this many iterations
    early_stop_patience: int = 0  # stop after this many evaluations without improvement (0 = off)
    best_metric: str | None = None  # metric that selects model_best.pth, e.g. "bbox/AP" or "mIoU"
    seed: int = 0  # seed for python, numpy and torch
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower, reproducible on GPU)


def fit_schedule_to_max_iters(s: SolverConfig) -> None:
    """Keep the LR schedule inside a run shortened by ``--max-iters``: the warmup ends by
    ``max_iters`` and LR steps at or after it are dropped. In place."""
    s.warmup_iters = min(s.warmup_iters, s.max_iters)
    s.steps = tuple(x for x in s.steps if x < s.max_iters)

"""LR schedules: warmup, step, cosine; per-group LR multipliers; solver config checks."""
import copy
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from common.config import ConfigError
from common.engine import SolverConfig, WarmupSchedule, build_scheduler, check_solver, lr_factor


def test_warmup_is_linear_from_warmup_factor_to_one():
    kw = dict(max_iters=100, schedule="constant", warmup_iters=10, warmup_factor=0.001)
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(5, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(9, **kw) == pytest.approx(0.001 * 0.1 + 0.9)
    assert lr_factor(10, **kw) == 1.0
    assert lr_factor(99, **kw) == 1.0


def test_step_schedule_multiplies_by_gamma_at_each_step():
    kw = dict(max_iters=40, schedule="step", steps=(20, 30), gamma=0.1)
    assert [lr_factor(i, **kw) for i in (0, 19, 20, 29, 30, 39)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_with_warmup():
    kw = dict(max_iters=100, schedule="cosine", warmup_iters=10, warmup_factor=0.1)
    assert lr_factor(50, **kw) == pytest.approx(0.5)
    assert lr_factor(25, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(100, **kw) == pytest.approx(0.0, abs=1e-12)
    # warmup multiplies the cosine value
    assert lr_factor(5, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.05)) * 0.55)


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="unknown LR schedule 'linear'"):
        lr_factor(0, max_iters=10, schedule="linear")


def _optimizer():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr_mult": 0.1},
                           {"params": model[1].parameters(), "lr_mult": 1.0}], lr=1.0)
    return model, opt


def test_scheduler_sets_each_group_lr_with_its_multiplier():
    _, opt = _optimizer()
    cfg = SolverConfig(base_lr=0.02, max_iters=30, warmup_iters=4, warmup_factor=0.25,
                       schedule="step", steps=(10,), gamma=0.5)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(12):
        seen.append(sched.get_last_lr())
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.02 * 0.1 * 0.25, 0.02 * 0.25])  # iteration 0: warmup start
    assert seen[2] == pytest.approx([0.02 * 0.1 * 0.625, 0.02 * 0.625])
    assert seen[4] == pytest.approx([0.002, 0.02])
    assert seen[10] == pytest.approx([0.001, 0.01])


def test_scheduler_state_round_trip():
    _, opt = _optimizer()
    sched = WarmupSchedule(opt, base_lr=0.1, max_iters=20, schedule="cosine", warmup_iters=5)
    for _ in range(7):
        sched.step()
    _, opt2 = _optimizer()
    sched2 = WarmupSchedule(opt2, base_lr=0.1, max_iters=20, schedule="cosine", warmup_iters=5)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_iter == 7
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


@pytest.mark.parametrize("changes, message", [
    ({"steps": (50, 20)}, r"solver.steps = \(50, 20\) must be positive and increasing"),
    ({"warmup_iters": 2000}, r"solver.warmup_iters = 2000 must be between 0 and max_iters \(1000\)"),
    ({"accumulate": 0}, "solver.accumulate = 0 must be at least 1"),
    ({"betas": (0.9,)}, r"solver.betas = \(0.9,\) must be two numbers in \[0, 1\)"),
    ({"early_stop_patience": 3}, "needs solver.best_metric"),
    # numbers are named before the warm-up is compared with max_iters (issue 12)
    ({"base_lr": float("nan"), "max_iters": 20}, "^solver.base_lr = nan must be a finite number$"),
    ({"base_lr": float("inf")}, "^solver.base_lr = inf must be a finite number$"),
    ({"base_lr": 0.0}, "^solver.base_lr = 0.0 must be positive$"),
    ({"ims_per_batch": 0, "max_iters": 20}, "^solver.ims_per_batch = 0 must be at least 1$"),
    ({"momentum": float("nan")}, "^solver.momentum = nan must be a finite number$"),
    ({"lr_mults": {"backbone": float("inf")}}, "^solver.lr_mults = .* must map module prefixes to finite"),
    ({"time_budget_min": float("nan")}, "^solver.time_budget_min = nan must be a finite number$"),
    ({"time_budget_min": -1.0}, r"^solver.time_budget_min = -1.0 must be >= 0 \(0 = no budget\)$"),
])
def test_bad_solver_settings_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_solver(SolverConfig(**changes))


def test_build_optimizer_uses_param_groups():
    pytest.importorskip("common.optim")
    from common.engine import build_optimizer

    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    cfg = SolverConfig(optimizer="adamw", base_lr=0.01, weight_decay=0.05, lr_mults={"2": 0.1},
                       warmup_iters=0)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert all("lr_mult" in g for g in opt.param_groups)
    build_scheduler(opt, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model[2].weight)] == pytest.approx(0.001)
    assert lr_of[id(model[0].weight)] == pytest.approx(0.01)
    assert decay_of[id(model[1].weight)] == 0.0
    assert decay_of[id(model[0].weight)] == pytest.approx(0.05)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_steps_as_the_default_one_and_loads_its_checkpoints(name, monkeypatch):
    import common.engine.build as build

    cfg = SolverConfig(optimizer=name, base_lr=0.01, weight_decay=0.05, warmup_iters=0)

    def run(state=None, steps=5):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        opt = build.build_optimizer(model, cfg)
        if state is not None:  # a copy: load_state_dict may keep the tensors it is given
            model.load_state_dict(copy.deepcopy(state[0]))
            opt.load_state_dict(copy.deepcopy(state[1]))
        x = torch.randn(16, 3)
        for _ in range(steps):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return model, opt

    def same(a, b):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

    fused, fused_opt = run()
    if torch.__version__ >= (2, 4):  # the CPU kernels came with 2.4
        assert fused_opt.defaults.get("fused") is True
    with monkeypatch.context() as m:  # PyTorch's default implementation, same groups and settings
        m.setattr(build, "fused_if_supported", lambda cls, groups, **kw: cls(groups, **kw))
        plain, plain_opt = run()
        assert not plain_opt.defaults.get("fused")
        same(fused, plain)
        continued, _ = run((plain.state_dict(), plain_opt.state_dict()))
    # a checkpoint of the default implementation resumes in the fused one and steps on alike
    resumed, _ = run((plain.state_dict(), plain_opt.state_dict()))
    same(resumed, continued)


def test_solver_config_takes_yaml_style_overrides():
    from common.config import load_config

    cfg = load_config(SolverConfig, overrides=["optimizer=adamw", "steps=[300,400]", "betas=[0.9,0.99]",
                                               "lr_mults={backbone.body: 0.1}", "best_metric=bbox/AP"])
    assert cfg.steps == (300, 400) and cfg.betas == (0.9, 0.99)
    assert cfg.lr_mults == {"backbone.body": 0.1} and cfg.best_metric == "bbox/AP"
    with pytest.raises(ConfigError, match=r"'optimizer' = 'adam' must be one of \['sgd', 'adamw'\]"):
        load_config(SolverConfig, overrides=["optimizer=adam"])


def test_scale_to_batch_follows_the_linear_scaling_rule():
    from common.engine import scale_to_batch

    recipe = SolverConfig(base_lr=0.02, ims_per_batch=2, reference_batch=16, max_iters=90000,
                          steps=(60000, 80000), warmup_iters=1000, checkpoint_period=5000, eval_period=0)
    same, note = scale_to_batch(recipe, world_size=8)  # 2 x 8 = 16: as written
    assert same == recipe and note is None
    one, note = scale_to_batch(recipe, world_size=1)  # 2 images per step: 8x the steps at 1/8 the LR
    assert one.base_lr == pytest.approx(0.0025)
    assert (one.max_iters, one.steps, one.warmup_iters, one.checkpoint_period, one.eval_period) == (
        720000, (480000, 640000), 8000, 40000, 0)
    assert note.startswith("solver: 2 images per step (2 x 1 accumulated x 1 processes) instead of the recipe's 16: "
                           "base_lr 0.02 -> 0.0025, max_iters 90000 -> 720000")
    accumulated, note = scale_to_batch(replace(recipe, ims_per_batch=4, accumulate=2), world_size=2)
    assert accumulated.base_lr == 0.02 and note is None  # 4 x 2 x 2 = 16
    assert scale_to_batch(replace(recipe, reference_batch=0), 1)[0] == replace(recipe, reference_batch=0)


def test_epochs_size_the_schedule_by_the_training_set_and_the_line_says_so():
    from common.engine import schedule_in_epochs

    recipe = SolverConfig(max_iters=1000, steps=(700, 900), warmup_iters=100, checkpoint_period=500, eval_period=200,
                          ims_per_batch=4, time_budget_min=13)
    same, note = schedule_in_epochs(recipe, images=600)  # epochs 0: max_iters as written, in epochs
    assert same == recipe
    assert note == ("schedule: 1000 iterations of 4 images = 6.7 epochs of 600 training images (solver.max_iters; "
                    "solver.epochs=E sizes the run in passes over the data instead); "
                    "solver.time_budget_min=13 cuts it to what fits")
    # 12 passes over 50 images at 4 x 2 processes: ceil(600 / 8) = 75 steps, the rest scaled by 75 / 1000
    short, note = schedule_in_epochs(replace(recipe, epochs=12, time_budget_min=0), images=50, world_size=2)
    assert (short.max_iters, short.steps, short.warmup_iters, short.checkpoint_period, short.eval_period) == (
        75, (52, 68), 75, 38, 15)
    assert note == ("schedule: 75 iterations of 8 images = 12.0 epochs of 50 training images "
                    "(solver.epochs=12; solver.epochs=0 uses solver.max_iters)")
    check_solver(short)
    # a long run: the steps keep their place in the schedule; steps that round together merge
    long, _ = schedule_in_epochs(replace(recipe, epochs=2, steps=(700, 701)), images=20000)
    assert (long.max_iters, long.steps, long.warmup_iters) == (10000, (7000, 7010), 100)
    tiny, _ = schedule_in_epochs(replace(recipe, epochs=1, steps=(700, 701)), images=4)
    assert (tiny.max_iters, tiny.steps, tiny.warmup_iters) == (1, (1,), 1)
    with pytest.raises(ConfigError, match=r"solver.epochs = -1 must be >= 0"):
        schedule_in_epochs(replace(recipe, epochs=-1), images=10)

"""The training loop on a toy model: resume exactness, NaN guard, accumulation, early stopping,
metrics.csv and curves."""
import csv
import re
import itertools
import time

import pytest
import torch
import yaml

from common.engine import (CheckpointError, Trainer, TrainingError, WarmupSchedule, load_checkpoint, plot_curves,
                           seed_everything, to_device)
from engine_toys import ToyImages, ToyModel


def batch(seed, i, n):
    g = torch.Generator().manual_seed(seed * 100_003 + i)
    x = torch.randn(n, 4, generator=g)
    y = torch.stack([x[:, 0] * 2 - x[:, 1], x[:, 2] * x[:, 3]], dim=1)
    return x, y


def make_data(seed=0, n=4):
    """make_data_iter(start): batch i depends only on (seed, i)."""
    def make_data_iter(start):
        for i in itertools.count(start):
            x, y = batch(seed, i, n)
            yield ToyImages(x), [{"y": t} for t in y]
    return make_data_iter


def make_trainer(out, *, max_iters, model=None, make_data_iter=None, **kw):
    model = model or ToyModel()
    groups = [{"params": model.body.parameters(), "lr_mult": 1.0},
              {"params": model.head.parameters(), "lr_mult": 0.5}]
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = WarmupSchedule(opt, base_lr=0.05, max_iters=6, schedule="cosine", warmup_iters=2)
    kw = {"checkpoint_period": 1000, "log_period": 1, "progress": False, "tensorboard": False} | kw
    return Trainer(model, opt, sched, make_data_iter or make_data(), output_dir=out,
                   max_iters=max_iters, **kw)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    seed_everything(0)
    straight = make_trainer(tmp_path / "a", max_iters=6, model=ToyModel(dropout=0.3))
    straight.train()

    # interrupted run: checkpoint after 3 iterations, then one more iteration that is thrown away
    seed_everything(0)
    first = make_trainer(tmp_path / "b", max_iters=4, model=ToyModel(dropout=0.3), checkpoint_period=3)
    first.train()
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000003.pth"

    seed_everything(12345)  # other init and other RNG: all of it must come from the checkpoint
    resumed = make_trainer(tmp_path / "b", max_iters=6, model=ToyModel(dropout=0.3))
    assert resumed.resume() == 3
    resumed.train()

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], first.model.state_dict()["head.weight"])
    train_iters = [int(r["iter"]) for r in rows(tmp_path / "b" / "metrics.csv") if r["phase"] == "train"]
    assert train_iters == [1, 2, 3, 4, 5, 6]  # the thrown-away row 4 was replaced


def test_trainer_checkpoint_loads_with_weights_only(tmp_path):
    make_trainer(tmp_path, max_iters=2, checkpoint_period=2).train()
    state = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    assert state["iteration"] == 2 and state["scheduler"] == {"last_iter": 2}
    assert set(state["optimizer"]["state"]) == {0, 1, 2, 3}  # momentum buffers
    assert [g["lr_mult"] for g in state["optimizer"]["param_groups"]] == [1.0, 0.5]
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}
    final = load_checkpoint(tmp_path / "model_final.pth")
    assert set(final) == {"model", "iteration", "metrics", "config_yaml"} and final["iteration"] == 2


def test_resume_starts_fresh_without_checkpoint_and_refuses_a_weights_file(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=2)
    assert trainer.resume() == 0
    trainer.train()
    with pytest.raises(Exception, match=r"model_final\.pth is not a resumable training checkpoint"):
        make_trainer(tmp_path, max_iters=2).resume(tmp_path / "model_final.pth")


def test_periodic_checkpoints_keep_only_the_last_few(tmp_path):
    make_trainer(tmp_path, max_iters=6, checkpoint_period=1, keep_checkpoints=2,
                 config_yaml="solver:\n  max_iters: 6\n").train()
    names = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert names == ["model_0000005.pth", "model_0000006.pth", "model_final.pth"]
    assert load_checkpoint(tmp_path / "model_final.pth")["config_yaml"] == "solver:\n  max_iters: 6\n"
    assert (tmp_path / "config.yaml").read_text() == "solver:\n  max_iters: 6\n"


def test_nan_loss_stops_before_the_step_and_names_the_last_good_checkpoint(tmp_path):
    """The checkpoint of iteration 4 holds the weights whose loss at iteration 5 was NaN (after a
    huge LR they are already exploded): the one offered for resuming predates them (issue 12)."""
    trainer = make_trainer(tmp_path, max_iters=10, checkpoint_period=2, model=ToyModel(bad_loss_at=5))
    with pytest.raises(TrainingError) as err:
        trainer.train()
    assert str(err.value) == (f"iteration 5: loss_b is nan; stopped. "
                              f"The last good checkpoint is {tmp_path / 'model_0000002.pth'}")
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000002.pth", "model_0000004.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    saved = load_checkpoint(tmp_path / "model_0000004.pth")["model"]
    now = trainer.model.state_dict()
    assert all(torch.equal(saved[k], now[k]) for k in now)  # no optimizer step after the bad loss

    # --resume continues from the checkpoint offered, not from the one before the divergence
    again = make_trainer(tmp_path, max_iters=10, checkpoint_period=2)
    assert again.resume() == 2


def test_nan_right_after_the_only_checkpoint_offers_none(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=10, checkpoint_period=1, model=ToyModel(bad_loss_at=2))
    with pytest.raises(TrainingError, match=r"^iteration 2: loss_b is nan; stopped\. No checkpoint was "
                                            r"written before the loss stopped being finite$"):
        trainer.train()
    assert (tmp_path / "model_0000001.pth").is_file()  # kept on disk, but not offered for --resume
    assert not (tmp_path / "last_checkpoint").exists()


def test_inf_loss_before_any_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=10, checkpoint_period=5,
                           model=ToyModel(bad_loss_at=1, bad_value=float("inf")))
    with pytest.raises(TrainingError, match=r"^iteration 1: loss_b is inf; stopped\. "
                                            r"No checkpoint was written before the loss stopped being finite$"):
        trainer.train()
    assert list(tmp_path.glob("*.pth")) == []


def test_model_final_is_written_before_the_final_evaluation(tmp_path):
    """A problem in the last evaluation (e.g. a bad val image) never costs the trained weights."""
    def evaluate(model):
        raise ValueError("val.json: image 7 does not exist")

    trainer = make_trainer(tmp_path, max_iters=3, checkpoint_period=0, evaluate=evaluate)
    with pytest.raises(ValueError, match="image 7"):
        trainer.train()
    state = load_checkpoint(tmp_path / "model_final.pth")
    assert state["iteration"] == 3 and state["metrics"] == {}


def test_resume_cleans_temporaries_and_points_to_an_older_checkpoint(tmp_path):
    """A kill during a checkpoint write leaves .model_*.pth.*.tmp; a corrupt last checkpoint names
    the --resume-from that continues from an older one."""
    make_trainer(tmp_path, max_iters=4, checkpoint_period=2).train()
    stale = tmp_path / ".model_0000006.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    (tmp_path / "model_0000004.pth").write_bytes(b"\x00" * 100)  # cut off
    before = sorted(p.name for p in tmp_path.iterdir() if p.name != stale.name)
    trainer = make_trainer(tmp_path, max_iters=6, checkpoint_period=2)
    with pytest.raises(CheckpointError) as err:
        trainer.resume()
    assert str(err.value) == (f"checkpoint {tmp_path / 'model_0000004.pth'} is corrupt or not a torch file "
                              "(not a checkpoint, or one cut off while it was written); pass --resume-from "
                              f"{tmp_path / 'model_0000002.pth'} to continue from an older one")
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing else touched
    assert trainer.resume(tmp_path / "model_0000002.pth") == 2


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    def halves(start):  # batch j is half j % 2 of the 4-image batch j // 2
        for j in itertools.count(start):
            x, y = batch(0, j // 2, 4)
            part = slice(0, 2) if j % 2 == 0 else slice(2, 4)
            yield ToyImages(x[part]), [{"y": t} for t in y[part]]

    torch.manual_seed(0)
    big = make_trainer(tmp_path / "big", max_iters=4, model=ToyModel())
    torch.manual_seed(0)
    acc = make_trainer(tmp_path / "acc", max_iters=4, model=ToyModel(), make_data_iter=halves,
                       accumulate=2)
    big.train()
    acc.train()
    a, b = big.model.state_dict(), acc.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    init = ToyModel().state_dict()
    assert not torch.allclose(init["head.weight"], a["head.weight"])


def test_gradient_clipping_limits_the_update(tmp_path):
    def first_update(clip):
        torch.manual_seed(0)
        trainer = make_trainer(tmp_path / str(clip), max_iters=1, model=ToyModel(),
                               clip_grad_norm=clip, checkpoint_period=0)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.train()
        step = torch.cat([(p.detach() - b).flatten() for p, b in zip(trainer.model.parameters(), before)])
        return step.norm().item(), rows(tmp_path / str(clip) / "metrics.csv")[0]

    free, _ = first_update(0.0)
    clipped, row = first_update(1e-3)
    assert float(row["grad_norm"]) > 0.1  # the norm before clipping is logged
    assert clipped < free / 50


def test_early_stopping_and_best_model(tmp_path):
    scores = iter([1.0, 2.0, 2.0, 1.5, 9.0])
    calls = []

    def evaluate(model):
        calls.append(model.training)
        return {"score": next(scores)}

    trainer = make_trainer(tmp_path, max_iters=20, eval_period=2, evaluate=evaluate,
                           best_metric="score", early_stop_patience=2)
    summary = trainer.train()
    assert summary["stopped_early"] and summary["iteration"] == 8
    assert (summary["best_value"], summary["best_iteration"]) == (2.0, 4)
    assert calls == [False] * 4  # in eval mode; no extra final evaluation after the stop
    assert load_checkpoint(tmp_path / "model_best.pth")["iteration"] == 4
    assert load_checkpoint(tmp_path / "model_final.pth")["iteration"] == 8


def test_lower_is_better_for_a_loss_metric(tmp_path):
    losses = iter([3.0, 1.0, 2.0])
    trainer = make_trainer(tmp_path, max_iters=6, eval_period=2,
                           validation_loss=lambda m: {"loss_a": next(losses)},
                           best_metric="val/total_loss")
    summary = trainer.train()
    assert (summary["best_value"], summary["best_iteration"]) == (1.0, 4)


def test_missing_best_metric_is_named(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=4, eval_period=2, evaluate=lambda m: {"segm/AP": 1.0},
                           best_metric="bbox/AP")
    with pytest.raises(TrainingError, match=r"iteration 2: best_metric 'bbox/AP' is not among "
                                            r"the evaluation results \(segm/AP\)"):
        trainer.train()


def test_metrics_csv_tensorboard_and_curves(tmp_path):
    aps = iter([10.0, 20.0])

    def evaluate(model):
        return {"bbox": {"AP": next(aps), "AP50": 50.0}}

    trainer = make_trainer(tmp_path, max_iters=4, eval_period=2, evaluate=evaluate, tensorboard=True,
                           validation_loss=lambda m: {"loss_a": 0.5, "loss_b": 0.25})
    trainer.train()
    table = rows(tmp_path / "metrics.csv")
    with open(tmp_path / "metrics.csv") as f:
        header = f.readline().strip().split(",")
    assert header == ["iter", "phase", "lr", "loss_a", "loss_b", "total_loss", "time_per_iter",
                      "bbox/AP", "bbox/AP50", "val/loss_a", "val/loss_b", "val/total_loss"]
    assert [(r["iter"], r["phase"]) for r in table] == [
        ("1", "train"), ("2", "train"), ("2", "eval"), ("3", "train"), ("4", "train"), ("4", "eval")]
    assert float(table[0]["lr"]) == pytest.approx(0.05 * 0.001)  # warmup start
    assert float(table[2]["val/total_loss"]) == 0.75 and table[2]["loss_a"] == ""
    assert [float(table[i]["bbox/AP"]) for i in (2, 5)] == [10.0, 20.0]
    first = table[0]
    assert float(first["total_loss"]) == pytest.approx(float(first["loss_a"]) + float(first["loss_b"]))
    assert list(tmp_path.glob("events.out.tfevents.*"))

    paths = plot_curves(tmp_path / "metrics.csv", tmp_path / "plots")
    assert [p.name for p in paths] == ["loss_curve.png", "metric_curve.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_plot_curves_rejects_a_foreign_csv(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"other\.csv is not a metrics.csv written by the engine"):
        plot_curves(tmp_path / "other.csv", tmp_path)


def test_exhausted_data_iterator_is_named(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=5,
                           make_data_iter=lambda start: itertools.islice(make_data()(start), 2))
    with pytest.raises(TrainingError, match="iteration 3: the data iterator is exhausted"):
        trainer.train()


def test_to_device_walks_containers():
    batch_ = {"a": [torch.ones(1), (torch.zeros(1), 3)], "img": ToyImages(torch.ones(2)), "s": "x"}
    moved = to_device(batch_, "cpu")
    assert isinstance(moved["img"], ToyImages) and moved["a"][1][1] == 3 and moved["s"] == "x"
    assert isinstance(moved["a"][1], tuple)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP is used on CUDA only")
def test_amp_on_cuda_saves_and_resumes_the_grad_scaler(tmp_path):
    make_trainer(tmp_path, max_iters=2, checkpoint_period=2, device="cuda", amp=True).train()
    state = torch.load(tmp_path / "model_0000002.pth", weights_only=True)
    assert state["scaler"]["scale"] > 0 and "cuda" in state["rng"][0]
    resumed = make_trainer(tmp_path, max_iters=3, device="cuda", amp=True)
    assert resumed.resume() == 2
    assert resumed.scaler.get_scale() == state["scaler"]["scale"]
    assert resumed.train()["iteration"] == 3


def test_metric_curve_has_one_panel_per_task_with_ap_ap50_ap75():
    from common.engine.curves import metric_panels

    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    metrics = {f"{t}/{n}": ([1], [0.0]) for t in ("bbox", "segm") for n in names}
    metrics.update({"keypoints/AP": ([1], [0.0]), "keypoints/APm": ([1], [0.0]), "mIoU": ([1], [0.0]),
                    "pixel_acc": ([1], [0.0])})
    panels = metric_panels(metrics)
    assert panels == {
        "bbox": ["bbox/AP", "bbox/AP50", "bbox/AP75"], "keypoints": ["keypoints/AP"],
        "metrics": ["mIoU", "pixel_acc"], "segm": ["segm/AP", "segm/AP50", "segm/AP75"]}
    assert list(panels) == ["bbox", "segm", "keypoints", "metrics"]  # left to right
    assert metric_panels({}) == {}
def test_log_lines_every_log_period_when_nobody_watches(tmp_path, capsys):
    """--no-progress or stdout in a file: a line per log_period (iteration, losses, lr, s/iter,
    ETA) and one per evaluation; no carriage-return bar frames."""
    trainer = make_trainer(tmp_path, max_iters=4, log_period=2, print_log=True, progress=False,
                           evaluate=lambda m: {"score": 1.5})
    trainer.train()
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and "\r" not in out + err
    for line, it in zip(lines[:2], (2, 4)):
        assert re.fullmatch(rf"iter {it}/4  total_loss \S+  loss_a \S+  loss_b \S+  lr \S+e[-+]\d\d  "
                            r"\d+\.\d{3} s/iter  eta \d:\d\d:\d\d", line), line
    assert lines[2] == "eval at iter 4: score 1.5"
    assert lines[1].endswith("eta 0:00:00")


def test_log_line_format():
    from common.engine.trainer import log_line

    assert log_line(40, 200, {"loss_cls": 0.5, "total_loss": 1.25}, 0.01, 0.5) == \
        "iter 40/200  total_loss 1.25  loss_cls 0.5  lr 1.00e-02  0.500 s/iter  eta 0:01:20"
    assert log_line(1, 10001, {}, 0.1, 1.0).endswith("eta 2:46:40")


def test_clip_per_parameter_leaves_small_gradients_alone():
    """'norm' clips each parameter's gradient on its own, so one large gradient (a noisy head's)
    does not shrink the others' steps as 'full_model' clipping does."""
    from common.engine.trainer import clip_gradients

    def params():
        big, small = torch.zeros(4, requires_grad=True), torch.zeros(3, requires_grad=True)
        big.grad, small.grad = torch.full((4,), 10.0), torch.full((3,), 0.1)
        return big, small

    big, small = params()
    total = clip_gradients([big, small], 1.0, "norm")
    assert float(total) == pytest.approx((400 + 0.03) ** 0.5)        # the norm before clipping
    assert big.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(small.grad, torch.full((3,), 0.1))             # untouched
    big, small = params()
    clip_gradients([big, small], 1.0, "full_model")
    assert small.grad[0].item() < 0.01                                 # shrunk by the big one


class SlowToyModel(ToyModel):
    """Each training forward takes ``seconds`` (only the first ``until`` of them when given, then
    ``then`` seconds): a run whose length the clock decides."""

    def __init__(self, seconds, until=None, then=0.0):
        super().__init__()
        self.seconds, self.until, self.then = seconds, until, then

    def forward(self, images, targets=None):
        if self.training:
            slow = self.until is None or self.calls < self.until  # calls: ToyModel's count so far
            time.sleep(self.seconds if slow else self.then)
        return super().forward(images, targets)


def test_a_time_budget_cuts_the_run_and_ends_its_schedule(tmp_path, capsys):
    model = SlowToyModel(0.01)  # ~0.3 s for the 30 timed iterations, ~0.6 s of budget
    trainer = make_trainer(tmp_path, max_iters=1000, model=model, time_budget_s=0.6, config_yaml="solver:\n"
                           "  max_iters: 1000\n  steps: [700, 900]\n")
    trainer.scheduler = WarmupSchedule(trainer.optimizer, base_lr=0.05, max_iters=1000, schedule="step",
                                       steps=(700, 900), warmup_iters=2)
    summary = trainer.train()
    assert 31 <= summary["iteration"] < 200  # cut from 1000 to what fits
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["solver"]["max_iters"] == summary["iteration"]  # a resumed run keeps it
    assert config["solver"]["steps"] == [round(x * summary["iteration"] / 1000) for x in (700, 900)]
    assert trainer.scheduler.params["max_iters"] == summary["iteration"]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.01)  # both steps taken
    assert "iterations fit; the schedule now ends at" in capsys.readouterr().out


def test_a_run_cut_by_slow_first_steps_grows_back_when_the_pace_picks_up(tmp_path, capsys):
    # steps 11-30 at 0.05 s: at iteration 30 about 1.5 s of the 2 s are gone, so ~40 iterations fit;
    # steps 31-35 take a few ms, so at the evaluation after 35 the mean step is ~0.04 s and ~47 fit
    trainer = make_trainer(tmp_path, max_iters=1000, model=SlowToyModel(0.05, until=30), time_budget_s=2.0,
                           eval_period=35, evaluate=lambda model: {"score": 1.0}, log_period=1000,
                           config_yaml="solver:\n  max_iters: 1000\n  steps: [500]\n")
    trainer.scheduler = WarmupSchedule(trainer.optimizer, base_lr=0.001, max_iters=1000, schedule="step",
                                       steps=(500,), warmup_iters=2)
    summary = trainer.train()
    printed = capsys.readouterr().out
    first_cut = int(re.search(r"the schedule now ends at (\d+)", printed).group(1))
    assert 31 <= first_cut < summary["iteration"] < 1000
    assert f"is lengthened again (it ended at {first_cut}) at " in printed
    # the last move of the schedule is where the run ended
    assert re.findall(r"the schedule .*? at (\d+) \(config.yaml", printed)[-1] == str(summary["iteration"])
    assert trainer.scheduler.params["max_iters"] == summary["iteration"]
    # the LR step keeps its place in the run as configured (half way), not half of the cut run's
    assert trainer.scheduler.params["steps"] == (round(500 * summary["iteration"] / 1000),)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["solver"]["max_iters"] == summary["iteration"]


def test_a_run_without_evaluations_grows_back_too(tmp_path, capsys):
    # as above with eval_period 0 (R-CNN's fine-tuning) and later steps at 0.02 s: the budget fits
    # again after the steps of about a tenth of it, not only after evaluations (~40 steps fit at
    # step 30, ~55 at the later pace)
    trainer = make_trainer(tmp_path, max_iters=1000, model=SlowToyModel(0.05, until=30, then=0.02),
                           time_budget_s=2.0, eval_period=0, log_period=1000)
    summary = trainer.train()
    printed = capsys.readouterr().out
    first_cut = int(re.search(r"the schedule now ends at (\d+)", printed).group(1))
    assert 31 <= first_cut < summary["iteration"] < 1000
    assert f"is lengthened again (it ended at {first_cut})" in printed
    assert re.findall(r"the schedule .*? at (\d+) \(config.yaml", printed)[-1] == str(summary["iteration"])
    assert printed.count("note: solver.time_budget_min") <= 12  # a line per fit at most, not per step
    assert summary["seconds"] > 1.7  # most of the budget used (38 steps would end at ~1.66 s)


def test_the_budget_leaves_changes_of_one_percent_or_less_alone(tmp_path, capsys):
    trainer = make_trainer(tmp_path, max_iters=1000, time_budget_s=1000.0)
    trainer.iter = 100

    def refit(fits, current):  # 1 s per step, no evaluations: `fits` iterations fit in all
        trainer.max_iters = current
        trainer._fit_to_budget({"step_s": 1.0, "steps": 1, "eval_s": 0.0, "evals": 0, "ceiling": 1000},
                               elapsed=1000.0 - (fits - 100))
        return trainer.max_iters

    assert refit(995, 1000) == 1000 and refit(980, 1000) == 980      # cuts: 0.5% no, 2% yes
    assert refit(905, 900) == 900 and refit(950, 900) == 950        # lengthening: the same rule
    assert refit(5000, 900) == 1000                                 # never above the configured length
    assert capsys.readouterr().out.count("note: solver.time_budget_min") == 3


def test_a_time_budget_that_is_long_enough_changes_nothing(tmp_path):
    trainer = make_trainer(tmp_path, max_iters=40, time_budget_s=600)
    assert trainer.train()["iteration"] == 40


def test_a_time_budget_counts_the_evaluations_too(tmp_path, capsys):
    def slow_evaluation(model):
        time.sleep(0.1)
        return {"score": 1.0}

    # steps alone (~2 ms) would let ~500 of 1000 iterations fit in 1 s; with 0.1 s per
    # evaluation every 10 steps far fewer do
    trainer = make_trainer(tmp_path, max_iters=1000, model=SlowToyModel(0.002), time_budget_s=1.0,
                           eval_period=10, evaluate=slow_evaluation, log_period=1000)
    summary = trainer.train()
    assert 10 < summary["iteration"] < 300
    assert "per evaluation so far" in capsys.readouterr().out

"""Two processes on CPU (gloo) train the toy model through the Trainer's DDP path; both ranks
must end with the same weights, equal to one process training on both ranks' batches."""
import itertools
import os

import pytest
import torch

from engine_toys import ToyImages, ToyModel

WORLD = 2
ITERS = 3


def batch(rank, i):
    g = torch.Generator().manual_seed(1000 * rank + i)
    x = torch.randn(3, 4, generator=g)
    return x, torch.stack([x[:, 0] - x[:, 1], x[:, 2] * 2], dim=1)


def optimizer_and_schedule(model):
    from common.engine import WarmupSchedule

    opt = torch.optim.SGD([{"params": model.parameters(), "lr_mult": 1.0}], lr=0.1, momentum=0.9)
    return opt, WarmupSchedule(opt, base_lr=0.1, max_iters=ITERS, schedule="constant", warmup_iters=1)


def _worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from common.engine import Trainer, all_gather_object, distributed, init_distributed

    device = init_distributed(timeout_s=60)
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = ToyModel()
    opt, sched = optimizer_and_schedule(model)

    def make_data_iter(start):
        for i in itertools.count(start):
            x, y = batch(rank, i)
            yield ToyImages(x), [{"y": t} for t in y]

    trainer = Trainer(model, opt, sched, make_data_iter, output_dir=os.path.join(out_dir, "run"),
                      max_iters=ITERS, device=device, checkpoint_period=ITERS, log_period=1,
                      evaluate=lambda m: {"score": 10.0 + distributed.get_rank()},
                      best_metric="score", progress=False, tensorboard=False)
    summary = trainer.train()
    torch.save({"model": model.state_dict(), "best": summary["best_value"],
                "ranks": all_gather_object(rank)}, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.cleanup()


def test_two_process_ddp_on_cpu_keeps_ranks_identical(tmp_path, run_ranks):
    run_ranks(_worker, str(tmp_path), world=WORLD)

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    assert r0["ranks"] == r1["ranks"] == [0, 1]
    assert r0["best"] == r1["best"] == 10.0  # rank 0's evaluation is the one used

    # one process on both ranks' batches (mean loss over 6 samples = mean of the two ranks' grads)
    torch.manual_seed(0)
    model = ToyModel()
    opt, sched = optimizer_and_schedule(model)
    for i in range(ITERS):
        (x0, y0), (x1, y1) = batch(0, i), batch(1, i)
        x, y = torch.cat([x0, x1]), torch.cat([y0, y1])
        _, losses = model(ToyImages(x), [{"y": t} for t in y])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        sched.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0["model"][k], v, rtol=1e-5, atol=1e-6)

    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*.pth")) == [
        "model_0000003.pth", "model_best.pth", "model_final.pth"]
    state = torch.load(run / "model_0000003.pth", weights_only=True)
    assert len(state["rng"]) == WORLD  # each rank's RNG state, for an exact resume
    assert sum(1 for line in open(run / "metrics.csv")) == 1 + ITERS + 1  # header, 3 train, 1 eval


def test_sync_bn_on_cpu_is_refused_at_start_up():
    from common.engine.distributed import check_sync_bn

    with pytest.raises(ValueError, match=r"^backbone norm SyncBN needs CUDA \(torch's SyncBatchNorm has no CPU "
                       r"kernel\), but this run has 2 processes on cpu; use model.backbone.norm=BN \(or GN\)"):
        check_sync_bn("SyncBN", torch.device("cpu"), 2)
    check_sync_bn("SyncBN", torch.device("cpu"), 1)  # one process: plain BN, nothing to sync
    check_sync_bn("BN", torch.device("cpu"), 2)

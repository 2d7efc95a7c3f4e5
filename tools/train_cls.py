#!/usr/bin/env python
"""Pretrain a backbone of common.backbones as an image classifier; write RUN/classifier.pth.

    python tools/train_cls.py                                   # resnet18 on the built-in source task
    python tools/train_cls.py --data /data/imagenet --arch resnet50 --output runs/r50_cls \
        solver.max_iters=450000 solver.ims_per_batch=64 data.image_size=224
    python tools/train_cls.py --output runs/cls --resume        # continue an interrupted run
    torchrun --nproc_per_node 2 tools/train_cls.py ...          # DDP

--data is a folder in the ImageNet layout (train/<class>/*, val/<class>/*, read with torchvision's
ImageFolder); without it, the built-in generated source task (classification/source_data.py: ten
synthetic texture and figure classes; it is not ImageNet). Augmentation: random resized crop and
horizontal flip (albumentations). Evaluation: top-1 / top-5 accuracy on val/.

RUN gets what every training tool writes (config.yaml, metrics.csv, TensorBoard events, resumable
checkpoints, model_best.pth, model_final.pth, curves) plus metrics.json ({"top1", "top5", "loss"},
percent) and classifier.pth: the final network as a plain state dict in torchvision's
classification format (keys and shapes of ``torchvision.models.<arch>(num_classes=K)``), so

    python tools/train_det.py model.backbone.weights=RUN/classifier.pth ...

starts a detector (or train_seg.py a segmenter) from it exactly as from a downloaded torchvision
checkpoint (the K-class head is left out there). Errors are one line on stderr, exit status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="ImageNet-layout folder (train/<class>/*, val/<class>/*); "
                   "default: the built-in source task, generated on first use")
    p.add_argument("--arch", help="backbone architecture (default: arch of the config, resnet18)")
    p.add_argument("--config", help="YAML holding what differs from classification/config.py")
    p.add_argument("--output", default=str(ROOT / "runs" / "cls"), help="run directory (default: %(default)s)")
    p.add_argument("--max-iters", type=int, help="override solver.max_iters")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last_checkpoint")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. solver.base_lr=0.1")
    return p.parse_intermixed_args(argv)


def load_cfg(args):
    from common.config import load_config
    from common.engine.config import fit_schedule_to_max_iters
    from classification.config import ClsConfig

    overrides = list(args.overrides)
    for value, key in ((args.data, "data.root"), (args.arch, "arch"), (args.max_iters, "solver.max_iters")):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(ClsConfig, args.config, overrides)
    if args.max_iters is not None:
        fit_schedule_to_max_iters(cfg.solver)
    return cfg


def train(args) -> dict:
    from common.config import to_yaml
    from common.engine import (Trainer, barrier, build_optimizer, build_scheduler,
                               get_rank, get_world_size, init_distributed, is_main_process, plot_curves,
                               seed_everything)
    from common.engine.distributed import cleanup
    from common.tooling import parse_device
    from classification.build import build_datasets, build_model, check_arch, resolve_root
    from classification.data import build_test_loader, build_train_loader
    from classification.model import evaluate_classifier

    cfg = load_cfg(args)
    check_arch(cfg.arch)  # before any data is generated or read
    out = Path(args.output)
    if not args.resume and any((out / n).exists() for n in ("last_checkpoint", "model_final.pth")):
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --output")
    device = init_distributed()
    if args.device:
        device = parse_device(args.device)
    elif device.type == "cpu" and torch.cuda.is_available():
        device = torch.device("cuda")
    rank, world = get_rank(), get_world_size()
    if is_main_process() and cfg.data.root is None:
        print(f"data: the built-in source task in {cfg.data.builtin_root} (generated, not ImageNet)")
        resolve_root(cfg.data)  # rank 0 generates it; the others wait at the barrier
    barrier()
    root = resolve_root(cfg.data)
    train_set, val_set = build_datasets(cfg, root)

    seed_everything(cfg.solver.seed + rank, cfg.solver.deterministic)
    model = build_model(cfg.arch, train_set.num_classes)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)

    def make_data_iter(start: int):
        return build_train_loader(train_set, batch_size=cfg.solver.ims_per_batch, num_workers=cfg.data.num_workers,
                                  seed=cfg.solver.seed, start_iter=start, rank=rank, world_size=world)

    val_loader = build_test_loader(val_set, batch_size=cfg.eval_batch_size, num_workers=cfg.data.num_workers)

    def evaluate(m):
        return evaluate_classifier(m, val_loader, device) if is_main_process() else {}

    s = cfg.solver
    trainer = Trainer(model, optimizer, scheduler, make_data_iter, output_dir=out, max_iters=s.max_iters,
                      device=device, amp=s.amp, clip_grad_norm=s.clip_grad_norm, accumulate=s.accumulate,
                      checkpoint_period=s.checkpoint_period, eval_period=s.eval_period, log_period=s.log_period,
                      evaluate=evaluate, best_metric=s.best_metric, early_stop_patience=s.early_stop_patience,
                      keep_checkpoints=s.keep_checkpoints, config_yaml=to_yaml(cfg),
                      metadata={"arch": cfg.arch, "class_names": list(train_set.class_names)},
                      progress=not args.no_progress)
    if args.resume:
        start = trainer.resume()
        if is_main_process():
            print(f"resuming from iteration {start}" if start else f"nothing to resume in {out}; starting fresh")
    summary = trainer.train()
    if is_main_process():
        metrics = summary["metrics"]
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        torch.save(trainer.model.net.state_dict(), out / "classifier.pth")
        plot_curves(out / "metrics.csv", out)
        print(f"done: {summary['iteration']} iterations in {summary['seconds']:.0f} s; top-1 "
              f"{metrics['top1']:.1f}, top-5 {metrics['top5']:.1f} on {len(val_set)} val images; "
              f"backbone weights in {out / 'classifier.pth'}")
    cleanup()
    return summary


def main(argv=None) -> int:
    from common.tooling import run_tool

    return run_tool("train_cls", train, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

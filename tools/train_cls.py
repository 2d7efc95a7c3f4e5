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

RUN (default runs/cls) gets the run layout of common/tooling.py (config.yaml, metrics.csv,
TensorBoard events, resumable checkpoints, model_best.pth, model_final.pth, metrics.json with
{"top1", "top5", "loss"} in percent, plots/) plus classifier.pth: the final network as a plain state dict in torchvision's
classification format (keys and shapes of ``torchvision.models.<arch>(num_classes=K)``), so

    python tools/train_det.py model.backbone.weights=RUN/classifier.pth ...

starts a detector (or train_seg.py a segmenter) from it exactly as from a downloaded torchvision
checkpoint (the K-class head is left out there). A folder that is not empty is refused unless it is
a train_cls run and ``--resume`` (or ``--resume-from PATH``) is given. Errors are one line on
stderr, exit status 2.
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

DEFAULT_OUTPUT = str(ROOT / "runs" / "cls")


def parse_args(argv=None) -> argparse.Namespace:
    from common.tooling import add_arguments, tool_parser

    p = tool_parser(__doc__)
    p.add_argument("--data", help="ImageNet-layout folder (train/<class>/*, val/<class>/*); "
                   "default: the built-in source task, generated on first use")
    p.add_argument("--arch", help="backbone architecture (default: arch of the config, resnet18)")
    add_arguments(p, "config", "output", "max_iters", "resume", "resume_from", "device", "no_progress", "overrides",
                  defaults={"output": DEFAULT_OUTPUT}, shown={"config": "classification/config.py as written"})
    return p.parse_intermixed_args(argv)  # overrides may come before or after the options


def load_cfg(args: argparse.Namespace):
    """(ClsConfig from --config, --data, --arch, --max-iters and the overrides; notes to print)."""
    from classification.config import ClsConfig
    from common.tooling import load_run_config, overrides_of

    return load_run_config(ClsConfig, args.config, overrides_of(args, data="data.root", arch="arch"))


def train(args: argparse.Namespace) -> dict:
    import torch

    from classification.build import build_datasets, build_model, check_arch, resolve_root, with_data_defaults
    from classification.config import ClsConfig
    from classification.data import build_test_loader, build_train_loader
    from classification.model import evaluate_classifier
    from common.config import to_yaml
    from common.engine import (Trainer, barrier, build_optimizer, build_scheduler, get_rank, get_world_size,
                               is_main_process)
    from common.engine.distributed import cleanup
    from common.tooling import prepare_run_dir, print_log, seed_process, select_device, show_bar

    cfg, notes = load_cfg(args)
    cfg, crop_note = with_data_defaults(cfg)
    notes = notes + [crop_note] if crop_note else notes
    check_arch(cfg.arch)  # before any data is generated or read
    resume = args.resume or args.resume_from is not None
    run = prepare_run_dir(args.output, resume=resume, config_cls=ClsConfig, tool="train_cls")
    device = select_device(args.device)
    rank, world = get_rank(), get_world_size()
    if is_main_process():
        for n in notes:
            print(f"note: {n}")
        if cfg.data.root is None:
            print(f"data: the built-in source task in {cfg.data.builtin_root} (generated, not ImageNet)")
            resolve_root(cfg.data)  # rank 0 generates it; the others wait at the barrier
    barrier()
    root = resolve_root(cfg.data)
    train_set, val_set = build_datasets(cfg, root)

    seed_process(cfg.solver.seed, cfg.solver.deterministic)
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
    trainer = Trainer(model, optimizer, scheduler, make_data_iter, output_dir=run.root, max_iters=s.max_iters,
                      device=device, amp=s.amp, clip_grad_norm=s.clip_grad_norm, clip_grad_type=s.clip_grad_type,
                      accumulate=s.accumulate, checkpoint_period=s.checkpoint_period, eval_period=s.eval_period,
                      log_period=s.log_period, evaluate=evaluate, best_metric=s.best_metric,
                      early_stop_patience=s.early_stop_patience, keep_checkpoints=s.keep_checkpoints,
                      config_yaml=to_yaml(cfg), metadata={"arch": cfg.arch, "class_names": list(train_set.class_names)},
                      progress=show_bar(args), print_log=print_log(args), time_budget_s=s.time_budget_min * 60)
    if resume:
        start = trainer.resume(args.resume_from)
        if is_main_process():
            print(f"resuming from iteration {start}" if start else f"nothing to resume in {run.root}; starting fresh")
    summary = trainer.train()
    if is_main_process():
        metrics = summary["metrics"]
        run.write_metrics(metrics)
        torch.save(trainer.model.net.state_dict(), run.root / "classifier.pth")
        run.plot_curves()
        print(f"done: {summary['iteration']} iterations in {summary['seconds']:.0f} s; top-1 "
              f"{metrics['top1']:.1f}, top-5 {metrics['top5']:.1f} on {len(val_set)} val images; "
              f"backbone weights in {run.root / 'classifier.pth'}")
    cleanup()
    return summary


def main(argv=None) -> int:
    from common.tooling import run_tool

    return run_tool("train_cls", train, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

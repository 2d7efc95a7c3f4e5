#!/usr/bin/env python
"""Train a semantic segmentation model (FCN-32s/16s/8s, U-Net, ResNet U-Net).

    python tools/train_seg.py                                   # small U-Net on the shapes dataset
    python tools/train_seg.py --config configs/segmentation/fcn8s_R18.yaml --data datasets/shapes \
        --output runs/fcn8s solver.base_lr=0.01
    python tools/train_seg.py --output runs/fcn8s --resume      # continue an interrupted run
    torchrun --nproc_per_node 2 tools/train_seg.py ...          # several processes

Writes into RUN (the layout of common/tooling.py): config.yaml, metrics.csv, TensorBoard events,
periodic model_XXXXXXX.pth and last_checkpoint, model_best.pth (by solver.best_metric),
model_final.pth (written before the final evaluation), metrics.json (percent, the last
evaluation), plots/ (loss and metric curves, confusion_matrix.png) and vis/ (predictions drawn
on val images). A folder that is not empty is refused unless it is a train_seg run and
``--resume`` is given. Errors are one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py

DEFAULT_CONFIG = ROOT / "configs" / "segmentation" / "unet_shapes_cpu.yaml"
DEFAULT_OUTPUT = "runs/seg"


def parse_args(argv=None) -> argparse.Namespace:
    from common.tooling import add_arguments, tool_parser

    p = tool_parser(__doc__)
    add_arguments(p, "config", defaults={"config": str(DEFAULT_CONFIG)})
    p.add_argument("--data", help="dataset directory (default: the shapes dataset, generated if missing)")
    add_arguments(p, "output", "max_iters", "resume", "resume_from", "device", "no_progress", "overrides",
                  defaults={"output": DEFAULT_OUTPUT})
    return p.parse_intermixed_args(argv)  # overrides may come before or after the options


def load_cfg(args: argparse.Namespace):
    """(SegConfig from --config, --data, --max-iters and the overrides; notes to print)."""
    from common.tooling import load_run_config, overrides_of
    from segmentation.config import SegConfig

    return load_run_config(SegConfig, args.config, overrides_of(args, data="data.root"))


def run(args: argparse.Namespace) -> dict:
    from common.engine import is_main_process
    from common.tooling import (prepare_run_dir, print_log, seed_process, select_device, show_bar,
                                sync_batchnorm)
    from segmentation.build import (build_class_prior, build_class_weight, build_datasets, build_model,
                                    check_data, class_pixel_stats_of, needs_class_stats, resolve_root)
    from segmentation.config import SegConfig

    cfg, notes = load_cfg(args)
    resume = args.resume or args.resume_from is not None
    run_dir = prepare_run_dir(args.output, resume=resume, config_cls=SegConfig, tool="train_seg")
    device = select_device(args.device)
    if is_main_process():
        for n in notes:
            print(f"note: {n}")
    seed_process(cfg.solver.seed, cfg.solver.deterministic)
    root = resolve_root(cfg.data)
    train_ds, val_ds = build_datasets(cfg.data, root, check_data(cfg.data, root, run_dir.root))  # coco: both splits, first
    stats = class_pixel_stats_of(train_ds) if needs_class_stats(cfg.model) else None
    model = build_model(cfg.model, train_ds.num_classes, class_weight=build_class_weight(cfg.model, stats),
                        class_prior=build_class_prior(cfg.model, stats), ignore_index=train_ds.ignore_index)
    model = sync_batchnorm(model, cfg.model.backbone.norm)
    return fit(cfg, model, train_ds, val_ds, device, run_dir, resume=resume, resume_from=args.resume_from,
               progress=show_bar(args), print_log=print_log(args))


def fit(cfg, model, train_ds, val_ds, device, run_dir, *, resume: bool = False, resume_from: str | None = None,
        progress: bool = True, print_log: bool = False, tensorboard: bool = True, report: bool = True) -> dict:
    """Train ``model`` with the common engine as ``cfg.solver`` says into ``run_dir`` (a
    ``common.tooling.RunDir``); evaluate on ``val_ds``.

    Returns the engine's summary (iteration, seconds, metrics of the last evaluation, best ...).
    """
    from common.config import to_yaml
    from common.engine import (Trainer, build_optimizer, build_scheduler, get_rank, get_world_size,
                               is_main_process, schedule_in_epochs)
    from common.loaders import build_test_loader
    from segmentation.build import build_train_indices
    from segmentation.data import build_train_loader
    from segmentation.metrics import PredictionDrawer, SemSegEvaluator, evaluate_model

    indices = build_train_indices(cfg.data, train_ds, cfg.solver.seed)
    rank, world = get_rank(), get_world_size()
    solver, note = schedule_in_epochs(cfg.solver, len(indices), world)
    cfg = replace(cfg, solver=solver)
    if is_main_process() and report:
        print(f"note: {note}")
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)

    def make_data_iter(start: int):
        return build_train_loader(train_ds, batch_size=cfg.solver.ims_per_batch,
                                  size_divisibility=model.size_divisibility, pad_value=model.pixel_mean,
                                  indices=indices, seed=cfg.solver.seed, start_iter=start,
                                  num_workers=cfg.data.num_workers, rank=rank, world_size=world)

    evaluator = SemSegEvaluator(train_ds.num_classes, train_ds.class_names, train_ds.ignore_index)
    val_loader = build_test_loader(val_ds, size_divisibility=model.size_divisibility,
                                   pad_value=model.pixel_mean, num_workers=cfg.data.num_workers)

    def evaluate(m):
        draw = PredictionDrawer(run_dir.vis, val_ds.class_names, val_ds.ignore_index,
                                cfg.data.num_vis if is_main_process() else 0)
        metrics = evaluate_model(m, val_loader, evaluator, device, on_batch=draw)
        if is_main_process():  # the files of the last evaluation are the run's metrics
            run_dir.write_metrics({k: v for k, v in metrics.items() if k != "val"})
            evaluator.save_confusion(run_dir.plots / "confusion_matrix.png")
        return metrics

    trainer = Trainer(model, optimizer, scheduler, make_data_iter, output_dir=run_dir.root,
                      max_iters=cfg.solver.max_iters, device=device, amp=cfg.solver.amp,
                      clip_grad_norm=cfg.solver.clip_grad_norm, clip_grad_type=cfg.solver.clip_grad_type,
                      accumulate=cfg.solver.accumulate,
                      checkpoint_period=cfg.solver.checkpoint_period, eval_period=cfg.solver.eval_period,
                      log_period=cfg.solver.log_period, evaluate=evaluate, best_metric=cfg.solver.best_metric,
                      early_stop_patience=cfg.solver.early_stop_patience, config_yaml=to_yaml(cfg),
                      keep_checkpoints=cfg.solver.keep_checkpoints, progress=progress, print_log=print_log,
                      tensorboard=tensorboard, time_budget_s=cfg.solver.time_budget_min * 60)
    if resume:
        trainer.resume(resume_from)
    summary = trainer.train()
    if is_main_process() and report:
        run_dir.plot_curves()
        m = summary["metrics"]
        print(f"done: {summary['iteration']} iterations in {summary['seconds']:.0f} s; mIoU {m.get('mIoU', float('nan')):.1f}, "
              f"boundary IoU {m.get('boundary_IoU', float('nan')):.1f}, pixel acc {m.get('pixel_acc', float('nan')):.1f}; "
              f"metrics in {run_dir.metrics}")
    return summary


def main(argv=None) -> int:
    from common.tooling import run_tool

    return run_tool("train_seg", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

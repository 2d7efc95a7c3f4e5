#!/usr/bin/env python
"""Train a semantic segmentation model (FCN-32s/16s/8s, U-Net, ResNet U-Net).

    python tools/train_seg.py                                   # small U-Net on the shapes dataset
    python tools/train_seg.py --config configs/segmentation/fcn8s_R18.yaml --data datasets/shapes \
        --output runs/fcn8s solver.base_lr=0.01
    python tools/train_seg.py --output runs/fcn8s --resume      # continue an interrupted run
    torchrun --nproc_per_node 2 tools/train_seg.py ...          # several processes

Writes into RUN: config.yaml, metrics.csv, TensorBoard events, periodic model_XXXXXXX.pth and
last_checkpoint, model_best.pth (by solver.best_metric), model_final.pth, eval/metrics.json
(percent), eval/confusion_matrix.png, eval/vis_*.jpg (predictions drawn on val images) and
the loss / metric curves. Errors are one line on stderr and exit status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import common  # noqa: E402,F401  (first: lets idle OpenMP threads sleep, see common/__init__.py)

import argparse  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "segmentation" / "unet_shapes_cpu.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML in configs/segmentation/")
    p.add_argument("--data", help="dataset directory (default: the shapes dataset, generated if missing)")
    p.add_argument("--output", help="run directory (default: output_dir of the config)")
    p.add_argument("--max-iters", type=int, help="override solver.max_iters")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last_checkpoint")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: config device, auto = cuda if available)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. solver.base_lr=0.01")
    return p.parse_args(argv)


def load_cfg(args):
    from common.config import load_config
    from common.engine.config import fit_schedule_to_max_iters
    from segmentation.config import SegConfig

    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.root={args.data}")
    if args.output is not None:
        overrides.append(f"output_dir={args.output}")
    if args.max_iters is not None:
        overrides.append(f"solver.max_iters={args.max_iters}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    cfg = load_config(SegConfig, args.config, overrides)
    if args.max_iters is not None:
        fit_schedule_to_max_iters(cfg.solver)
    return cfg


def run(args) -> dict:
    from common.engine import init_distributed, seed_everything
    from common.engine.distributed import parse_device
    from segmentation.build import (build_class_prior, build_class_weight, build_datasets, build_model,
                                    class_pixel_stats_of, needs_class_stats, resolve_root)

    cfg = load_cfg(args)
    out = Path(cfg.output_dir)
    if not args.resume and (out / "last_checkpoint").is_file():
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it or "
                         f"--output to start a new one")
    device = parse_device(cfg.device, init_distributed())
    seed_everything(cfg.solver.seed, cfg.solver.deterministic)
    train_ds, val_ds = build_datasets(cfg.data, resolve_root(cfg.data))
    stats = class_pixel_stats_of(train_ds) if needs_class_stats(cfg.model) else None
    model = build_model(cfg.model, train_ds.num_classes, class_weight=build_class_weight(cfg.model, stats),
                        class_prior=build_class_prior(cfg.model, stats), ignore_index=train_ds.ignore_index)
    return fit(cfg, model, train_ds, val_ds, device, resume=args.resume)


def fit(cfg, model, train_ds, val_ds, device, *, resume: bool = False, progress: bool = True,
        tensorboard: bool = True) -> dict:
    """Train ``model`` with the common engine as ``cfg.solver`` says; evaluate on ``val_ds``.

    Returns the engine's summary (iteration, seconds, metrics of the last evaluation, best ...).
    """
    from common.config import to_yaml
    from common.engine import (Trainer, build_optimizer, build_scheduler, get_rank, get_world_size,
                               is_main_process, plot_curves)
    from segmentation.build import build_train_indices
    from segmentation.data import build_test_loader, build_train_loader
    from segmentation.metrics import PredictionDrawer, SemSegEvaluator, evaluate_model

    out = Path(cfg.output_dir)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    indices = build_train_indices(cfg.data, train_ds, cfg.solver.seed)
    rank, world = get_rank(), get_world_size()

    def make_data_iter(start: int):
        return build_train_loader(train_ds, batch_size=cfg.solver.ims_per_batch,
                                  size_divisibility=model.size_divisibility, pad_value=model.pixel_mean,
                                  indices=indices, seed=cfg.solver.seed, start_iter=start,
                                  num_workers=cfg.data.num_workers, rank=rank, world_size=world)

    evaluator = SemSegEvaluator(train_ds.num_classes, train_ds.class_names, train_ds.ignore_index)
    val_loader = build_test_loader(val_ds, size_divisibility=model.size_divisibility,
                                   pad_value=model.pixel_mean, num_workers=cfg.data.num_workers)

    def evaluate(m):
        draw = PredictionDrawer(out / "eval", val_ds.class_names, val_ds.ignore_index,
                                cfg.data.num_vis if is_main_process() else 0)
        metrics = evaluate_model(m, val_loader, evaluator, device, on_batch=draw)
        if is_main_process():
            evaluator.save(out / "eval", {k: v for k, v in metrics.items() if k != "val"})
        return metrics

    trainer = Trainer(model, optimizer, scheduler, make_data_iter, output_dir=out,
                      max_iters=cfg.solver.max_iters, device=device, amp=cfg.solver.amp,
                      clip_grad_norm=cfg.solver.clip_grad_norm, accumulate=cfg.solver.accumulate,
                      checkpoint_period=cfg.solver.checkpoint_period, eval_period=cfg.solver.eval_period,
                      log_period=cfg.solver.log_period, evaluate=evaluate, best_metric=cfg.solver.best_metric,
                      early_stop_patience=cfg.solver.early_stop_patience, config_yaml=to_yaml(cfg),
                      keep_checkpoints=cfg.solver.keep_checkpoints, progress=progress, tensorboard=tensorboard)
    if resume:
        trainer.resume()
    summary = trainer.train()
    if is_main_process() and progress:
        plot_curves(out / "metrics.csv", out)
        m = summary["metrics"]
        print(f"done: {summary['iteration']} iterations in {summary['seconds']:.0f} s; mIoU {m.get('mIoU', float('nan')):.1f}, "
              f"boundary IoU {m.get('boundary_IoU', float('nan')):.1f}, pixel acc {m.get('pixel_acc', float('nan')):.1f}; "
              f"metrics in {out / 'eval' / 'metrics.json'}")
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    from common.engine import CheckpointError, TrainingError

    try:
        run(args)
    except (ValueError, FileNotFoundError, CheckpointError, TrainingError) as e:
        print(f"train_seg.py: error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

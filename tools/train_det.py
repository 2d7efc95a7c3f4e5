#!/usr/bin/env python
"""Train a detector (Faster / Mask / Keypoint R-CNN) on a COCO-format dataset.

    python tools/train_det.py                                  # default CPU recipe, built-in data
    python tools/train_det.py --config configs/detection/mask_rcnn_R50_FPN.yaml \
        --data path/to/coco_like --output runs/r50 solver.base_lr=0.02
    torchrun --nproc_per_node 2 tools/train_det.py ...         # DDP (gloo on CPU, nccl on CUDA)

The run directory gets config.yaml (the resolved config), metrics.csv, TensorBoard events,
periodic checkpoints (atomic), model_best.pth, model_final.pth, metrics.json, results.json
(COCO results of the final evaluation), loss/metric curves as PNG and vis/ (predictions drawn
on a few val images). ``--resume`` continues exactly where the last checkpoint stopped.
Every checkpoint carries ``metadata["dataset"]`` (``DatasetMeta.to_dict()``: class names,
category ids, keypoints), which tools/eval_coco.py and tools/predict.py read.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import common  # noqa: E402,F401  (first: lets idle OpenMP threads sleep, see common/__init__.py)

import torch  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "detection" / "shapes_R18_FPN.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("--data", default=None, help="dataset folder in the synthetic layout "
                   "(train.json, val.json, train/, val/); default: data.root, the built-in dataset")
    p.add_argument("--train-json", default=None, help="COCO annotations for training (with --train-images)")
    p.add_argument("--train-images", default=None, help="image folder for --train-json")
    p.add_argument("--val-json", default=None, help="COCO annotations for evaluation (with --val-images)")
    p.add_argument("--val-images", default=None, help="image folder for --val-json")
    p.add_argument("--output", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--max-iters", type=int, default=None, help="override solver.max_iters")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. solver.base_lr=0.01")
    return p.parse_intermixed_args(argv)  # overrides may come before or after the options


def main(argv=None) -> int:
    args = parse_args(argv)
    from common.config import ConfigError
    from common.engine.checkpoint import CheckpointError
    from common.engine.trainer import TrainingError
    from detection.data import DatasetError

    try:
        return train(args)
    except (ConfigError, DatasetError, CheckpointError, TrainingError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    from common.config import load_config
    from common.engine import distributed as dist
    from common.engine.build import scale_to_batch
    from common.engine.checkpoint import seed_everything
    from common.engine.distributed import check_sync_bn
    from detection.build import adapt_to_dataset, build_datasets, build_model, resolve_data_paths
    from detection.config import DetConfig
    from detection.data import DatasetError

    overrides = list(args.overrides)
    if args.max_iters is not None:
        overrides.append(f"solver.max_iters={args.max_iters}")
    for flag, key in (("train_json", "train_json"), ("train_images", "train_images"),
                      ("val_json", "val_json"), ("val_images", "val_images")):
        if getattr(args, flag):
            overrides.append(f"data.{key}={getattr(args, flag)}")
    cfg = load_config(DetConfig, args.config, overrides)
    if args.data:  # config.yaml (and every checkpoint) records the data the run really used
        cfg = replace(cfg, data=replace(cfg.data, root=str(Path(args.data).resolve())))

    device = dist.init_distributed()
    if args.device:
        device = dist.parse_device(args.device)
    elif device.type == "cpu" and torch.cuda.is_available():
        device = torch.device("cuda")
    rank, world = dist.get_rank(), dist.get_world_size()
    main_proc = dist.is_main_process()
    solver, scaling = scale_to_batch(cfg.solver, world)  # recipes written for another total batch
    cfg = replace(cfg, solver=solver)
    if scaling and main_proc:
        print(f"note: {scaling}")
    check_sync_bn(cfg.model.backbone.norm, device, world)
    output = Path(args.output or ROOT / "runs" / Path(args.config).stem)

    # before anything is written: the Trainer would overwrite the old run's config.yaml (every rank
    # checks, so none is left waiting for the others)
    if not args.resume and any((output / name).exists() for name in ("last_checkpoint", "model_final.pth")):
        raise ValueError(f"{output} already holds a run; pass --resume to continue it or choose another --output")

    paths = problem = None
    if main_proc:  # rank 0 may generate the built-in dataset; a bad path stops every rank alike
        try:
            paths = resolve_data_paths(cfg.data, args.data)
        except DatasetError as e:
            problem = str(e)
    paths, problem = dist.broadcast_object((paths, problem))
    if problem:
        raise DatasetError(problem)
    train_set, val_set = build_datasets(cfg, paths)
    model_cfg, notes = adapt_to_dataset(cfg.model, train_set)
    cfg = replace(cfg, model=model_cfg)
    if main_proc:
        for n in notes:
            print(f"note: {n}")
    meta = train_set.meta

    seed_everything(cfg.solver.seed + rank, cfg.solver.deterministic)
    model = build_model(cfg.model, meta.num_classes, meta.num_keypoints, meta.flip_indices,
                        keypoint_classes=meta.keypoint_classes)
    if world > 1 and cfg.model.backbone.norm == "SyncBN":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fit(cfg, model, train_set, val_set, device, output, resume=args.resume, progress=not args.no_progress)
    dist.cleanup()
    return 0


def fit(cfg, model: torch.nn.Module, train_set, val_set, device: torch.device, output: Path, *,
        resume: bool = False, progress: bool = True, tensorboard: bool = True, pad: dict | None = None) -> dict:
    """Train ``model`` (ours, or anything with its ``forward(images, targets)`` contract; ``pad``:
    the batches' size_divisibility and pad_value, default its backbone's) with ``cfg.solver``, then evaluate
    it on the whole val set and write the run folder. Call on every rank. Returns the Trainer's
    summary (``seconds``: training and its evaluations) with ``metrics`` replaced by the final,
    complete evaluation's ({} off rank 0).
    """
    from common.config import to_yaml
    from common.engine import distributed as dist
    from common.engine.build import build_optimizer, build_scheduler
    from common.engine.curves import plot_curves
    from common.engine.trainer import Trainer
    from detection.build import iou_types_for
    from detection.data import build_test_loader, build_train_loader
    from detection.evaluation import metrics_to_json
    from detection.inference import evaluate_detector, validation_loss
    from detection.visualize import draw_predictions

    rank, world = dist.get_rank(), dist.get_world_size()
    main_proc = dist.is_main_process()
    meta = train_set.meta
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    pad = pad or dict(size_divisibility=model.backbone.size_divisibility, pad_value=model.backbone.pixel_mean)
    loader_args = dict(pad, pin_memory=device.type == "cuda")  # uint8 batches, page-locked for async copies

    def make_data_iter(start: int):
        return build_train_loader(train_set, batch_size=cfg.solver.ims_per_batch,
                                  num_workers=cfg.data.num_workers, seed=cfg.solver.seed, start_iter=start,
                                  aspect_ratio_grouping=cfg.data.aspect_ratio_grouping, rank=rank,
                                  world_size=world, **loader_args)

    def val_loader(workers: int | None = None, shard: bool = False):  # shard: this rank's images only
        return build_test_loader(val_set, batch_size=cfg.test.ims_per_batch,
                                 num_workers=cfg.data.num_workers if workers is None else workers,
                                 rank=rank if shard else 0, world_size=world if shard else 1, **loader_args)

    iou_types = iou_types_for(cfg.model)

    def evaluate(m):  # every rank predicts its shard; rank 0 scores, the trainer broadcasts its answer
        metrics, _ = evaluate_detector(m, val_loader(shard=True), val_set.coco, meta.category_ids, iou_types,
                                       device, limit=cfg.test.eval_images, backend=cfg.test.coco_backend)
        metrics.pop("per_category", None)
        return metrics

    def val_loss(m):
        return validation_loss(m, val_loader(0), device, limit=cfg.test.val_loss_batches)

    trainer = Trainer(model, optimizer, scheduler, make_data_iter, output_dir=output,
                      max_iters=cfg.solver.max_iters, device=device, amp=cfg.solver.amp,
                      clip_grad_norm=cfg.solver.clip_grad_norm, accumulate=cfg.solver.accumulate,
                      checkpoint_period=cfg.solver.checkpoint_period, eval_period=cfg.solver.eval_period,
                      log_period=cfg.solver.log_period, evaluate=evaluate,
                      validation_loss=val_loss if cfg.test.val_loss_batches else None,
                      best_metric=cfg.solver.best_metric, early_stop_patience=cfg.solver.early_stop_patience,
                      config_yaml=to_yaml(cfg), keep_checkpoints=cfg.solver.keep_checkpoints,
                      # class names and keypoints, so a checkpoint is usable alone (JSON round trip:
                      # plain lists, strings and ints, loadable with weights_only=True)
                      metadata={"dataset": json.loads(json.dumps(meta.to_dict()))},
                      progress=progress, tensorboard=tensorboard)
    if resume:
        start = trainer.resume()
        if main_proc:
            print(f"resuming from iteration {start}" if start else f"nothing to resume in {output}; starting fresh")
    summary = trainer.train()

    # the final, complete evaluation with the per-category table, sharded like the periodic ones
    metrics, results = evaluate_detector(trainer.model, val_loader(shard=True), val_set.coco, meta.category_ids,
                                         iou_types, device, verbose=main_proc, backend=cfg.test.coco_backend)
    if main_proc:
        (output / "metrics.json").write_text(json.dumps(metrics_to_json(metrics), indent=2))
        (output / "results.json").write_text(json.dumps(results))
        plot_curves(output / "metrics.csv", output)
        draw_predictions(trainer.model, val_set, device, output / "vis", count=cfg.test.num_vis,
                         score_thresh=cfg.test.vis_score_thresh)
        line = "  ".join(f"{t} AP {metrics[t]['AP']:.1f}" for t in iou_types if t in metrics)
        print(f"done: {line}; everything is in {output}")
    summary["metrics"] = metrics
    return summary


if __name__ == "__main__":
    sys.exit(main())

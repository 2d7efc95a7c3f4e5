#!/usr/bin/env python
"""Train a detector (R-CNN, Fast / Faster / Mask / Keypoint R-CNN) on a COCO-format dataset.

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
import time
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
    from common.config import load_config, to_yaml
    from common.engine import distributed as dist
    from common.engine.build import build_optimizer, build_scheduler
    from common.engine.checkpoint import seed_everything
    from common.engine.trainer import Trainer
    from detection.build import (adapt_to_dataset, build_datasets, build_model, iou_types_for,
                                 resolve_data_paths)
    from detection.config import DetConfig
    from detection.data import DatasetError, build_test_loader, build_train_loader
    from detection.inference import evaluate_detector, validation_loss

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
    output = Path(args.output or ROOT / "runs" / Path(args.config).stem)

    # before anything is written: the Trainer would overwrite the old run's config.yaml (every rank
    # checks, so none is left waiting for the others)
    if not args.resume and any((output / name).exists() for name in ("last_checkpoint", "model_final.pth",
                                                                     "finetune")):
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
    if cfg.model.meta_architecture == "rcnn":
        if world > 1:
            raise ValueError("R-CNN trains in one process (its stages are not distributed); run it without torchrun")
        return train_rcnn(args, cfg, paths, output, device)
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
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    backbone = model.backbone
    loader_args = dict(size_divisibility=backbone.size_divisibility, pad_value=backbone.pixel_mean)

    def make_data_iter(start: int):
        return build_train_loader(train_set, batch_size=cfg.solver.ims_per_batch,
                                  num_workers=cfg.data.num_workers, seed=cfg.solver.seed, start_iter=start,
                                  aspect_ratio_grouping=cfg.data.aspect_ratio_grouping, rank=rank,
                                  world_size=world, **loader_args)

    def val_loader(workers: int | None = None):
        return build_test_loader(val_set, batch_size=cfg.test.ims_per_batch,
                                 num_workers=cfg.data.num_workers if workers is None else workers, **loader_args)

    iou_types = iou_types_for(cfg.model)

    def evaluate(m):
        if not main_proc:  # rank 0 evaluates; the trainer broadcasts its answer
            return {}
        metrics, _ = evaluate_detector(m, val_loader(), val_set.coco, meta.category_ids, iou_types,
                                       device, limit=cfg.test.eval_images)
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
                      progress=not args.no_progress)
    if args.resume:
        start = trainer.resume()
        if main_proc:
            print(f"resuming from iteration {start}" if start else f"nothing to resume in {output}; starting fresh")
    trainer.train()

    if main_proc:
        final_evaluation(trainer.model, cfg, val_set, val_loader(), device, output)
    dist.cleanup()
    return 0


def final_evaluation(model, cfg, val_set, loader, device, output: Path) -> None:
    """The final, complete evaluation with the per-category table: metrics.json, results.json,
    curves and vis/ in ``output``."""
    from common.engine.curves import plot_curves
    from detection.build import iou_types_for
    from detection.evaluation import metrics_to_json
    from detection.inference import evaluate_detector
    from detection.visualize import draw_predictions

    iou_types = iou_types_for(cfg.model)
    metrics, results = evaluate_detector(model, loader, val_set.coco, val_set.meta.category_ids, iou_types,
                                         device, verbose=True)
    (output / "metrics.json").write_text(json.dumps(metrics_to_json(metrics), indent=2))
    (output / "results.json").write_text(json.dumps(results))
    if (output / "metrics.csv").is_file():
        plot_curves(output / "metrics.csv", output)
    if cfg.model.meta_architecture != "rcnn":  # predict_image has no proposals to give R-CNN
        draw_predictions(model, val_set, device, output / "vis", count=cfg.test.num_vis,
                         score_thresh=cfg.test.vis_score_thresh)
    summary = "  ".join(f"{t} AP {metrics[t]['AP']:.1f}" for t in iou_types if t in metrics)
    print(f"done: {summary}; everything is in {output}")


def train_rcnn(args: argparse.Namespace, cfg, paths, output: Path, device) -> int:
    """R-CNN's four stages, each skipped when its artefact is there (see detection/rcnn_stages.py)."""
    from common.config import ConfigError, to_yaml
    from common.engine.build import build_optimizer, build_scheduler
    from common.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint, seed_everything
    from common.engine.trainer import Trainer
    from detection.build import build_datasets, build_model
    from detection.data import CocoDetection, build_test_loader, build_train_loader, build_transforms
    from detection.inference import evaluate_detector
    from detection.rcnn_data import WithProposals, read_proposals
    from detection.rcnn_stages import cache_features, fit_regressors, fit_svms

    d, r = cfg.data, cfg.model.rcnn
    for key in ("train_proposals", "val_proposals"):
        if not getattr(d, key):
            raise ConfigError(f"R-CNN needs data.{key}: a proposal file from tools/compute_proposals.py")
    if d.hflip_prob > 0:
        raise ConfigError(f"data.hflip_prob = {d.hflip_prob}: R-CNN's proposals from a file follow the resize "
                          "but not a flip; set data.hflip_prob=0")
    train_set, val_set = build_datasets(cfg, paths)
    train_props = read_proposals(d.train_proposals)
    train_set = WithProposals(train_set, train_props, d.train_proposals)
    val_set = WithProposals(val_set, read_proposals(d.val_proposals), d.val_proposals)
    meta = train_set.meta
    seed_everything(cfg.solver.seed, cfg.solver.deterministic)
    model = build_model(cfg.model, meta.num_classes).to(device)
    loader_args = dict(size_divisibility=model.backbone.size_divisibility, pad_value=model.backbone.pixel_mean)
    metadata = {"dataset": json.loads(json.dumps(meta.to_dict()))}

    def val_loader():
        return build_test_loader(val_set, batch_size=cfg.test.ims_per_batch, num_workers=d.num_workers,
                                 **loader_args)

    # stage 1: fine-tune the backbone as a (K + 1)-way classifier of warped proposals (the engine)
    seconds, clock = {}, time.perf_counter()  # per stage that ran now -> RUN/stages.json
    finetune = output / "finetune" / "model_final.pth"
    if not finetune.is_file():
        def make_data_iter(start: int):
            return build_train_loader(train_set, batch_size=cfg.solver.ims_per_batch, num_workers=d.num_workers,
                                      seed=cfg.solver.seed, start_iter=start,
                                      aspect_ratio_grouping=d.aspect_ratio_grouping, **loader_args)

        def evaluate(m):
            metrics, _ = evaluate_detector(m, val_loader(), val_set.coco, meta.category_ids, ("bbox",), device,
                                           limit=cfg.test.eval_images)
            metrics.pop("per_category", None)
            return metrics

        s = cfg.solver
        optimizer = build_optimizer(model, s)
        trainer = Trainer(model, optimizer, build_scheduler(optimizer, s), make_data_iter,
                          output_dir=finetune.parent, max_iters=s.max_iters, device=device,
                          clip_grad_norm=s.clip_grad_norm, accumulate=s.accumulate,
                          checkpoint_period=s.checkpoint_period, eval_period=s.eval_period,
                          log_period=s.log_period, best_metric=s.best_metric,
                          # the softmax detector on test.eval_images, only when asked: every
                          # evaluation warps every proposal of every image
                          evaluate=evaluate if s.eval_period else None,
                          early_stop_patience=s.early_stop_patience, config_yaml=to_yaml(cfg),
                          keep_checkpoints=s.keep_checkpoints, metadata=metadata,
                          progress=not args.no_progress)
        if (finetune.parent / "last_checkpoint").is_file():
            print(f"stage 1 (fine-tuning): resuming from iteration {trainer.resume()}")
        trainer.train()
        seconds["finetune"], clock = time.perf_counter() - clock, time.perf_counter()
    else:
        print(f"stage 1 (fine-tuning): done, {finetune}")
    load_model_state(model, load_checkpoint(finetune)["model"], str(finetune))

    # stage 2: features of gt boxes and proposals of the training images, without augmentation
    plain = CocoDetection(paths.train_json, paths.train_images, filter_empty=False, use_masks=False,
                          use_keypoints=False)
    plain.transforms = build_transforms(meta, train=False, min_size=d.test_min_size, max_size=d.max_size)
    settings = {"finetune": str(finetune.resolve()), "train_proposals": str(Path(d.train_proposals).resolve()),
                "warp_size": r.warp_size, "context_pad": r.context_pad,
                "proposals_per_image": r.proposals_per_image, "feature_images": r.feature_images,
                "test_min_size": d.test_min_size, "max_size": d.max_size, "feat_norm": r.feat_norm}
    print("stage 2 (features)")
    cache = cache_features(model, WithProposals(plain, train_props, d.train_proposals), output / "features",
                           settings, device, feat_norm=r.feat_norm, limit=r.feature_images,
                           progress=not args.no_progress)
    model.feature_scale.fill_(cache.scale)
    seconds["features"], clock = time.perf_counter() - clock, time.perf_counter()

    # stage 3: per-class SVMs with hard-negative mining; stage 4: per-class box regressors
    if r.classifier == "svm":
        print("stage 3 (SVMs)")
        svm = fit_svms(cache, meta.num_classes, output / "svms.pt",
                       {**settings, **{k: getattr(r, k) for k in ("svm_neg_iou", "svm_C", "svm_pos_weight",
                                                                 "svm_bias_mult", "svm_retrain_limit")}},
                       neg_iou=r.svm_neg_iou, C=r.svm_C, pos_weight=r.svm_pos_weight, bias_mult=r.svm_bias_mult,
                       retrain_limit=r.svm_retrain_limit)
        model.svm_weight.copy_(svm["weight"])
        model.svm_bias.copy_(svm["bias"])
        model.svm_fitted.fill_(True)
        seconds["svms"], clock = time.perf_counter() - clock, time.perf_counter()
    print("stage 4 (box regressors)")
    reg = fit_regressors(cache, meta.num_classes, output / "regressors.pt",
                         {**settings, "reg_iou": r.reg_iou, "reg_lambda": r.reg_lambda},
                         min_iou=r.reg_iou, lam=r.reg_lambda)
    model.reg_weight.copy_(reg["weight"])
    model.reg_bias.copy_(reg["bias"])
    model.reg_fitted.fill_(True)
    seconds["regressors"] = time.perf_counter() - clock
    print("stage seconds (this invocation; a skipped stage costs its loading): "
          + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    (output / "stages.json").write_text(json.dumps(seconds, indent=2))

    save_checkpoint(output / "model_final.pth", {"model": model.state_dict(), "config_yaml": to_yaml(cfg),
                                                 "metadata": metadata})
    final_evaluation(model, cfg, val_set, val_loader(), device, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Train a detector (R-CNN, Fast / Faster / Mask / Keypoint R-CNN) on a COCO-format dataset.

    python tools/train_det.py                                  # default CPU recipe, built-in data
    python tools/train_det.py --config configs/detection/mask_rcnn_R50_FPN.yaml \
        --data path/to/coco_like --output runs/r50 solver.base_lr=0.02
    torchrun --nproc_per_node 2 tools/train_det.py ...         # DDP (gloo on CPU, nccl on CUDA)

The run folder (the layout of common/tooling.py) gets config.yaml (the resolved config),
metrics.csv, TensorBoard events, periodic checkpoints (atomic), model_best.pth, model_final.pth
(written before the final evaluation), metrics.json, results.json (COCO results of the final
evaluation), plots/ (loss and metric curves) and vis/ (predictions drawn on a few val images).
``--resume`` continues exactly where the last checkpoint stopped; ``--resume-from PATH`` from an
older checkpoint. A folder that is not empty is refused unless it is a train_det run and
``--resume`` is given.
Every checkpoint carries ``metadata["dataset"]`` (``DatasetMeta.to_dict()``: class names,
category ids, keypoints), which tools/eval_coco.py and tools/predict.py read.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from common.tooling import start_tool  # noqa: E402

start_tool()  # before torch: the OpenMP wait policy; see common/tooling.py

DEFAULT_CONFIG = ROOT / "configs" / "detection" / "shapes_R18_FPN.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    from common.tooling import add_arguments, tool_parser

    p = tool_parser(__doc__)
    add_arguments(p, "config", defaults={"config": str(DEFAULT_CONFIG)})
    p.add_argument("--data", default=None, help="dataset folder in the synthetic layout "
                   "(train.json, val.json, train/, val/); default: data.root, the built-in dataset")
    p.add_argument("--train-json", default=None, help="COCO annotations for training (with --train-images)")
    p.add_argument("--train-images", default=None, help="image folder for --train-json")
    p.add_argument("--val-json", default=None, help="COCO annotations for evaluation (with --val-images)")
    p.add_argument("--val-images", default=None, help="image folder for --val-json")
    add_arguments(p, "output", "max_iters", "resume", "resume_from", "device", "no_progress", "overrides",
                  shown={"output": "runs/<config name>"})
    return p.parse_intermixed_args(argv)  # overrides may come before or after the options


def main(argv=None) -> int:
    from common.tooling import run_tool

    return run_tool("train_det", train, parse_args(argv))



def train(args: argparse.Namespace) -> int:
    from common.backbones.norm import pretrained_bn_warning
    from common.engine import distributed as dist
    from common.engine.build import scale_to_batch, schedule_in_epochs
    from common.engine.distributed import check_sync_bn
    from common.engine.precision import emulation_note
    from common.tooling import (load_run_config, overrides_of, prepare_run_dir, seed_process, select_device,
                                sync_batchnorm)
    from detection.build import (adapt_bn_to_data, adapt_to_dataset, build_datasets, build_model, check_data,
                                 repeat_factor_indices, resolve_data_paths)
    from detection.config import DetConfig
    from detection.data import DatasetError

    overrides = overrides_of(args, train_json="data.train_json", train_images="data.train_images",
                             val_json="data.val_json", val_images="data.val_images")
    cfg, notes = load_run_config(DetConfig, args.config, overrides)
    if args.data:  # config.yaml (and every checkpoint) records the data the run really used
        cfg = replace(cfg, data=replace(cfg.data, root=str(Path(args.data).resolve())))
    resume = args.resume or args.resume_from is not None
    # before any work: every rank checks, so none is left waiting for the others
    run = prepare_run_dir(args.output or ROOT / "runs" / Path(args.config).stem, resume=resume,
                          config_cls=DetConfig, tool="train_det")
    device = select_device(args.device)
    world = dist.get_world_size()
    main_proc = dist.is_main_process()
    solver, scaling = scale_to_batch(cfg.solver, world)  # recipes written for another total batch
    cfg = replace(cfg, solver=solver)
    notes += [scaling] if scaling else []
    check_sync_bn(cfg.model.backbone.norm, device, world)

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
        return train_rcnn(args, cfg, paths, run.root, device)
    backbone = cfg.model.backbone
    note = pretrained_bn_warning(backbone.norm, backbone.weights, backbone.freeze_at, cfg.bn_samples_per_step())
    notes += [note] if note else []
    train_set, val_set = build_datasets(cfg, paths, check_data(cfg, paths, run.root))  # both splits, before training
    cfg, data_notes = adapt_to_dataset(cfg, train_set, val_set)
    train_indices, note = repeat_factor_indices(cfg.data, train_set, cfg.solver.seed)
    data_notes += [note] if note else []
    solver, note = schedule_in_epochs(cfg.solver, len(train_set if train_indices is None else train_indices), world)
    cfg = replace(cfg, solver=solver)
    data_notes.append(note)
    data_notes += [n for n in (emulation_note(k, v, device) for k, v in (("solver.amp", cfg.solver.amp),
                                                                          ("test.amp", cfg.test.amp))) if n]
    if main_proc:
        for n in notes + data_notes:
            print(n if n.startswith("warning:") else f"note: {n}")
    meta = train_set.meta

    seed_process(cfg.solver.seed, cfg.solver.deterministic)
    model = build_model(cfg.model, meta.num_classes, meta.num_keypoints, meta.flip_indices,
                        keypoint_classes=meta.keypoint_classes, class_counts=train_set.class_counts())
    if cfg.model.backbone.adapt_bn_images and not resume:  # a resumed run has them in its checkpoint
        note = adapt_bn_to_data(model.to(device), train_set, cfg.model.backbone.adapt_bn_images, cfg.solver.seed)
        if main_proc:
            print(f"note: {note}")
    model = sync_batchnorm(model, cfg.model.backbone.norm)
    fit(cfg, model, train_set, val_set, device, run, resume=resume, resume_from=args.resume_from, args=args,
        train_indices=train_indices)
    dist.cleanup()
    return 0


def fit(cfg, model, train_set, val_set, device, run, *, resume: bool = False, resume_from: str | None = None,
        args: argparse.Namespace | None = None, train_indices: list[int] | None = None,
        tensorboard: bool = True, pad: dict | None = None) -> dict:
    """Train ``model`` (ours, or anything with its ``forward(images, targets)`` contract; ``pad``:
    the batches' size_divisibility and pad_value, default its backbone's) with ``cfg.solver``, then
    evaluate it on the whole val set and write the run folder ``run`` (``common.tooling.RunDir``).
    ``args``: the command line, for progress and logging (None: logs only). Call on every rank.
    Returns the Trainer's summary (``seconds``: training and its evaluations) with ``metrics``
    replaced by the final, complete evaluation's ({} off rank 0).
    """
    import torch

    from common.config import to_yaml
    from common.engine import distributed as dist
    from common.engine.build import build_optimizer, build_scheduler
    from common.engine.trainer import Trainer
    from common.loaders import build_test_loader
    from common.tooling import print_log, show_bar
    from detection.build import iou_types_for
    from detection.data import build_train_loader
    from detection.inference import evaluate_detector, validation_loss

    rank, world = dist.get_rank(), dist.get_world_size()
    main_proc = dist.is_main_process()
    meta = train_set.meta
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    pad = pad or dict(size_divisibility=model.backbone.size_divisibility, pad_value=model.backbone.pixel_mean)
    loader_args = dict(pad, pin_memory=torch.device(device).type == "cuda")  # uint8 batches, page-locked on CUDA

    def make_data_iter(start: int):
        return build_train_loader(train_set, batch_size=cfg.solver.ims_per_batch,
                                  num_workers=cfg.data.num_workers, seed=cfg.solver.seed, start_iter=start,
                                  aspect_ratio_grouping=cfg.data.aspect_ratio_grouping, rank=rank,
                                  world_size=world, indices=train_indices, **loader_args)

    def val_loader(workers: int | None = None, shard: bool = False):  # shard: this rank's images only
        return build_test_loader(val_set, batch_size=cfg.test.ims_per_batch,
                                 num_workers=cfg.data.num_workers if workers is None else workers,
                                 rank=rank if shard else 0, world_size=world if shard else 1, **loader_args)

    iou_types = iou_types_for(cfg.model)

    def evaluate(m):  # every rank predicts its shard; rank 0 scores, the trainer broadcasts its answer
        metrics, _ = evaluate_detector(m, val_loader(shard=True), val_set.coco, meta.category_ids, iou_types,
                                       device, limit=cfg.test.eval_images, amp=cfg.test.amp,
                                       backend=cfg.test.coco_backend)
        metrics.pop("per_category", None)
        return metrics

    def val_loss(m):
        return validation_loss(m, val_loader(0), device, limit=cfg.test.val_loss_batches)

    trainer = Trainer(model, optimizer, scheduler, make_data_iter, output_dir=run.root,
                      max_iters=cfg.solver.max_iters, device=device, amp=cfg.solver.amp,
                      clip_grad_norm=cfg.solver.clip_grad_norm, clip_grad_type=cfg.solver.clip_grad_type,
                      accumulate=cfg.solver.accumulate,
                      checkpoint_period=cfg.solver.checkpoint_period, eval_period=cfg.solver.eval_period,
                      log_period=cfg.solver.log_period, evaluate=evaluate,
                      validation_loss=val_loss if cfg.test.val_loss_batches else None,
                      best_metric=cfg.solver.best_metric, early_stop_patience=cfg.solver.early_stop_patience,
                      config_yaml=to_yaml(cfg), keep_checkpoints=cfg.solver.keep_checkpoints,
                      # class names and keypoints, so a checkpoint is usable alone (JSON round trip:
                      # plain lists, strings and ints, loadable with weights_only=True)
                      metadata={"dataset": json.loads(json.dumps(meta.to_dict()))},
                      progress=show_bar(args) if args is not None else False,
                      print_log=print_log(args) if args is not None else True, tensorboard=tensorboard,
                      time_budget_s=cfg.solver.time_budget_min * 60)
    if resume:
        start = trainer.resume(resume_from)
        if main_proc:
            print(f"resuming from iteration {start}" if start else f"nothing to resume in {run.root}; starting fresh")
    summary = trainer.train()  # writes model_final.pth before its last evaluation

    # the final, complete evaluation with the per-category table, sharded like the periodic ones
    metrics = final_evaluation(trainer.model, cfg, val_set, val_loader(shard=True), device, run, main_proc)
    summary["metrics"] = metrics
    return summary


def final_evaluation(model, cfg, val_set, loader, device, run, main_proc: bool = True) -> dict:
    """The final, complete evaluation with the per-category table (every rank calls it with its
    shard's loader; rank 0 scores): metrics.json, results.json, curves and vis/ in the run folder
    ``run`` (``common.tooling.RunDir``). Returns the metrics ({} off rank 0)."""
    from detection.build import iou_types_for
    from detection.inference import evaluate_detector
    from detection.visualize import draw_predictions

    iou_types = iou_types_for(cfg.model)
    metrics, results = evaluate_detector(model, loader, val_set.coco, val_set.meta.category_ids, iou_types,
                                         device, verbose=main_proc, amp=cfg.test.amp, backend=cfg.test.coco_backend)
    if not main_proc:
        return metrics
    run.write_metrics(metrics)  # NaN -> null
    (run.root / "results.json").write_text(json.dumps(results))
    if (run.root / "metrics.csv").is_file():
        run.plot_curves()
    draw_predictions(model, val_set, device, run.vis, count=cfg.test.num_vis,  # with val_set.proposals, if any
                     score_thresh=cfg.test.vis_score_thresh)
    line = "  ".join(f"{t} AP {metrics[t]['AP']:.1f}" for t in iou_types if t in metrics)
    print(f"done: {line}; everything is in {run.root}")
    return metrics


def train_rcnn(args: argparse.Namespace, cfg, paths, output: Path, device) -> int:
    """R-CNN's four stages, each skipped when its artefact is there (see detection/rcnn_stages.py)."""
    from common.config import to_yaml
    from common.engine.build import build_optimizer, build_scheduler, schedule_in_epochs
    from common.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint, seed_everything
    from common.engine.trainer import Trainer
    from detection.build import (attach_proposals, build_datasets, build_model, proposal_reader,
                                 proposals_to_read)
    from common.loaders import build_test_loader
    from detection.data import CocoDetection, build_train_loader, build_transforms
    from common.tooling import RunDir, print_log, show_bar
    from detection.inference import evaluate_detector
    from detection.rcnn_stages import cache_features, fit_regressors, fit_svms
    from common.config import ConfigError

    d, r = cfg.data, cfg.model.rcnn
    if cfg.model.backbone.adapt_bn_images:
        raise ConfigError("model.backbone.adapt_bn_images is for the end-to-end detectors, whose backbone sees "
                          "whole images; R-CNN's sees warped windows, and its config trains BN on them "
                          "(model.backbone.norm=BN)")
    # both splits carry proposal_boxes from data.*_proposals (resized and flipped with the image)
    train_set, val_set = build_datasets(cfg, paths)
    solver, note = schedule_in_epochs(cfg.solver, len(train_set))
    cfg = replace(cfg, solver=solver)
    print(f"note: {note}")
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
                          progress=show_bar(args), print_log=print_log(args),
                          time_budget_s=s.time_budget_min * 60)  # the fine-tuning stage's budget
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
    attach_proposals(plain, d.train_proposals, proposals_to_read(cfg), "data.train_proposals", "train",
                     reader=proposal_reader(cfg.model))
    settings = {"finetune": str(finetune.resolve()), "train_proposals": str(Path(d.train_proposals).resolve()),
                "warp_size": r.warp_size, "context_pad": r.context_pad,
                "proposals_per_image": r.proposals_per_image, "proposals_read": proposals_to_read(cfg),
                "feature_images": r.feature_images, "test_min_size": d.test_min_size, "max_size": d.max_size,
                "feat_norm": r.feat_norm}
    print("stage 2 (features)")
    cache = cache_features(model, plain, output / "features", settings, device, feat_norm=r.feat_norm,
                           limit=r.feature_images, progress=show_bar(args))
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
    (output / "config.yaml").write_text(to_yaml(cfg))  # marks the folder as a train_det run (--resume)

    save_checkpoint(output / "model_final.pth", {"model": model.state_dict(), "config_yaml": to_yaml(cfg),
                                                 "metadata": metadata})
    final_evaluation(model, cfg, val_set, val_loader(), device, RunDir(output))
    return 0



if __name__ == "__main__":
    sys.exit(main())

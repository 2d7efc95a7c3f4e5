#!/usr/bin/env python
"""Our Mask R-CNN side by side with torchvision's, in one run: same data, batches, schedule.

    python tools/benchmark.py --out bench.json                 # CPU: ResNet-18-FPN, 192 px, 300 iters
    python tools/benchmark.py --iters 3                        # a quick check that everything runs
    python tools/benchmark.py --seeds 0 1 2 --out b.json       # three seeds; the table holds their means
    python tools/benchmark.py --skip-torchvision --out b.json  # split a long run: every run with the
    python tools/benchmark.py --skip-ours --seeds 1 --out b.json  #  same settings adds its seeds to b.json
    python tools/benchmark.py --gpu-r50 --out gpu.json         # R50-FPN, 800 px, batch 2, on CUDA
    python tools/benchmark.py --out b0.json 'solver.lr_mults={}'  # recipe overrides (solver ones are shared)

CPU mode (default). Both models are trained from scratch, one after the other in this process,
with the same seed, on the same sequence of batches (one seeded loader per model, so the same
images and augmentations; ``data_digest`` in the JSON proves it), with the same optimizer and LR
schedule (``common.engine.build_optimizer``/``build_scheduler`` of our CPU recipe,
``configs/detection/shapes_R18_FPN_wide.yaml``; per-module LR multipliers, when an override sets
``solver.lr_mults``, go to the same parts of torchvision's model, see ``TV_MODULES``) and the same
gradient clipping, both stepped by ``common.engine.Trainer.run_step``:

  ours         the wide CPU recipe (the default's, shapes_R18_FPN.yaml, with 256 sampled RoIs per
               image, a 1024-wide box head and torchvision's mask branch: 4 convs of 256 channels
               on every foreground RoI; it learns faster per iteration than the default, at a
               higher cost per step) with keypoints off (so both do boxes + masks), at --size px;
  torchvision  ``torchvision.models.detection.MaskRCNN`` on torchvision's ``resnet18(weights=None,
               norm_layer=BatchNorm2d)`` in its ``BackboneWithFPN`` (every layer trainable, the
               FPN as wide as ours), min_size = --size,
               with every setting its constructor exposes set as in our recipe: anchor sizes, RPN
               pre/post-NMS top-k and sample size, RoI sample size, detections per image, box
               head width (TwoMLPHead), mask head convs (MaskRCNNHeads), RoIAlign sampling ratio,
               and our loss weights (applied to its losses by ``TorchvisionDetector``).
               What stays different is fixed by torchvision: its RPN also runs on the max-pooled
               level (given 2x the largest anchor). Its mask head trains on every sampled
               foreground RoI (it has no ``roi_heads.mask_rois_per_image`` cap), as the wide
               recipe's does.
  --torchvision-heads stock
               torchvision's MaskRCNN as its users build it on ResNet-18-FPN instead
               (``resnet_fpn_backbone``, FPN 256, every RPN/RoI setting at torchvision's defaults):
               ours against what a torchvision user gets for the same backbone, size, batch and
               schedule.

Seeds: a 200-iteration run is early in training, where AP moves by several points with the seed
(initialisation, batch order, augmentation); ``--seeds`` repeats the whole comparison per seed and
the table holds the means over the seeds both models ran (AP differences are paired by seed), with
each seed's AP listed under it. ``--out`` keeps every (seed, model) column of earlier runs with the
same settings, so one long benchmark can be split across processes (a lock serialises their writes);
a file made with other settings (another recipe override, size, schedule...) is refused, never replaced.
Trailing ``key=value`` overrides change our recipe; the solver's (LR, ``solver.lr_mults``, clipping)
are shared, so they reach torchvision too: ``'solver.lr_mults={}'`` runs both without multipliers.

Rows: training s/iter (median after --warmup iterations; forward + backward + optimizer step,
data loading excluded), inference images/s (batch 1 on the first --infer-images val images,
model call only, masks pasted into the image), box and mask AP (percent) on the val split after
training, both through ``detection.inference.evaluate_detector`` (predictions mapped to the frame
on disk with ``rescale_predictions``, scored by ``CocoEvaluator``). In the last column a ratio
> 1 means ours is faster; AP is ours minus torchvision in points.

GPU mode (--gpu-r50): ours from ``configs/detection/mask_rcnn_R50_FPN.yaml`` against
``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``, both stock, 800 px, batch 2,
fp32. Without downloads torchvision's from-scratch model has trainable BatchNorm everywhere, so
ours gets the same: ``model.backbone.weights=null norm=BN freeze_at=0``. Rows: training s/iter,
inference s/img (batch 1) and peak ``torch.cuda.max_memory_allocated`` in training and inference.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import common  # noqa: E402,F401  (first: lets idle OpenMP threads sleep, see common/__init__.py)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common.backbones.backbone import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from detection.structures import ImageList  # noqa: E402

CPU_RECIPE = ROOT / "configs" / "detection" / "shapes_R18_FPN_wide.yaml"
GPU_RECIPE = ROOT / "configs" / "detection" / "mask_rcnn_R50_FPN.yaml"
SIDES = ("torchvision", "ours")
# how our loaders pad a batch for ResNet backbones (their size_divisibility and pixel_mean)
PAD = dict(size_divisibility=32, pad_value=IMAGENET_MEAN)

# (key, label, how to compare): "lower"/"higher" is better -> ratio (> 1: ours better); "points" -> ours - tv
CPU_ROWS = (("train_s_per_iter", "train s/iter", "lower"),
            ("infer_img_per_s", "inference img/s (batch 1)", "higher"),
            ("box_AP", "box AP", "points"),
            ("mask_AP", "mask AP", "points"))
GPU_ROWS = (("train_s_per_iter", "train s/iter", "lower"),
            ("infer_s_per_img", "inference s/img (batch 1)", "lower"),
            ("train_peak_MiB", "peak memory, training (MiB)", "lower"),
            ("infer_peak_MiB", "peak memory, inference (MiB)", "lower"))

# torchvision's loss names -> ours (ARCHITECTURE.md), so logs and NaN messages read the same
TV_LOSS_NAMES = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_box",
                 "loss_classifier": "loss_cls", "loss_box_reg": "loss_box", "loss_mask": "loss_mask"}


# ---------------------------------------------------------------------------------------------
# torchvision behind our model contract


def to_torchvision_targets(targets: list[dict]) -> list[dict]:
    """Our targets -> torchvision's: boxes (M, 4) xyxy, labels (M,) in 1..K (0 is background),
    masks (M, H, W) uint8 when present. Same frame (the image the model sees)."""
    out = []
    for t in targets:
        tv = {"boxes": t["gt_boxes"], "labels": t["gt_classes"] + 1}
        if "gt_masks" in t:
            tv["masks"] = t["gt_masks"]
        out.append(tv)
    return out


def from_torchvision_prediction(pred: dict) -> dict:
    """torchvision's detections -> our prediction fields: labels 1..K -> pred_classes 0..K-1,
    masks (R, 1, H, W) probabilities -> pred_masks (R, H, W). Same frame as its input image."""
    out = {"pred_boxes": pred["boxes"], "scores": pred["scores"], "pred_classes": pred["labels"] - 1}
    if "masks" in pred:
        out["pred_masks"] = pred["masks"][:, 0]  # (R, 1, H, W) -> (R, H, W)
    return out


class TorchvisionDetector(nn.Module):
    """A torchvision detection model with our ``forward(images, targets) -> (predictions, losses)``.

    torchvision computes losses in train mode only, so in eval mode ``losses`` is always empty
    (no validation loss through this wrapper). Its own transform still normalises, resizes (a
    no-op when the image already has its min_size) and pads, as it does for any user.
    """

    def __init__(self, model: nn.Module, loss_weights: dict[str, float] | None = None):
        super().__init__()
        self.model = model
        self.loss_weights = dict(loss_weights or {})  # our loss name -> multiplier (missing: 1)

    def forward(self, images: ImageList, targets: list[dict] | None = None) -> tuple[list[dict], dict]:
        # (N, 3, Hp, Wp) padded batch -> N unpadded (3, h, w) images, torchvision's input
        batch = [im[:, :h, :w] for im, (h, w) in zip(images.tensor, images.image_sizes)]
        if self.training:
            if targets is None:
                raise ValueError("TorchvisionDetector in train mode needs targets")
            losses = self.model(batch, to_torchvision_targets(targets))
            losses = {TV_LOSS_NAMES.get(k, k): v for k, v in losses.items()}
            return [], {k: v * self.loss_weights.get(k, 1.0) for k, v in losses.items()}
        return [from_torchvision_prediction(p) for p in self.model(batch)], {}


def torchvision_r18_fpn_stock(num_classes: int, min_size: int, max_size: int,
                              pixel_mean, pixel_std) -> TorchvisionDetector:
    """torchvision's MaskRCNN as a torchvision user builds it on ResNet-18-FPN: its own
    ``resnet_fpn_backbone`` (from scratch, every layer trainable, plain BN, FPN 256 wide) and every
    RPN / RoI-head setting left at torchvision's defaults (2000/1000 proposals, 512 sampled RoIs,
    1024-wide box head, 4x256 mask convs). Only image size, batch and schedule are shared."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=nn.BatchNorm2d)
    model = MaskRCNN(backbone, num_classes=num_classes + 1, min_size=min_size, max_size=max_size,
                     image_mean=list(pixel_mean), image_std=list(pixel_std))
    return TorchvisionDetector(model)


def torchvision_r18_fpn(model_cfg, num_classes: int, min_size: int, max_size: int,
                        pixel_mean, pixel_std) -> TorchvisionDetector:
    """torchvision's MaskRCNN on its ResNet-18-FPN (from scratch, trainable BN), with the settings
    its constructor exposes copied from our ``ModelConfig`` (see the module docstring)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    c = model_cfg
    if c.box_head.num_convs or c.box_head.num_fcs != 2 or c.mask_head.class_agnostic:
        raise ValueError("the torchvision side copies a 2-FC box head and a class-specific mask head; "
                         "the recipe's box_head/mask_head differ")
    # torchvision's own ResNet-18 + FPN classes, from scratch, every layer trainable, plain BN, with
    # our recipe's FPN width (resnet_fpn_backbone would fix it at 256)
    backbone = BackboneWithFPN(resnet18(weights=None, norm_layer=nn.BatchNorm2d),
                               return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               in_channels_list=[64, 128, 256, 512], out_channels=c.backbone.fpn_channels)
    channels = backbone.out_channels
    levels = ["0", "1", "2", "3"]  # p2..p5; the extra "pool" level only feeds the RPN
    sizes = tuple(tuple(int(s) for s in level) for level in c.rpn.anchor_sizes)
    sizes += ((2 * sizes[-1][0],),)  # the max-pooled level torchvision always adds
    ratios = tuple(c.rpn.aspect_ratios) * len(sizes) if len(c.rpn.aspect_ratios) == 1 else tuple(c.rpn.aspect_ratios)
    bh, mh, res = c.box_head, c.mask_head, c.box_head.pooler_resolution
    model = MaskRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size,
        image_mean=list(pixel_mean), image_std=list(pixel_std),
        rpn_anchor_generator=AnchorGenerator(sizes, ratios),
        rpn_pre_nms_top_n_train=c.rpn.pre_nms_topk_train, rpn_pre_nms_top_n_test=c.rpn.pre_nms_topk_test,
        rpn_post_nms_top_n_train=c.rpn.post_nms_topk_train, rpn_post_nms_top_n_test=c.rpn.post_nms_topk_test,
        rpn_nms_thresh=c.rpn.nms_thresh, rpn_bg_iou_thresh=c.rpn.iou_thresholds[0],
        rpn_fg_iou_thresh=c.rpn.iou_thresholds[1], rpn_batch_size_per_image=c.rpn.batch_size_per_image,
        rpn_positive_fraction=c.rpn.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(levels, res, bh.pooler_sampling_ratio),
        box_head=TwoMLPHead(channels * res * res, bh.fc_dim),
        box_predictor=FastRCNNPredictor(bh.fc_dim, num_classes + 1),
        box_score_thresh=c.roi_heads.score_thresh, box_nms_thresh=c.roi_heads.nms_thresh,
        box_detections_per_img=c.roi_heads.detections_per_img,
        box_bg_iou_thresh=c.roi_heads.iou_thresholds[0], box_fg_iou_thresh=c.roi_heads.iou_thresholds[1],
        box_batch_size_per_image=c.roi_heads.batch_size_per_image,
        box_positive_fraction=c.roi_heads.positive_fraction, bbox_reg_weights=tuple(bh.bbox_reg_weights),
        mask_roi_pool=MultiScaleRoIAlign(levels, mh.pooler_resolution, mh.pooler_sampling_ratio),
        mask_head=MaskRCNNHeads(channels, [mh.conv_dim] * mh.num_convs, 1),
        mask_predictor=MaskRCNNPredictor(mh.conv_dim, mh.conv_dim, num_classes + 1),
    )
    return TorchvisionDetector(model, loss_weights(c))


# our module-name prefixes (solver.lr_mults keys) -> the same parts of a TorchvisionDetector;
# our mask head holds its 1x1 predictor, torchvision keeps it beside the head
TV_MODULES = {"roi_heads": ("model.roi_heads",),
              "roi_heads.box_head": ("model.roi_heads.box_head",),
              "roi_heads.box_predictor": ("model.roi_heads.box_predictor",),
              "roi_heads.mask_head": ("model.roi_heads.mask_head", "model.roi_heads.mask_predictor")}


def torchvision_lr_mults(lr_mults: dict[str, float]) -> dict[str, float]:
    """Our recipe's per-module LR multipliers under torchvision's module names, so that both
    models train with the same LR schedule part by part (a key without a counterpart: ValueError)."""
    out = {}
    for prefix, mult in lr_mults.items():
        if prefix not in TV_MODULES:
            raise ValueError(f"solver.lr_mults key {prefix!r} has no torchvision counterpart here "
                             f"(known: {', '.join(sorted(TV_MODULES))})")
        out.update(dict.fromkeys(TV_MODULES[prefix], mult))
    return out


def loss_weights(model_cfg) -> dict[str, float]:
    """Our recipe's loss weights by loss name, for the torchvision side that copies our settings."""
    r = model_cfg.rpn.loss_weight
    return {"loss_rpn_cls": r, "loss_rpn_box": r, "loss_mask": model_cfg.mask_head.loss_weight}


def torchvision_r50_fpn(num_classes: int) -> TorchvisionDetector:
    """torchvision's stock maskrcnn_resnet50_fpn, from scratch (800 px, trainable BN)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return TorchvisionDetector(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                     num_classes=num_classes + 1))


# ---------------------------------------------------------------------------------------------
# configs


def cpu_config(size: int, iters: int, seed: int, workers: int, overrides: Sequence[str] = ()):
    """Our CPU recipe (``CPU_RECIPE``) at ``size`` px (long side capped at 4/3 of it), keypoints off,
    then the user's ``key=value`` overrides."""
    from common.config import load_config
    from detection.config import DetConfig

    cfg = load_config(DetConfig, CPU_RECIPE, [
        "model.keypoint_on=false", f"data.min_size=[{size}]", f"data.test_min_size={size}",
        f"data.max_size={math.ceil(size * 4 / 3)}", f"data.num_workers={workers}",
        f"solver.max_iters={iters}", f"solver.seed={seed}", *overrides])
    return replace(cfg, solver=replace(cfg.solver, warmup_iters=min(cfg.solver.warmup_iters, iters)))


def gpu_config(iters: int, seed: int, workers: int, overrides: Sequence[str] = ()):
    """The R50-FPN Mask R-CNN recipe, from scratch with trainable BN like torchvision's, batch 2,
    then the user's ``key=value`` overrides."""
    from common.config import load_config
    from detection.config import DetConfig

    cfg = load_config(DetConfig, GPU_RECIPE, [
        "model.backbone.weights=null", "model.backbone.norm=BN", "model.backbone.freeze_at=0",
        "solver.ims_per_batch=2", f"data.num_workers={workers}", f"solver.max_iters={iters}",
        f"solver.seed={seed}", *overrides])
    return replace(cfg, solver=replace(cfg.solver, warmup_iters=min(cfg.solver.warmup_iters, iters)))


# ---------------------------------------------------------------------------------------------
# measuring one model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def train_timed(model: nn.Module, cfg, train_set, device: torch.device) -> tuple[list[float], str]:
    """``cfg.solver.max_iters`` optimizer steps through ``Trainer.run_step``, one seeded batch at a
    time. Returns the seconds of every step (batch already loaded) and a digest of the batches."""
    from common.engine import Trainer, build_optimizer, build_scheduler
    from detection.data import build_train_loader

    s = cfg.solver

    def make_data_iter(start: int):
        return build_train_loader(train_set, batch_size=s.ims_per_batch, num_workers=cfg.data.num_workers,
                                  seed=s.seed, start_iter=start,
                                  aspect_ratio_grouping=cfg.data.aspect_ratio_grouping, **PAD)

    optimizer = build_optimizer(model, s)
    scheduler = build_scheduler(optimizer, s)
    digest = hashlib.sha1()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, optimizer, scheduler, make_data_iter, output_dir=tmp, max_iters=s.max_iters,
                          device=device, amp=s.amp, clip_grad_norm=s.clip_grad_norm, checkpoint_period=0,
                          progress=False, tensorboard=False)
        model.train()
        data = make_data_iter(0)
        for _ in range(s.max_iters):
            images, targets = next(data)
            for t in targets:
                digest.update(str(int(t["image_id"])).encode())
                digest.update(t["gt_boxes"].numpy().tobytes())
            _sync(device)
            t0 = time.perf_counter()
            trainer.run_step(iter([(images, targets)]))
            _sync(device)
            times.append(time.perf_counter() - t0)
    return times, digest.hexdigest()


@torch.no_grad()
def time_inference(model: nn.Module, batches: list, device: torch.device, warmup: int) -> float:
    """Seconds per image of the model call alone over ``batches`` after ``warmup`` of them."""
    model.eval()
    for images, _ in batches[:warmup]:
        model(images.to(device))
    timed = batches[warmup:] or batches
    _sync(device)
    t0 = time.perf_counter()
    for images, _ in timed:
        model(images.to(device))
    _sync(device)
    return (time.perf_counter() - t0) / sum(len(images) for images, _ in timed)


def measure(model: nn.Module, cfg, train_set, val_set, device: torch.device, args, gpu: bool) -> dict:
    """Train, time inference, and (CPU mode) evaluate one model. Returns its column of the table."""
    from detection.data import build_test_loader
    from detection.inference import evaluate_detector

    params = sum(p.numel() for p in model.parameters())
    model.to(device)
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    times, digest = train_timed(model, cfg, train_set, device)
    warmup = min(args.warmup, len(times) - 1)
    out = {"params_M": round(params / 1e6, 3), "iter_times": [round(t, 4) for t in times],
           "train_s_per_iter": statistics.median(times[warmup:]),
           "train_s_per_iter_mean": statistics.fmean(times[warmup:]), "data_digest": digest}
    if gpu:
        out["train_peak_MiB"] = _mib(device)
        torch.cuda.reset_peak_memory_stats(device)

    loader = build_test_loader(val_set, batch_size=1, num_workers=0, **PAD)
    batches = []
    for batch in loader:
        if len(batches) >= args.infer_images:
            break
        batches.append(batch)
    s_per_img = time_inference(model, batches, device, warmup=min(2, len(batches) - 1))
    if gpu:
        out["infer_s_per_img"] = s_per_img
        out["infer_peak_MiB"] = _mib(device)
        return out
    out["infer_img_per_s"] = 1.0 / s_per_img
    val_loader = build_test_loader(val_set, batch_size=cfg.test.ims_per_batch, num_workers=0, **PAD)
    metrics, _ = evaluate_detector(model, val_loader, val_set.coco, val_set.meta.category_ids,
                                   ("bbox", "segm"), device, limit=args.eval_images)
    out["box_AP"] = metrics.get("bbox", {}).get("AP")
    out["mask_AP"] = metrics.get("segm", {}).get("AP")
    return out


# ---------------------------------------------------------------------------------------------
# the table


def compare_runs(runs: dict[str, dict], rows) -> tuple[dict, list[str]]:
    """The table of means over seeds: over the seeds both models ran (paired) when there are any,
    else over each model's own. ``runs`` = {seed: {model: column}}. Returns (table, seeds used)."""
    paired = [seed for seed, cols in runs.items() if all(cols.get(side) for side in SIDES)]
    seeds = paired or list(runs)
    columns: dict[str, dict | None] = {}
    for side in SIDES:
        cols = [runs[seed][side] for seed in seeds if runs[seed].get(side)]
        columns[side] = {key: _mean([c.get(key) for c in cols]) for key, _, _ in rows} if cols else None
    return compare(columns, rows), seeds


def _mean(values: list) -> float | None:
    """Mean of the values that are there (None: missing); NaN stays NaN."""
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def compare(columns: dict[str, dict | None], rows) -> dict:
    """{row key: {"torchvision", "ours", "ratio" | "difference"}}; None where a side is missing."""
    table = {}
    for key, _, how in rows:
        tv, ours = ((columns.get(side) or {}).get(key) for side in SIDES)
        both = tv is not None and ours is not None and not (math.isnan(tv) or math.isnan(ours))
        if how == "points":
            table[key] = {"torchvision": tv, "ours": ours, "difference": ours - tv if both else None}
        else:
            ratio = None
            if both and min(tv, ours) > 0:
                ratio = tv / ours if how == "lower" else ours / tv
            table[key] = {"torchvision": tv, "ours": ours, "ratio": ratio}
    return table


def format_table(table: dict, rows) -> str:
    """One Markdown table: rows of ``rows``, columns torchvision | ours | ours vs torchvision."""
    lines = ["| | torchvision | ours | ours vs torchvision |", "|---|---:|---:|---:|"]
    for key, label, how in rows:
        r = table[key]
        if how == "points":
            last = "-" if r["difference"] is None else f"{r['difference']:+.1f} pts"
        else:
            last = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {label} | {_num(r['torchvision'])} | {_num(r['ours'])} | {last} |")
    return "\n".join(lines)


def _num(v) -> str:
    return "-" if v is None else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


# ---------------------------------------------------------------------------------------------
# the tool


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=300, help="training iterations per model (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="iterations left out of the s/iter median")
    p.add_argument("--size", type=int, default=192, help="CPU mode: image short side in px (default: %(default)s)")
    p.add_argument("--data", default=None, help="dataset folder in the synthetic layout (default: the "
                   "built-in shapes dataset, generated on first use)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu; cuda with --gpu-r50)")
    p.add_argument("--out", default=None, help="write the table as JSON here; the columns (per seed and "
                   "model) of earlier runs in this file with the same settings are kept")
    p.add_argument("--skip-torchvision", action="store_true", help="measure ours only")
    p.add_argument("--skip-ours", action="store_true", help="measure torchvision only")
    p.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0],
                   help="model, data and augmentation seeds; the comparison runs once per seed")
    p.add_argument("--infer-images", type=int, default=50, help="val images timed for inference")
    p.add_argument("--eval-images", type=int, default=0, help="val images for AP (0: all)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (0 keeps the "
                   "cores free for the models)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine has 2 cores)")
    p.add_argument("--gpu-r50", action="store_true", help="R50-FPN at 800 px, batch 2, on CUDA")
    p.add_argument("--torchvision-heads", choices=("ours", "stock"), default="ours",
                   help="CPU mode: 'ours' copies our recipe's proposal/RoI/head settings into torchvision "
                        "(only the implementations differ); 'stock' leaves torchvision's defaults (what a "
                        "torchvision user gets on ResNet-18-FPN; only size, batch and schedule are shared)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of our recipe, e.g. 'solver.lr_mults={}'; solver keys (LR, multipliers, "
                        "clipping) are shared, so they reach torchvision too")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    for name, low in (("iters", 1), ("warmup", 0), ("infer_images", 1), ("eval_images", 0),
                      ("workers", 0), ("threads", 0), ("size", 32)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds repeats a seed: {args.seeds}")
    if args.skip_torchvision and args.skip_ours:
        raise ValueError("--skip-torchvision and --skip-ours together leave nothing to measure")
    if args.device not in (None, "cpu", "cuda") and not str(args.device).startswith("cuda:"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from common.config import ConfigError
    from common.engine import TrainingError
    from detection.data import DatasetError
    from detection.evaluation import EvaluationError

    try:
        check_args(args)
        if args.gpu_r50 and not torch.cuda.is_available():
            raise ValueError("--gpu-r50 needs a CUDA GPU and torch sees none")
        return run(args)
    except (ConfigError, DatasetError, EvaluationError, TrainingError, FileNotFoundError, ValueError) as e:
        print(f"benchmark.py: error: {e}".splitlines()[0], file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from common.engine import seed_everything
    from detection.build import build_datasets, build_model, check_data, resolve_data_paths

    gpu = args.gpu_r50
    device = torch.device(args.device or ("cuda" if gpu else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} but torch sees no CUDA GPU")
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        cfg = gpu_config(args.iters, args.seeds[0], args.workers, args.overrides)
    else:
        cfg = cpu_config(args.size, args.iters, args.seeds[0], args.workers, args.overrides)
    paths = resolve_data_paths(cfg.data, args.data)
    train_set, val_set = build_datasets(cfg, paths, check_data(cfg, paths, None))  # every image, first
    if not train_set.has_masks:
        raise ValueError(f"{train_set.ann_file} has no instance masks; this benchmark compares Mask R-CNNs")
    meta = train_set.meta
    rows = GPU_ROWS if gpu else CPU_ROWS
    settings = {
        "mode": "gpu-r50" if gpu else "cpu-r18", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "data": str(train_set.ann_file.parent),
        "size": cfg.data.test_min_size, "max_size": cfg.data.max_size, "batch": cfg.solver.ims_per_batch,
        "iters": args.iters, "warmup": min(args.warmup, args.iters - 1),
        "optimizer": cfg.solver.optimizer, "base_lr": cfg.solver.base_lr, "schedule": cfg.solver.schedule,
        "lr_mults": dict(cfg.solver.lr_mults),
        "infer_batch": 1, "infer_images": min(args.infer_images, len(val_set)),
        "eval_images": args.eval_images or len(val_set),
        "torchvision_heads": None if gpu else args.torchvision_heads,
    }
    if args.overrides:  # only when given, so files written before this key still merge
        settings["overrides"] = list(args.overrides)
    if args.out:
        _read_previous(args.out, settings)  # a corrupt --out fails now, not after the training
    runs: dict[str, dict[str, dict | None]] = {}
    for seed in args.seeds:
        runs[str(seed)] = columns = {}
        cfg = replace(cfg, solver=replace(cfg.solver, seed=seed))  # the loaders' seed
        for side in SIDES:
            if getattr(args, f"skip_{side}"):
                continue
            seed_everything(seed)
            if side == "ours":
                model = build_model(cfg.model, meta.num_classes)
            elif gpu:
                model = torchvision_r50_fpn(meta.num_classes)
            elif args.torchvision_heads == "stock":
                model = torchvision_r18_fpn_stock(meta.num_classes, cfg.data.test_min_size, cfg.data.max_size,
                                                  IMAGENET_MEAN, IMAGENET_STD)
            else:
                model = torchvision_r18_fpn(cfg.model, meta.num_classes, cfg.data.test_min_size,
                                            cfg.data.max_size, IMAGENET_MEAN, IMAGENET_STD)
            side_cfg = cfg
            if side == "torchvision":  # our LR multipliers on the same parts of its model
                side_cfg = replace(cfg, solver=replace(cfg.solver, lr_mults=torchvision_lr_mults(cfg.solver.lr_mults)))
            print(f"{side}, seed {seed}: training {args.iters} iterations ...", file=sys.stderr, flush=True)
            columns[side] = measure(model, side_cfg, train_set, val_set, device, args, gpu)
            del model
    for seed, cols in runs.items():
        if len({c["data_digest"] for c in cols.values()}) > 1:
            print(f"warning: seed {seed}: the two models saw different batches (data_digest differs)", file=sys.stderr)
    if args.out:  # merge with the file's earlier seeds and write it, under a lock (parallel runs)
        out = args.out
        with _locked(out):
            try:
                runs = _merged(_read_previous(out, settings), runs)
            except ValueError as e:  # another run wrote something else there meanwhile: keep both
                out = f"{Path(out).with_suffix('')}.{os.getpid()}.json"
                print(f"warning: {e}; writing this run to {out}", file=sys.stderr)
            table, seeds = compare_runs(runs, rows)
            result = {"settings": settings, "seeds": seeds, "table": table, "runs": runs}
            Path(out).write_text(json.dumps(_strict(result), indent=2))
    else:
        table, seeds = compare_runs(runs, rows)

    print(f"{settings['mode']}: {args.iters} iterations x {settings['batch']} images at {settings['size']} px, "
          f"s/iter = median after {settings['warmup']} warmup iterations, on {settings['device_name']} "
          f"({settings['threads']} threads); ratio > 1: ours faster / smaller; means over seed(s) "
          f"{', '.join(seeds) or '-'}")
    print(format_table(table, rows))
    points = [(key, label) for key, label, how in rows if how == "points"]
    for seed in seeds if points else ():
        cols = runs[seed]
        print(f"  seed {seed} (torchvision / ours): " + ", ".join(
            f"{label} {' / '.join(_num((cols.get(side) or {}).get(key)) for side in SIDES)}" for key, label in points))
    return 0


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on ``path``.lock for the block (fcntl; the file is left behind, empty)."""
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _merged(old: dict, new: dict) -> dict:
    """{seed: {model: column}}: ``new`` over ``old`` (a new column replaces the same seed and model)."""
    runs = {seed: dict(cols) for seed, cols in old.items()}
    for seed, cols in new.items():
        runs.setdefault(seed, {}).update(cols)
    return dict(sorted(runs.items(), key=lambda item: int(item[0])))


def _read_previous(path: str, settings: dict) -> dict:
    """{seed: {model: column}} of an earlier run in ``path``; a file made with other settings (or
    not a benchmark result) is a ValueError, never overwritten."""
    if not Path(path).is_file():
        return {}
    try:
        old = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--out {path} exists but is not JSON ({e}); choose another file") from None
    if not isinstance(old, dict) or not isinstance(old.get("runs"), dict):
        raise ValueError(f"--out {path} is not a benchmark result; choose another file")
    if old.get("settings") != settings:  # never overwrite measurements made another way
        before = old.get("settings") if isinstance(old.get("settings"), dict) else {}
        diff = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        changes = "; ".join(f"{k}: {before.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
        raise ValueError(f"--out {path} holds a run with other settings ({changes}); choose another file")
    return {str(seed): {side: cols.get(side) for side in SIDES if cols.get(side)}
            for seed, cols in old["runs"].items() if isinstance(cols, dict)}


def _strict(obj):
    """NaN -> None so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


if __name__ == "__main__":
    sys.exit(main())

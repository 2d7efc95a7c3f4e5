"""Running a detector over a dataset: predictions in the frame on disk, COCO metrics, validation loss.

Shape shorthand: N images in a batch, R predictions in one image.

These take plain objects (a model, a loader, a COCO ground truth) so that the training tool,
the evaluation tool and the benchmark share one path from a model to ``metrics.json``.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from common.engine import distributed as dist
from common.engine.precision import autocast, autocast_dtype, describe
from detection.evaluation import CocoEvaluator
from detection.fields import rescale_predictions


def _to(targets: list[dict], device) -> list[dict]:
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
            for t in targets]


def proposals_only(targets: list[dict], device=None) -> list[dict] | None:
    """What a model reads at inference besides the images: the precomputed proposals of Fast
    R-CNN and R-CNN (``proposal_boxes``, on ``device``) when the targets carry them, else None."""
    if targets and all("proposal_boxes" in t for t in targets):
        return [{"image_id": t.get("image_id"), "proposal_boxes": t["proposal_boxes"].to(device)} for t in targets]
    return None


def _predict_batch(model: nn.Module, images, targets, device, dtype) -> list[dict]:
    """One batch's predictions in the frame on disk (``orig_size`` of each target), on the CPU."""
    with autocast(dtype, device):
        predictions, _ = model(images.to(device), proposals_only(targets, device))
    out = []
    for pred, size, target in zip(predictions, images.image_sizes, targets):
        orig = tuple(int(v) for v in target["orig_size"])
        # masks are pasted on the model's device at the size on disk, then copied as uint8
        out.append({k: v.cpu() for k, v in rescale_predictions(pred, size, orig).items()})
    return out


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device, limit: int = 0,
            amp: bool | str = False) -> Iterable[tuple[int, dict]]:
    """Yield ``(image_id, prediction)`` per image, the prediction mapped to the frame on disk.

    loader yields (ImageList, targets) with ``image_id`` and ``orig_size`` in each target (and
    ``proposal_boxes`` for Fast R-CNN and R-CNN). ``limit`` > 0 stops after that many images.
    ``amp``: the precision setting (``test.amp``, see common.engine.precision).
    """
    model.eval()
    dtype = autocast_dtype(amp, device)
    seen = 0
    for images, targets in loader:
        for pred, target in zip(_predict_batch(model, images, targets, device, dtype), targets):
            yield int(target["image_id"]), pred
            seen += 1
            if limit and seen >= limit:
                return


def evaluate_detector(model: nn.Module, loader: Iterable, coco_gt, category_ids: Sequence[int],
                      iou_types: Sequence[str], device, limit: int = 0,
                      verbose: bool = False, amp: bool | str = False,
                      backend: str = "pycocotools") -> tuple[dict, list[dict]]:
    """COCO metrics (percent, see detection.evaluation) and the COCO results list.

    ``amp``: the precision setting (``test.amp``). ``backend``: the COCOeval implementation
    (detection.evaluation.BACKENDS). In a multi-process run call it on every rank, each with a
    loader over its shard of the val set (``build_test_loader(..., rank=r, world_size=w)``: images
    r, r + w, ...): each rank predicts its shard, the results are gathered, rank 0 scores them and
    returns (metrics, all results); the other ranks return ({}, []). ``limit`` > 0 counts images
    over all ranks (the first ``limit``).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    evaluator = CocoEvaluator(coco_gt, category_ids, iou_types, verbose=verbose, backend=backend)
    shard_limit = len(range(rank, limit, world)) if limit else 0  # this rank's part of the first `limit`
    if not (limit and shard_limit == 0):
        for image_id, pred in predict(model, loader, device, shard_limit, amp):
            evaluator.process([image_id], [pred])
    shards = dist.all_gather_object((evaluator.results, evaluator.image_ids))  # [(results, ids)] per rank
    if rank != 0:
        return {}, []
    evaluator.results = [r for results, _ in shards for r in results]
    evaluator.image_ids = [i for _, ids in shards for i in ids]
    return evaluator.evaluate(), evaluator.results


@torch.no_grad()
def validation_loss(model: nn.Module, loader: Iterable, device, limit: int = 0) -> dict[str, float]:
    """Mean of each loss term over the first ``limit`` batches (0 = all), in eval mode."""
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    batches = 0
    for images, targets in loader:
        _, losses = model(images.to(device), _to(targets, device))
        for k, v in losses.items():
            sums[k] += float(v)
        batches += 1
        if limit and batches >= limit:
            break
    return {k: v / max(batches, 1) for k, v in sums.items()}


@torch.no_grad()
def time_inference(model: nn.Module, batches: Sequence, device, warmup: int = 1) -> float:
    """Seconds per image of a prediction as evaluation pays for it (the model call, then boxes,
    keypoints and masks mapped to the size on disk: ``_predict_batch``) over ``batches`` (a list
    of (ImageList, targets)) after ``warmup`` of them (all are timed when there are no more)."""
    model.eval()
    for images, targets in batches[:warmup]:
        _predict_batch(model, images, targets, device, None)
    timed = batches[warmup:] or batches
    _sync(device)
    t0 = time.perf_counter()
    for images, targets in timed:
        _predict_batch(model, images, targets, device, None)
    _sync(device)
    return (time.perf_counter() - t0) / max(sum(len(images) for images, _ in timed), 1)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def anatomy(model: nn.Module, loader: Iterable, device, n: int = 50, amp: bool | str = False,
            warmup: int = 2) -> dict:
    """How much inference costs beyond its backbone: the backbone + FPN forward alone against the
    whole prediction (model forward and the masks pasted at the size on disk, what evaluation
    pays), interleaved batch by batch so that a busy machine slows both alike.

    Runs ``warmup`` batches untimed, then batches until ``n`` images. Returns {"images",
    "backbone_ms" and "full_ms" (per image), "ratio" (full / backbone), "detections_per_image",
    "precision" ('fp32', 'bf16' or 'fp16')}.
    """
    model.eval()
    dtype = autocast_dtype(amp, device)
    backbone_s = full_s = 0.0
    images_seen = detections = 0
    for i, (images, targets) in enumerate(loader):
        if i >= warmup and images_seen >= n:
            break
        x = images.to(device)
        _sync(device)
        t0 = time.perf_counter()
        with autocast(dtype, device):
            model.backbone(model.backbone.normalize(x.tensor))
        _sync(device)
        t1 = time.perf_counter()
        preds = _predict_batch(model, images, targets, device, dtype)
        t2 = time.perf_counter()
        if i < warmup:
            continue
        backbone_s += t1 - t0
        full_s += t2 - t1
        images_seen += len(images)
        detections += sum(len(p["scores"]) for p in preds)
    if images_seen == 0:
        raise ValueError("anatomy needs more batches than the warmup ones")
    return {"images": images_seen, "backbone_ms": 1000 * backbone_s / images_seen,
            "full_ms": 1000 * full_s / images_seen, "ratio": full_s / backbone_s,
            "detections_per_image": detections / images_seen, "precision": describe(amp, device)}

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

from detection.evaluation import CocoEvaluator
from detection.structures import rescale_predictions


def _to(targets: list[dict], device) -> list[dict]:
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
            for t in targets]


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device, limit: int = 0) -> Iterable[tuple[int, dict]]:
    """Yield ``(image_id, prediction)`` per image, the prediction mapped to the frame on disk.

    loader yields (ImageList, targets) with ``image_id`` and ``orig_size`` in each target, and
    ``proposal_boxes`` for models that take precomputed proposals (passed on, nothing else of the
    targets is). ``limit`` > 0 stops after that many images.
    """
    model.eval()
    seen = 0
    for images, targets in loader:
        proposals = None
        if all("proposal_boxes" in t for t in targets):
            proposals = [{"image_id": t["image_id"], "proposal_boxes": t["proposal_boxes"].to(device)} for t in targets]
        predictions, _ = model(images.to(device), proposals)
        for pred, size, target in zip(predictions, images.image_sizes, targets):
            orig = tuple(int(v) for v in target["orig_size"])
            pred = rescale_predictions({k: v.cpu() for k, v in pred.items()}, size, orig)
            yield int(target["image_id"]), pred
            seen += 1
            if limit and seen >= limit:
                return


def evaluate_detector(model: nn.Module, loader: Iterable, coco_gt, category_ids: Sequence[int],
                      iou_types: Sequence[str], device, limit: int = 0,
                      verbose: bool = False) -> tuple[dict, list[dict]]:
    """COCO metrics (percent, see detection.evaluation) and the COCO results list."""
    evaluator = CocoEvaluator(coco_gt, category_ids, iou_types, verbose=verbose)
    for image_id, pred in predict(model, loader, device, limit):
        evaluator.process([image_id], [pred])
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
    """Seconds per image over ``batches`` (a list of (ImageList, targets)), after ``warmup`` batches."""
    model.eval()
    for images, _ in batches[:warmup]:
        model(images.to(device))
    images_seen, t0 = 0, time.perf_counter()
    for images, _ in batches[warmup:]:
        model(images.to(device))
        images_seen += len(images)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / max(images_seen, 1)

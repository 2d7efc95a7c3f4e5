"""R-CNN's training stages after fine-tuning: feature cache, SVMs, box regressors.

Shape shorthand: R boxes of one image (its M gt boxes first, then its proposals), D feature
dimensions, K classes.

Each stage writes one artefact in the run folder and is skipped when that artefact exists and
was made with the same settings (other settings: an error naming the artefact and the setting):

    RUN/finetune/model_final.pth    stage 1, the engine's run (tools/train_det.py)
    RUN/features/shard_*.pt         stage 2, ``shard_images`` images per shard, each written
    RUN/features/index.json         atomically (a rerun keeps finished shards); index.json last
    RUN/svms.pt                     stage 3, (K, D) weights, (K,) biases
    RUN/regressors.pt               stage 4, (K, D, 4) weights, (K, 4) biases

A shard holds, for its images in order: ``image_ids``, ``num_boxes`` and ``num_gt`` (per image),
``boxes`` (sum R, 4) in the frame the model saw, ``gt_classes`` (sum M,), ``features``
(sum R, D) float16, unscaled. The SVMs and regressors see ``features * scale`` with ``scale``
(index.json) making the mean feature norm ``feat_norm``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from common.engine.checkpoint import load_checkpoint, save_checkpoint, write_text_atomic
from detection.bbox_regression import fit_ridge, regression_samples
from detection.box_ops import pairwise_iou
from detection.linear_svm import mine_hard_negatives


class StaleArtefactError(ValueError):
    """A stage's artefact was made with other settings than the run's."""


def check_settings(path: Path, stored: dict, settings: dict) -> None:
    """Refuse an artefact whose settings differ from ``settings`` (names the first difference)."""
    for key in sorted(set(stored) | set(settings)):
        if stored.get(key) != settings.get(key):
            raise StaleArtefactError(f"{path} was made with {key} = {stored.get(key)!r} but this run has "
                                     f"{settings.get(key)!r}; delete it (or choose another --output) to redo it")


@dataclass
class FeatureCache:
    """All cached images at once (concatenated shards) and the feature scale."""

    image_ids: list[int]
    num_boxes: torch.Tensor  # (I,) rows per image
    num_gt: torch.Tensor  # (I,) of which gt boxes (the first rows of the image)
    boxes: torch.Tensor  # (sum R, 4)
    gt_classes: torch.Tensor  # (sum M,)
    features: torch.Tensor  # (sum R, D) float16
    scale: float

    def images(self):
        """Yield (boxes (R, 4), features (R, D) float32 scaled, num_gt M, gt_classes (M,)) per image."""
        starts = torch.cumsum(self.num_boxes, 0) - self.num_boxes
        gt_starts = torch.cumsum(self.num_gt, 0) - self.num_gt
        for s, n, gs, m in zip(starts.tolist(), self.num_boxes.tolist(), gt_starts.tolist(), self.num_gt.tolist()):
            yield (self.boxes[s:s + n], self.features[s:s + n].float() * self.scale, m,
                   self.gt_classes[gs:gs + m])


@torch.no_grad()
def cache_features(model, dataset, out_dir: str | Path, settings: dict, device, *, feat_norm: float = 20.0,
                   limit: int = 0, shard_images: int = 32, progress: bool = True) -> FeatureCache:
    """Stage 2: features of the gt boxes and proposals of ``dataset``'s first ``limit`` images
    (0 = all), written in shards under ``out_dir``. ``dataset`` yields (image, target) with
    ``gt_boxes``, ``gt_classes`` and ``proposal_boxes`` (no augmentation); ``model`` is the
    fine-tuned ``detection.rcnn.RCNN``. ``settings``: what the features depend on (a rerun with
    others is refused); ``feat_norm``: the mean feature norm the cache's scale makes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_file = out_dir / "settings.json"
    if settings_file.is_file():
        check_settings(settings_file, json.loads(settings_file.read_text()), settings)
    else:
        write_text_atomic(settings_file, json.dumps(settings, indent=2))
    index_file = out_dir / "index.json"
    if not index_file.is_file():
        from common.image_list import ImageList

        model.eval()
        count = min(limit, len(dataset)) if limit else len(dataset)
        shards = [list(range(s, min(s + shard_images, count))) for s in range(0, count, shard_images)]
        names = []
        for k, items in enumerate(tqdm(shards, desc="R-CNN features", unit="shard", disable=not progress)):
            name = f"shard_{k:05d}.pt"
            names.append(name)
            if (out_dir / name).is_file():
                continue  # finished before an interruption
            record = {"image_ids": [], "num_boxes": [], "num_gt": [], "boxes": [], "gt_classes": [], "features": []}
            for i in items:
                image, target = dataset[i]
                images = ImageList.from_tensors([image], model.backbone.size_divisibility,
                                                model.backbone.pixel_mean).to(device)
                proposals = target["proposal_boxes"][: model.proposals_per_image]
                boxes = torch.cat([target["gt_boxes"], proposals]).to(device)
                feats = model.window_features(model.backbone.normalize(images.tensor), [boxes])
                record["image_ids"].append(int(target["image_id"]))
                record["num_boxes"].append(len(boxes))
                record["num_gt"].append(len(target["gt_boxes"]))
                record["boxes"].append(boxes.cpu())
                record["gt_classes"].append(target["gt_classes"])
                record["features"].append(feats.cpu().half())
            for key in ("num_boxes", "num_gt"):
                record[key] = torch.tensor(record[key], dtype=torch.int64)
            for key in ("boxes", "gt_classes", "features"):
                record[key] = torch.cat(record[key])
            save_checkpoint(out_dir / name, record)
        norms = torch.cat([load_checkpoint(out_dir / n)["features"].float().norm(dim=1) for n in names])
        scale = feat_norm / max(float(norms.mean()), 1e-12) if len(norms) else 1.0
        write_text_atomic(index_file, json.dumps({"shards": names, "images": count, "scale": scale}, indent=2))
    return load_feature_cache(out_dir)


def load_feature_cache(out_dir: str | Path) -> FeatureCache:
    """The cache that :func:`cache_features` wrote (its index.json must exist)."""
    out_dir = Path(out_dir)
    index = json.loads((out_dir / "index.json").read_text())
    shards = [load_checkpoint(out_dir / n) for n in index["shards"]]

    def cat(key, empty):
        return torch.cat([s[key] for s in shards]) if shards else empty

    return FeatureCache(image_ids=[i for s in shards for i in s["image_ids"]],
                        num_boxes=cat("num_boxes", torch.zeros(0, dtype=torch.int64)),
                        num_gt=cat("num_gt", torch.zeros(0, dtype=torch.int64)),
                        boxes=cat("boxes", torch.zeros(0, 4)), gt_classes=cat("gt_classes", torch.zeros(0, dtype=torch.int64)),
                        features=cat("features", torch.zeros(0, 0, dtype=torch.float16)), scale=float(index["scale"]))


def _cached_stage(path: Path, settings: dict, fit):
    """The artefact at ``path`` if it exists with these settings, else ``fit()`` saved there."""
    if path.is_file():
        state = load_checkpoint(path)
        check_settings(path, json.loads(state["settings"]), settings)
        return state
    state = {**fit(), "settings": json.dumps(settings, sort_keys=True)}
    save_checkpoint(path, state)
    return state


def fit_svms(cache: FeatureCache, num_classes: int, path: str | Path, settings: dict, *, neg_iou: float,
             C: float, pos_weight: float, bias_mult: float, retrain_limit: int) -> dict:
    """Stage 3: per class, positives = its gt boxes, negatives = boxes with IoU < ``neg_iou`` with
    every gt box of the class, mined image by image. Returns (and saves) {"weight" (K, D),
    "bias" (K,), "log": per class (hard negatives added per retrain, final cache size) or None}.
    A class without gt boxes in the cache gets a zero SVM with bias -10 (it never fires)."""
    def fit():
        dim = cache.features.shape[1]
        weight, bias, log = torch.zeros(num_classes, dim), torch.full((num_classes,), -10.0), []
        for c in range(num_classes):
            pos = [f[:m][cls == c] for _, f, m, cls in cache.images()]
            pos = torch.cat(pos) if pos else torch.zeros(0, dim)
            if len(pos) == 0:
                log.append(None)
                continue
            chunks = (f[_negatives(b, m, cls, c, neg_iou)] for b, f, m, cls in cache.images())
            w, b, cached, mining = mine_hard_negatives(pos, chunks, C, pos_weight, bias_mult, retrain_limit)
            weight[c], bias[c] = w, b
            log.append({"added": mining.added, "cache": len(cached), "positives": len(pos), "seen": mining.seen})
        return {"weight": weight, "bias": bias, "log": json.dumps(log)}

    return _cached_stage(Path(path), settings, fit)


def _negatives(boxes, num_gt, gt_classes, c, neg_iou):
    """(R,) bool: the image's boxes whose IoU with every gt box of class ``c`` is below ``neg_iou``."""
    gt = boxes[:num_gt][gt_classes == c]
    if len(gt) == 0:
        return torch.ones(len(boxes), dtype=torch.bool)
    return pairwise_iou(gt, boxes).max(dim=0).values < neg_iou


def fit_regressors(cache: FeatureCache, num_classes: int, path: str | Path, settings: dict, *,
                   min_iou: float, lam: float) -> dict:
    """Stage 4: per class, ridge regression from the scaled features of the proposals with IoU >=
    ``min_iou`` with a gt box of that class to their targets. Returns (and saves) {"weight"
    (K, D, 4), "bias" (K, 4), "samples" (K,)}; a class without samples keeps zeros (no move)."""
    def fit():
        feats, targets, classes = [], [], []
        for boxes, f, m, cls in cache.images():
            idx, t, c = regression_samples(boxes[m:], boxes[:m], cls, min_iou)
            feats.append(f[m:][idx])
            targets.append(t)
            classes.append(c)
        dim = cache.features.shape[1]
        feats = torch.cat(feats) if feats else torch.zeros(0, dim)
        targets = torch.cat(targets) if targets else torch.zeros(0, 4)
        classes = torch.cat(classes) if classes else torch.zeros(0, dtype=torch.int64)
        weight, bias = torch.zeros(num_classes, dim, 4), torch.zeros(num_classes, 4)
        for c in range(num_classes):
            sel = classes == c
            if sel.any():
                weight[c], bias[c] = fit_ridge(feats[sel], targets[sel], lam)
        return {"weight": weight, "bias": bias,
                "samples": torch.bincount(classes, minlength=num_classes)}

    return _cached_stage(Path(path), settings, fit)

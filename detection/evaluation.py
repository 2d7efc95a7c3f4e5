"""COCO evaluation: predictions -> COCO results, and the official pycocotools metrics.

Shape shorthand: R predictions in one image, P keypoints per instance, H x W the image on disk.

The flow, for a model's predictions already mapped to the frame of the image on disk
(``detection.fields.rescale_predictions``)::

    results = predictions_to_coco_results(predictions, image_ids, meta.category_ids)
    metrics = evaluate_coco("val.json", results)          # or CocoEvaluator, batch by batch

COCO results are the official format: one dict per detection with ``image_id``,
``category_id`` (the COCO id, not the contiguous label), ``score``, ``bbox`` (xywh),
``segmentation`` (compressed RLE, ``counts`` a str) and ``keypoints`` (flat ``[x, y, score] * P``).

Metrics are in percent (0-100), the ``metrics.json`` format of ARCHITECTURE.md::

    {"bbox":      {"AP", "AP50", "AP75", "APs", "APm", "APl"},
     "segm":      {"AP", "AP50", "AP75", "APs", "APm", "APl"},
     "keypoints": {"AP", "AP50", "AP75", "APm", "APl"},
     "per_category": {"bbox": {name: AP}, "segm": {...}, "keypoints": {...}}}

Two backends compute the same numbers: ``pycocotools`` (the default and the reference) and
``faster_coco_eval`` (the optional ``faster-coco-eval`` package, a C++ COCOeval; extra ``fast-eval``),
chosen by ``backend`` / ``test.coco_backend``; the tests hold them to 0.01 AP of each other.

``per_category`` is an extra top-level key, kept apart from the iou-type keys so that
``metrics[iou_type]`` always holds exactly the standard numbers. A metric that pycocotools cannot
compute (no ground truth in that area range, a category with no ground truth) is NaN.
Only the iou types that were evaluated appear.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

IOU_TYPES = ("bbox", "segm", "keypoints")

# The pycocotools summary line behind each metric name (indices into COCOeval.stats).
METRIC_NAMES = {
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl"),
}

# The COCOeval implementations evaluate_coco can run (see the module docstring).
BACKENDS = ("pycocotools", "faster_coco_eval")

# The result field each iou type reads.
RESULT_FIELD = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}

# pycocotools' default OKS sigmas are those of the 17 COCO-person keypoints.
COCO_PERSON_SIGMAS = Params(iouType="keypoints").kpt_oks_sigmas
# For any other number of keypoints every keypoint gets the mean COCO-person sigma (about 0.067):
# a keypoint as hard to place as an average body joint.
UNIFORM_KPT_SIGMA = float(np.mean(COCO_PERSON_SIGMAS))


class EvaluationError(ValueError):
    """Results or ground truth that cannot be evaluated; the message names the file and value."""


# ---------------------------------------------------------------------------------------------
# predictions -> COCO results


def _numpy(x) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def predictions_to_coco_results(predictions: Sequence[dict], image_ids: Sequence[int],
                                category_ids: Sequence[int]) -> list[dict]:
    """Turn per-image predictions into COCO result dicts.

    predictions:  one dict per image with the fields of ``detection.fields``, ALREADY in the
                  frame of the image on disk:
                  pred_boxes (R, 4) xyxy, scores (R,), pred_classes (R,) contiguous labels,
                  optional pred_masks (R, H, W) uint8 0/1 or probabilities (binarised at >= 0.5),
                  optional pred_keypoints (R, P, 3) (x, y, score), x and y continuous (the
                  results get COCO's pixel indices, x - 0.5 and y - 0.5; see detection.data.coco).
    image_ids:    the COCO image id of each prediction dict.
    category_ids: label -> COCO category id (``DatasetMeta.category_ids``).

    Returns one dict per detection: image_id, category_id, score, bbox [x, y, w, h], and
    segmentation {"size": [H, W], "counts": str} / keypoints [x, y, s] * P when predicted.
    """
    if len(predictions) != len(image_ids):
        raise EvaluationError(f"got {len(predictions)} prediction dicts but {len(image_ids)} image ids")
    results: list[dict] = []
    for pred, image_id in zip(predictions, image_ids):
        image_id = int(image_id)
        boxes = _numpy(pred["pred_boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _numpy(pred["scores"]).astype(np.float64).reshape(-1)
        labels = _numpy(pred["pred_classes"]).astype(np.int64).reshape(-1)
        num = len(boxes)
        if len(scores) != num or len(labels) != num:
            raise EvaluationError(f"image {image_id}: {num} pred_boxes but {len(scores)} scores and "
                                  f"{len(labels)} pred_classes")
        if num == 0:
            continue
        bad = labels[(labels < 0) | (labels >= len(category_ids))]
        if len(bad):
            raise EvaluationError(f"image {image_id}: predicted label {int(bad[0])} is outside "
                                  f"0..{len(category_ids) - 1} (there are {len(category_ids)} categories)")
        xywh = boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]  # (R, 4) xyxy -> xywh

        rles = None
        if "pred_masks" in pred:
            masks = _numpy(pred["pred_masks"])
            if masks.shape[0] != num or masks.ndim != 3:
                raise EvaluationError(f"image {image_id}: pred_masks has shape {tuple(masks.shape)}, "
                                      f"expected ({num}, H, W)")
            # pycocotools encodes (H, W, R) Fortran-ordered uint8; in chunks of 16 masks, so that
            # the copies stay small next to the masks (100 at 800 x 1333 are 107 MB as uint8)
            rles = []
            for i in range(0, num, 16):
                binary = masks[i:i + 16] >= 0.5  # (16, H, W) bool, from probabilities or uint8 0/1 alike
                rles += mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
            for rle in rles:
                rle["counts"] = rle["counts"].decode("ascii")  # bytes -> str so it is JSON

        keypoints = None
        if "pred_keypoints" in pred:
            keypoints = _numpy(pred["pred_keypoints"]).astype(np.float64)
            if keypoints.ndim != 3 or keypoints.shape[0] != num or keypoints.shape[2] != 3:
                raise EvaluationError(f"image {image_id}: pred_keypoints has shape "
                                      f"{tuple(keypoints.shape)}, expected ({num}, P, 3)")
            keypoints[:, :, :2] -= 0.5  # continuous coordinates -> COCO's pixel indices
            keypoints = keypoints.reshape(num, -1)  # (R, P, 3) -> (R, 3P) as x, y, score, ...

        for i in range(num):
            res = {
                "image_id": image_id,
                "category_id": int(category_ids[labels[i]]),
                "score": float(scores[i]),
                "bbox": [round(float(v), 3) for v in xywh[i]],
            }
            if rles is not None:
                res["segmentation"] = rles[i]
            if keypoints is not None:
                res["keypoints"] = [round(float(v), 3) for v in keypoints[i]]
            results.append(res)
    return results


# ---------------------------------------------------------------------------------------------
# loading and checking


def load_coco_gt(coco_gt: COCO | str | Path, *, verbose: bool = False) -> COCO:
    """A pycocotools COCO from a COCO object (returned as is) or a path to the JSON."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    path = Path(coco_gt)
    dataset = _read_json(path, "ground truth")
    if not isinstance(dataset, dict) or "images" not in dataset or "annotations" not in dataset:
        raise EvaluationError(f"ground truth file {path}: not a COCO annotation file "
                              f"(needs 'images' and 'annotations')")
    dataset.setdefault("categories", [])
    gt = COCO()
    gt.dataset = dataset
    with _quiet(not verbose):
        gt.createIndex()
    return gt


def load_results(results: list[dict] | str | Path) -> tuple[list[dict], str]:
    """(results list, a name for messages) from a list or a path to a results JSON."""
    if not isinstance(results, (str, Path)):
        return list(results), "the results"
    path = Path(results)
    data = _read_json(path, "results")
    if not isinstance(data, list):
        raise EvaluationError(f"results file {path}: expected a JSON list of detections, "
                              f"got a {type(data).__name__}")
    return data, f"results file {path}"


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise EvaluationError(f"{what} file {path} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluationError(f"{what} file {path} is not valid JSON ({e})") from None


def check_results(coco_gt: COCO, results: list[dict], source: str = "the results") -> None:
    """Raise :class:`EvaluationError` on the first result that pycocotools would choke on."""
    image_ids = set(coco_gt.getImgIds())
    category_ids = set(coco_gt.getCatIds())
    for i, res in enumerate(results):
        if not isinstance(res, dict):
            raise EvaluationError(f"{source}: detection #{i} is a {type(res).__name__}, not a dict")
        for key in ("image_id", "category_id", "score"):
            if key not in res:
                raise EvaluationError(f"{source}: detection #{i} has no '{key}'")
        if res["image_id"] not in image_ids:
            raise EvaluationError(f"{source}: detection #{i} has image_id {res['image_id']}, "
                                  f"which is not in the ground truth")
        if res["category_id"] not in category_ids:
            raise EvaluationError(f"{source}: detection #{i} (image_id {res['image_id']}) has "
                                  f"category_id {res['category_id']}, which is not in the ground "
                                  f"truth categories {sorted(category_ids)}")
        if not _finite_number(res["score"]):
            raise EvaluationError(f"{source}: detection #{i} (image_id {res['image_id']}) has score "
                                  f"{res['score']!r}, expected a finite number")
        if "bbox" in res and (not isinstance(res["bbox"], list) or len(res["bbox"]) != 4
                              or not all(_finite_number(v) for v in res["bbox"])):
            raise EvaluationError(f"{source}: detection #{i} (image_id {res['image_id']}) has bbox "
                                  f"{res['bbox']!r}, expected [x, y, w, h] of finite numbers")
        if "segmentation" in res:
            _check_result_segmentation(coco_gt, res, i, source)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_result_segmentation(coco_gt: COCO, res: dict, i: int, source: str) -> None:
    """A result's segmentation must be an RLE of the image's size or polygons of >= 3 points."""
    img = coco_gt.imgs[res["image_id"]]
    h, w, segm = img["height"], img["width"], res["segmentation"]
    where = f"{source}: detection #{i} (image_id {res['image_id']})"
    if isinstance(segm, dict) and "size" in segm and "counts" in segm:
        if list(segm["size"]) != [h, w]:
            raise EvaluationError(f"{where} has an RLE of size {segm['size']!r} but the image is {[h, w]}")
    elif isinstance(segm, list):
        if not segm:
            raise EvaluationError(f"{where} has an empty segmentation (no polygon)")
        for poly in segm:
            if (not isinstance(poly, list) or len(poly) % 2 or len(poly) < 6
                    or not all(_finite_number(v) for v in poly)):
                raise EvaluationError(f"{where} has a polygon that is not an even-length list of at least "
                                      f"6 finite coordinates: {str(poly)[:80]}")
    else:
        raise EvaluationError(f"{where} has segmentation of type {type(segm).__name__}, expected an RLE "
                              f"dict with 'size' and 'counts' or a polygon list")


def polygons_as_rle(coco_gt: COCO, results: list[dict]) -> list[dict]:
    """Results whose polygon segmentations are compressed RLEs at the ground-truth image size
    (pycocotools' loadRes only takes RLEs for segm); the others are returned as they are."""
    out = []
    for res in results:
        segm = res.get("segmentation")
        if isinstance(segm, list):
            img = coco_gt.imgs[res["image_id"]]
            rle = mask_util.merge(mask_util.frPyObjects(segm, img["height"], img["width"]))
            res = {**res, "segmentation": {"size": [int(v) for v in rle["size"]],
                                           "counts": rle["counts"].decode("ascii")}}
        out.append(res)
    return out


def _keypoint_categories(coco_gt: COCO) -> dict[int, int]:
    """COCO category id -> number of keypoints, for the categories that have keypoints."""
    return {c["id"]: len(c["keypoints"]) for c in coco_gt.dataset.get("categories", [])
            if c.get("keypoints")}


def _gt_has_masks(coco_gt: COCO) -> bool:
    return any("segmentation" in a for a in coco_gt.dataset["annotations"])


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate_coco(coco_gt: COCO | str | Path, results: list[dict] | str | Path,
                  iou_types: Sequence[str] = IOU_TYPES, *, kpt_oks_sigmas=None,
                  image_ids: Sequence[int] | None = None, verbose: bool = True,
                  backend: str = "pycocotools") -> dict:
    """Run the official COCO evaluation for each iou type.

    coco_gt:        pycocotools COCO or the path of the ground-truth JSON.
    results:        list of COCO result dicts or the path of a results JSON.
    iou_types:      any of "bbox", "segm", "keypoints". "segm" is skipped (with a one-line note)
                    when no result has a segmentation; "keypoints" when the ground truth has no
                    keypoint categories or no result has keypoints. "bbox" needs a bbox in every
                    result; partly missing fields are errors.
    kpt_oks_sigmas: per-keypoint OKS sigmas. Default: pycocotools' COCO-person sigmas for 17
                    keypoints, otherwise ``UNIFORM_KPT_SIGMA`` (the mean COCO-person sigma,
                    about 0.067) for every keypoint.
    image_ids:      evaluate only these images (default: every ground-truth image).
    verbose:        print pycocotools' summaries and a per-category AP table.
    backend:        "pycocotools" or "faster_coco_eval" (same metrics, faster on large sets).

    Returns metrics in percent (see the module docstring), with ``per_category``. No detections at
    all gives zeros for every iou type the ground truth supports, with a warning.
    """
    cocoeval = cocoeval_class(backend)
    gt = load_coco_gt(coco_gt)
    dets, source = load_results(results)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise EvaluationError(f"unknown iou type {t!r}; choose from {', '.join(IOU_TYPES)}")
    check_results(gt, dets, source)
    dets = polygons_as_rle(gt, dets)
    kpt_cats = _keypoint_categories(gt)

    metrics: dict[str, Any] = {"per_category": {}}
    if not dets:
        warnings.warn(f"{source}: no detections; every metric is 0", stacklevel=2)
        for t in iou_types:
            if (t == "keypoints" and not kpt_cats) or (t == "segm" and not _gt_has_masks(gt)):
                continue
            metrics[t] = {name: 0.0 for name in METRIC_NAMES[t]}
            cats = kpt_cats if t == "keypoints" else gt.getCatIds()
            metrics["per_category"][t] = {c["name"]: 0.0 for c in gt.loadCats(list(cats))}
        return metrics

    # every iou type is checked before the first is evaluated: a bad field is found before any table
    plan = []
    for iou_type in iou_types:
        field = RESULT_FIELD[iou_type]
        if iou_type == "keypoints" and not kpt_cats:
            _note(verbose, "keypoints: skipped, the ground truth has no keypoint categories")
            continue
        if iou_type != "bbox" and not any(field in d for d in dets):
            _note(verbose, f"{iou_type}: skipped, no detection in {source} has '{field}'")
            continue
        if iou_type == "segm" and not _gt_has_masks(gt):
            raise EvaluationError("segm evaluation needs ground-truth segmentations, and the "
                                  "ground truth has none")
        # keypoints are evaluated on the keypoint categories only (the others have no keypoints)
        dets_t = [d for d in dets if d["category_id"] in kpt_cats] if iou_type == "keypoints" else dets
        for d in dets_t:
            if field not in d:
                raise EvaluationError(f"{source}: detection (image_id {d['image_id']}, category_id "
                                      f"{d['category_id']}) has no '{field}', which {iou_type} "
                                      f"evaluation needs")
        if iou_type == "keypoints" and dets_t:
            _check_keypoints(gt, dets_t, kpt_cats, source)
        plan.append((iou_type, dets_t))

    for iou_type, dets_t in plan:
        cat_ids = sorted(kpt_cats) if iou_type == "keypoints" else gt.getCatIds()
        if not dets_t:
            _note(verbose, f"{iou_type}: no detections of categories {cat_ids}; every metric is 0")
            metrics[iou_type] = {name: 0.0 for name in METRIC_NAMES[iou_type]}
            metrics["per_category"][iou_type] = {c["name"]: 0.0 for c in gt.loadCats(cat_ids)}
            continue
        stats, per_cat = _run_cocoeval(gt, dets_t, iou_type, source, kpt_cats, kpt_oks_sigmas,
                                       image_ids, verbose, cocoeval)
        metrics[iou_type] = stats
        metrics["per_category"][iou_type] = per_cat
    return metrics


def _check_keypoints(gt: COCO, dets: list[dict], kpt_cats: dict[int, int], source: str) -> None:
    """One keypoint count for every keypoint category, every result and ground truth with it."""
    num_kpts = set(kpt_cats.values())
    if len(num_kpts) > 1:
        raise EvaluationError(f"keypoint categories have different keypoint counts "
                              f"{sorted(num_kpts)}; pycocotools evaluates one count at a time")
    (p,) = num_kpts
    for d in dets:
        if len(d["keypoints"]) != 3 * p:
            raise EvaluationError(f"{source}: detection (image_id {d['image_id']}) has "
                                  f"{len(d['keypoints'])} keypoint values, expected 3 * {p}")
    for ann in gt.loadAnns(gt.getAnnIds(catIds=list(kpt_cats))):
        if "keypoints" not in ann or "num_keypoints" not in ann:
            raise EvaluationError(f"ground-truth annotation {ann.get('id')} (image_id "
                                  f"{ann.get('image_id')}) of a keypoint category has no "
                                  f"'keypoints'/'num_keypoints'")
def cocoeval_class(backend: str):
    """The COCOeval class of ``backend`` (see ``BACKENDS``); a missing package is one sentence."""
    if backend == "pycocotools":
        return COCOeval
    if backend != "faster_coco_eval":
        raise EvaluationError(f"coco backend {backend!r} is not one of {', '.join(BACKENDS)}")
    try:
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        raise EvaluationError("coco backend 'faster_coco_eval' needs the faster-coco-eval package: "
                              "pip install faster-coco-eval (or the toolkit's fast-eval extra)") from None
    return COCOeval_faster


def _run_cocoeval(gt: COCO, dets: list[dict], iou_type: str, source: str,
                  kpt_cats: dict[int, int], kpt_oks_sigmas, image_ids, verbose: bool, cocoeval=COCOeval):
    """One COCOeval run -> ({metric: percent}, {category name: AP percent})."""
    dets = copy.deepcopy(dets)  # loadRes writes into the dicts
    if iou_type == "segm":
        # Without a bbox, loadRes takes each detection's area from its mask (not its box), so
        # small/medium/large mean the same for detections and ground truth.
        for d in dets:
            d.pop("bbox", None)
    if iou_type == "keypoints":
        for d in dets:
            d.pop("segmentation", None)  # keep loadRes on the bbox path: area from the box
        (p,) = set(kpt_cats.values())  # one count: checked by _check_keypoints

    with _quiet(not verbose):
        if cocoeval is not COCOeval:  # faster-coco-eval wants its own COCO (same dataset dict)
            from faster_coco_eval import COCO as FasterCOCO

            gt = FasterCOCO(gt.dataset)
        dt = gt.loadRes(dets)
        ev = cocoeval(gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        if iou_type == "keypoints":
            ev.params.catIds = sorted(kpt_cats)
            if kpt_oks_sigmas is not None:
                sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
            elif p == len(COCO_PERSON_SIGMAS):
                sigmas = COCO_PERSON_SIGMAS
            else:
                sigmas = np.full(p, UNIFORM_KPT_SIGMA)
            if sigmas.shape != (p,):
                raise EvaluationError(f"kpt_oks_sigmas has {sigmas.size} values, the ground truth "
                                      f"has {p} keypoints")
            ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()

    stats = {name: _percent(v) for name, v in zip(METRIC_NAMES[iou_type], ev.stats)}
    per_cat = _per_category_ap(gt, ev)
    if verbose:
        print(format_per_category(per_cat, iou_type))
    return stats, per_cat


def _per_category_ap(gt: COCO, ev: COCOeval) -> dict[str, float]:
    """AP (percent, IoU 0.50:0.95, all areas, most detections) of each evaluated category."""
    precision = ev.eval["precision"]  # (T iou thresholds, R recalls, K categories, A areas, M maxDets)
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]  # -1 marks "no ground truth"
        out[gt.cats[int(cat_id)]["name"]] = float(np.mean(p) * 100) if p.size else math.nan
    return out


def format_per_category(per_cat: dict[str, float], iou_type: str) -> str:
    """A two-column table: category, AP (%)."""
    width = max([len("category")] + [len(n) for n in per_cat])
    lines = [f"Per-category {iou_type} AP:", f"  {'category':<{width}}  AP (%)"]
    lines += [f"  {name:<{width}}  {ap:6.2f}" for name, ap in per_cat.items()]
    return "\n".join(lines)


def _percent(v: float) -> float:
    """pycocotools' fraction (-1 for "undefined") -> percent (NaN for undefined)."""
    return float(v) * 100 if v >= 0 else math.nan


def _note(verbose: bool, text: str) -> None:
    if verbose:
        print(text)


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence pycocotools' prints."""
    if enabled:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    else:
        yield


def metrics_to_json(metrics: dict) -> dict:
    """The metrics with NaN replaced by None, so the JSON is standard (``null``)."""
    if isinstance(metrics, dict):
        return {k: metrics_to_json(v) for k, v in metrics.items()}
    if isinstance(metrics, float) and math.isnan(metrics):
        return None
    return metrics


# ---------------------------------------------------------------------------------------------
# accumulate over a data loader


class CocoEvaluator:
    """Collect predictions image by image, then evaluate them against the ground truth.

        evaluator = CocoEvaluator(val_json, meta.category_ids, ("bbox", "segm"))
        for images, targets in loader:
            preds = ...  # mapped to the frame on disk with rescale_predictions
            evaluator.process([t["image_id"] for t in targets], preds)
        metrics = evaluator.evaluate()
        json.dump(evaluator.results, open("results.json", "w"))

    Only the processed images are evaluated (so a partial pass over the data is fair).
    """

    def __init__(self, coco_gt: COCO | str | Path, category_ids: Sequence[int],
                 iou_types: Sequence[str] = IOU_TYPES, *, kpt_oks_sigmas=None, verbose: bool = True,
                 backend: str = "pycocotools"):
        cocoeval_class(backend)  # a bad or missing backend fails before any inference
        self.backend = backend
        self.coco_gt = load_coco_gt(coco_gt)
        self.category_ids = list(category_ids)
        self.iou_types = tuple(iou_types)
        self.kpt_oks_sigmas = kpt_oks_sigmas
        self.verbose = verbose
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def reset(self) -> None:
        self.results = []
        self.image_ids = []

    def process(self, image_ids: Sequence[int], predictions: Sequence[dict]) -> None:
        """Add one batch: ``predictions[i]`` (frame on disk) belongs to ``image_ids[i]``."""
        self.results.extend(predictions_to_coco_results(predictions, image_ids, self.category_ids))
        self.image_ids.extend(int(i) for i in image_ids)

    def evaluate(self) -> dict:
        """Metrics in percent as :func:`evaluate_coco` returns them."""
        image_ids = sorted(set(self.image_ids)) if self.image_ids else None
        return evaluate_coco(self.coco_gt, self.results, self.iou_types,
                             kpt_oks_sigmas=self.kpt_oks_sigmas, image_ids=image_ids,
                             verbose=self.verbose, backend=self.backend)

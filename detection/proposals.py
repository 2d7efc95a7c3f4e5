"""Precomputed region proposals on disk (selective search or a trained RPN, for R-CNN and Fast R-CNN).

Shape shorthand: R proposals of one image.

The file is JSON::

    {"<COCO image id>": {"boxes": [[x0, y0, x1, y1], ...], "scores": [...]}, ...,
     "_header": {...}}

boxes in continuous xyxy pixels of the image *on disk*, best first; ``scores`` (optional, one
per box) decrease with the rank. Keys starting with ``_`` are reserved: ``_header`` (written by
``tools/compute_proposals.py``) records what the file was made from -- ``method``, ``mode``,
``image_ids`` and ``files`` (image id -> ``[file name, size in bytes, mtime in ns]``) -- so that a
file made for another image set, another mode or other files is refused (:func:`check_header`).
Files made elsewhere without a header are accepted as they are.

A file whose name ends in ``.npz`` holds the same in binary (for large sets; measured on 200
images x 2000 boxes: 8.0 MB read in 0.02 s against 13.6 MB of JSON read in 0.8 s): arrays ``image_ids`` (N,), ``counts`` (N,) boxes per image, ``boxes``
(sum of counts, 4) float32 and ``scores`` (sum of counts,) float32 in image order, and
``header``, the header as a JSON string ("null" for none).

Deliberately free of torch: ``tools/compute_proposals.py`` and its worker processes import
this module and start fast.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

HEADER_KEY = "_header"


class ProposalError(ValueError):
    """A proposal file that is missing, malformed, or made for other images / another mode."""


def save_proposals(path: str | Path, proposals: Mapping[int, Mapping[str, Any]],
                   header: Mapping[str, Any] | None = None) -> None:
    """Write ``{image id: {"boxes": (R, 4), "scores": (R,)}}`` (numpy or lists) as the JSON above
    (``.npz``: the binary form). Boxes are rounded to 0.01 px and scores to 6 digits in JSON; the
    write is atomic (temp file + rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        _save_npz(path, proposals, header)
        return
    out: dict[str, Any] = {}
    for image_id, p in proposals.items():
        boxes = np.asarray(p["boxes"], np.float64).reshape(-1, 4)
        entry: dict[str, Any] = {"boxes": np.round(boxes, 2).tolist()}
        if p.get("scores") is not None:
            entry["scores"] = np.round(np.asarray(p["scores"], np.float64), 6).tolist()
        out[str(int(image_id))] = entry
    if header is not None:
        out[HEADER_KEY] = dict(header)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, separators=(",", ":")))
    os.replace(tmp, path)


def _save_npz(path: Path, proposals: Mapping[int, Mapping[str, Any]], header: Mapping[str, Any] | None) -> None:
    ids = [int(i) for i in proposals]
    boxes = [np.asarray(proposals[i]["boxes"], np.float32).reshape(-1, 4) for i in proposals]
    scores = [np.asarray(p["scores"], np.float32).reshape(-1) if p.get("scores") is not None
              else 1.0 / np.arange(1, len(b) + 1, dtype=np.float32) for p, b in zip(proposals.values(), boxes)]
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, image_ids=np.array(ids, np.int64), counts=np.array([len(b) for b in boxes], np.int64),
             boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
             scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
             header=np.array(json.dumps(None if header is None else dict(header))))
    os.replace(tmp, path)


def read_header(path: str | Path) -> dict | None:
    """The ``_header`` of a proposal file, or None when it has none."""
    return _read_json(Path(path)).get(HEADER_KEY)


def load_proposals(path: str | Path, image_ids: Iterable[int] | None = None,
                   max_proposals: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Read a proposal file -> ``{image id: {"boxes": (R, 4) float32, "scores": (R,) float32}}``.

    ``image_ids``: ids that must all be present (a missing one is a :class:`ProposalError` naming
    it); only these are returned. ``max_proposals`` > 0 keeps the first (best) that many per image.
    Missing scores become the rank order (1, 1/2, 1/3, ...). Every box is checked: finite, 4
    numbers, x1 >= x0 and y1 >= y0 (the error names the file, the image id and the box).
    """
    path = Path(path)
    data = _read_json(path)
    wanted = None if image_ids is None else [int(i) for i in image_ids]
    keys = {k: v for k, v in data.items() if not k.startswith("_")}
    if wanted is not None:
        missing = [i for i in wanted if str(i) not in keys]
        if missing:
            raise ProposalError(f"proposal file {path} has no entry for image id {missing[0]} "
                                f"({len(missing)} of the {len(wanted)} images are missing); "
                                "was it made for another image set?")
        keys = {str(i): keys[str(i)] for i in wanted}
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, entry in keys.items():
        try:
            image_id = int(key)
        except ValueError:
            raise ProposalError(f"proposal file {path}: key {key!r} is not a COCO image id") from None
        out[image_id] = _parse_entry(entry, path, image_id, max_proposals)
    return out


def _read_json(path: Path) -> dict:
    """The file as the JSON mapping above (an ``.npz`` file converted to it)."""
    if not path.is_file():
        raise ProposalError(f"proposal file {path} does not exist (make it with tools/compute_proposals.py)")
    if path.suffix == ".npz":
        return _read_npz(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProposalError(f"proposal file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ProposalError(f"proposal file {path}: the top level must be an object "
                            f"{{\"<image id>\": {{\"boxes\": ..., \"scores\": ...}}}}, got {type(data).__name__}")
    return data


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, counts, boxes, scores = z["image_ids"], z["counts"], z["boxes"], z["scores"]
            header = json.loads(str(z["header"]))
    except (OSError, KeyError, ValueError) as e:
        raise ProposalError(f"proposal file {path} is not a proposal .npz (image_ids, counts, boxes, scores, "
                            f"header): {e}") from None
    if counts.sum() != len(boxes) or len(scores) != len(boxes) or len(ids) != len(counts):
        raise ProposalError(f"proposal file {path}: counts add up to {counts.sum()} but it holds {len(boxes)} boxes "
                            f"and {len(scores)} scores for {len(ids)} images")
    ends = np.cumsum(counts)
    out: dict[str, Any] = {str(int(i)): {"boxes": boxes[e - c:e], "scores": scores[e - c:e]}
                           for i, c, e in zip(ids, counts, ends)}
    if header is not None:
        out[HEADER_KEY] = header
    return out


def _parse_entry(entry: Any, path: Path, image_id: int, max_proposals: int) -> dict[str, np.ndarray]:
    where = f"proposal file {path}, image id {image_id}"
    if not isinstance(entry, dict) or "boxes" not in entry:
        raise ProposalError(f"{where}: the entry must be an object with 'boxes' (and 'scores'), got {entry!r:.80}")
    try:
        boxes = np.asarray(entry["boxes"], np.float32)
    except (TypeError, ValueError):
        raise ProposalError(f"{where}: 'boxes' is not a list of [x0, y0, x1, y1]") from None
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ProposalError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1], got shape {boxes.shape}")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        raise ProposalError(f"{where}: box {boxes[bad][0].tolist()} is not finite or has x1 < x0 or y1 < y0")
    if entry.get("scores") is None:
        scores = 1.0 / np.arange(1, len(boxes) + 1, dtype=np.float32)
    else:
        scores = np.asarray(entry["scores"], np.float32).reshape(-1)
        if len(scores) != len(boxes):
            raise ProposalError(f"{where}: {len(boxes)} boxes but {len(scores)} scores")
    if max_proposals > 0:
        boxes, scores = boxes[:max_proposals], scores[:max_proposals]
    return {"boxes": boxes, "scores": scores}


# ---------------------------------------------------------------------------------------------
# what a file was made from


def file_stamps(images: Mapping[int, str | Path]) -> dict[str, list]:
    """``{image id: [file name, size in bytes, mtime in ns]}`` of the image files (for the header)."""
    out = {}
    for image_id, p in images.items():
        st = Path(p).stat()
        out[str(int(image_id))] = [Path(p).name, int(st.st_size), int(st.st_mtime_ns)]
    return out


def make_header(mode: str, images: Mapping[int, str | Path], method: str = "selective_search",
                **extra: Any) -> dict[str, Any]:
    """The ``_header`` for proposals of ``images`` (image id -> path) made by ``method``
    (selective_search or rpn) in ``mode``."""
    return {"method": method, "mode": mode, "image_ids": sorted(int(i) for i in images),
            "files": file_stamps(images), **extra}


def check_header(header: Mapping[str, Any] | None, path: str | Path, images: Mapping[int, str | Path],
                 mode: str | None = None, exact_image_set: bool = False,
                 params: Mapping[str, Any] | None = None) -> None:
    """Refuse (:class:`ProposalError`, saying which) a file made for another mode, another image
    set or other image files than ``images`` (image id -> path on disk). No header: accepted.

    ``exact_image_set``: the file must be for exactly these images (a cache); otherwise it may
    cover more (a training set that dropped empty images reads the file of the whole split).
    ``params``: other settings the file must have been made with (``max_proposals``, ``seed`` ...).
    """
    if header is None:
        return
    if mode is not None and header.get("mode") != mode:
        raise ProposalError(f"proposal file {path} was made in mode {header.get('mode')!r}, not {mode!r}; "
                            "delete it or choose another --out")
    for key, value in (params or {}).items():
        if key in header and header[key] != value:
            raise ProposalError(f"proposal file {path} was made with {key}={header[key]!r}, not {value!r}; "
                                "delete it or choose another --out")
    made_for = {int(i) for i in header.get("image_ids", [])}
    wanted = {int(i) for i in images}
    missing, extra = sorted(wanted - made_for), sorted(made_for - wanted)
    if missing or (exact_image_set and extra):
        what = (f"lacks image id {missing[0]} ({len(missing)} missing)" if missing
                else f"has image id {extra[0]} that is not among these images ({len(extra)} extra)")
        raise ProposalError(f"proposal file {path} was made for another image set: it {what}")
    stamps = header.get("files") or {}
    now = file_stamps(images)
    for key, (name, size, mtime) in now.items():
        was = stamps.get(key)
        if was is not None and (was[0] != name or int(was[1]) != size or int(was[2]) != mtime):
            raise ProposalError(f"proposal file {path} was made from other files: image id {key} was "
                                f"{was[0]} ({was[1]} bytes), now {name} ({size} bytes, modified since)")


# ---------------------------------------------------------------------------------------------
# how good proposals are


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU (0 where a box has no area)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def ground_truth(coco: Mapping[str, Any], image_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """image id -> ((M, 4) xyxy boxes, (M,) category ids) of a COCO dict's annotations that are not
    crowd regions, for each of ``image_ids`` (an image without any gets empty arrays)."""
    boxes: dict[int, list] = {int(i): [] for i in image_ids}
    classes: dict[int, list] = {i: [] for i in boxes}
    for a in coco.get("annotations", []):
        if a.get("iscrowd", 0) or int(a["image_id"]) not in boxes:
            continue
        x, y, w, h = a["bbox"]
        boxes[int(a["image_id"])].append([x, y, x + w, y + h])
        classes[int(a["image_id"])].append(int(a["category_id"]))
    return {i: (np.asarray(boxes[i], np.float64).reshape(-1, 4), np.asarray(classes[i], np.int64)) for i in boxes}


def proposal_recall(proposals: Mapping[int, np.ndarray], gt: Mapping[int, tuple[np.ndarray, np.ndarray]],
                    thresholds: Sequence[float] = (0.5, 0.7)) -> dict[str, float]:
    """Recall of ground-truth boxes and MABO of proposals.

    proposals: image id -> (R, 4) boxes; gt: image id -> ((M, 4) xyxy boxes, (M,) class ids), both
    in the pixels on disk. Returns ``{"recall@0.5": %, "recall@0.7": %, "MABO": %, "ABO": %,
    "boxes_per_image", "num_gt", "num_images"}``: recall = fraction of gt boxes whose best
    proposal has IoU >= the threshold; ABO = mean best IoU over all gt boxes; MABO = mean over
    classes of each class's ABO (Uijlings et al.). Images without an entry count as no proposals.
    """
    best, classes = [], []
    for image_id, (gt_boxes, gt_classes) in gt.items():
        if len(gt_boxes) == 0:
            continue
        boxes = proposals.get(image_id, np.zeros((0, 4)))
        iou = box_iou(gt_boxes, boxes)
        best.append(iou.max(axis=1) if iou.shape[1] else np.zeros(len(gt_boxes)))
        classes.append(np.asarray(gt_classes))
    best_all = np.concatenate(best) if best else np.zeros(0)
    cls_all = np.concatenate(classes) if classes else np.zeros(0)
    out: dict[str, float] = {}
    for t in thresholds:
        out[f"recall@{t:g}"] = 100.0 * float((best_all >= t).mean()) if len(best_all) else float("nan")
    out["ABO"] = 100.0 * float(best_all.mean()) if len(best_all) else float("nan")
    per_class = [best_all[cls_all == c].mean() for c in np.unique(cls_all)]
    out["MABO"] = 100.0 * float(np.mean(per_class)) if per_class else float("nan")
    counts = [len(proposals.get(i, ())) for i in gt]
    out["boxes_per_image"] = float(np.mean(counts)) if counts else 0.0
    out["num_gt"] = int(len(best_all))
    out["num_images"] = len(counts)
    return out

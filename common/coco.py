"""COCO annotation files: one reader and one set of checks for detection and segmentation.

What is checked here is what the JSON alone can tell (no image is opened; images are checked by
``common.dataset_check``): the top-level layout, required keys, unique ids, that every
annotation points at a known image and category, that ``bbox`` is 4 finite numbers, that a
``segmentation`` is a list of even-length polygons or an RLE whose size is the image's and whose
counts add up to it, and that keypoint lists have 3 values per keypoint of their category.

:func:`coco_problems` lists *every* problem (one :class:`Problem` each, naming the file, the
image id and the value); :func:`load_coco_json` raises the first as a :class:`DatasetError` (saying
how many more there are), unless the images concerned are skipped.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pycocotools.coco import COCO


class DatasetError(ValueError):
    """Bad dataset input; the message is one line naming the file, the image id and the value.

    Raised inside a DataLoader worker, torch re-raises ``DatasetError("Caught DatasetError in
    DataLoader worker process 1.\\nOriginal Traceback ...")`` in the main process; that message is
    cut back here to the original sentence, so every tool prints one line with any number of
    workers.
    """

    def __init__(self, message: Any = ""):
        if isinstance(message, str) and message.startswith("Caught ") and "\nOriginal Traceback" in message:
            last = message.rstrip().rsplit("\n", 1)[-1]  # "package.module.DatasetError: <sentence>"
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset. ``image_id`` is None when it concerns the whole file."""

    file: str  # the annotation file
    image_id: Any  # the image it concerns (skipping that image removes the problem), or None
    message: str  # one sentence naming the file, the image / annotation id and the value

    def __str__(self) -> str:
        return self.message


def read_json(path: str | Path, what: str = "annotation file") -> Any:
    """The parsed JSON at ``path``; DatasetError naming the file when it is missing or not JSON."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{what} {path} is a folder, not a JSON file")
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e})") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def rle_string_counts(text: str | bytes) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string (pycocotools' rleFrString), None if malformed.

    pycocotools decodes a corrupt string into a wrong mask without complaint; this lets us check.
    Each count is a little-endian base-32 varint in chars '0'.. ('0' + 63); from the third count
    on, the value is a difference to the count two places earlier.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                return None
            c = ord(text[pos]) - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift  # sign extension
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def segmentation_problem(segm: Any, h: int, w: int) -> str | None:
    """What is wrong with a non-empty COCO ``segmentation`` for an h x w image (None: nothing).

    Polygons must be lists of an even number of finite coordinates (polygons with fewer than 3
    points are not an error here: readers drop them, see :func:`usable_polygons`); an RLE dict
    must have ``size == [h, w]`` and counts (a list, or a compressed string) summing to h * w.
    """
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, (list, tuple)) or len(poly) % 2 or not all(_is_number(v) for v in poly):
                return f"has a polygon that is not an even-length list of coordinates: {str(poly)[:80]}"
        return None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if not isinstance(segm["size"], (list, tuple)) or list(segm["size"]) != [h, w]:
            return f"has an RLE of size {segm['size']!r} but the image is {[h, w]}"
        raw = segm["counts"]
        if isinstance(raw, list):
            counts = raw if all(isinstance(c, int) for c in raw) else None
        elif isinstance(raw, (str, bytes)):
            counts = rle_string_counts(raw)
        else:
            counts = None
        if counts is None or any(c < 0 for c in counts) or sum(counts) != h * w:
            shown = "unparsable" if counts is None else f"summing to {sum(counts)}"
            kind = "uncompressed" if isinstance(raw, list) else "compressed"
            return f"has {kind} RLE counts {shown}; expected h * w = {h * w}"
        return None
    return f"has a segmentation that is neither polygons nor RLE: {str(segm)[:80]}"


def usable_polygons(segm: list) -> tuple[list[list[float]], int]:
    """(polygons with at least 3 points, number dropped): pycocotools would read a 2-point
    polygon (4 numbers) as a box, and fewer points enclose nothing."""
    keep = [[float(v) for v in p] for p in segm if len(p) >= 6]
    return keep, len(segm) - len(keep)


def coco_problems(data: Any, source: str) -> list[Problem]:
    """Every problem of a parsed COCO detection dict (see the module docstring); [] if none.

    A broken layout (not an object, a missing or non-list top-level key, an entry that is not
    an object or lacks a required key) is reported alone: nothing else can be checked then.
    A missing ``annotations`` key is allowed (test-set files have none).
    """
    if not isinstance(data, dict):
        return [Problem(source, None, f"{source}: the top level must be a JSON object with 'images', "
                                      f"'annotations' and 'categories', got {type(data).__name__}")]
    for key in ("images", "categories", "annotations"):
        if key == "annotations" and key not in data:
            continue
        if key not in data:
            return [Problem(source, None, f"{source}: not a COCO file: missing key '{key}'")]
        if not isinstance(data[key], list):
            return [Problem(source, None, f"{source}: '{key}' must be a list, got {type(data[key]).__name__}")]
    problems: list[Problem] = []
    for kind, items, keys in (("image", data["images"], ("id", "file_name", "width", "height")),
                              ("category", data["categories"], ("id", "name")),
                              ("annotation", data.get("annotations", []), ("id", "image_id", "category_id", "bbox"))):
        seen = set()
        for item in items:
            if not isinstance(item, dict):
                return [Problem(source, None, f"{source}: every {kind} must be an object, got {item!r}")]
            for k in keys:
                if k not in item:
                    image_id = item.get("image_id") if kind == "annotation" else item.get("id")
                    if kind == "category" or image_id is None:
                        return [Problem(source, None, f"{source}: {kind} {item.get('id', '<no id>')} has no '{k}'")]
                    problems.append(Problem(source, image_id, f"{source}: {kind} {item.get('id', '<no id>')} "
                                                              f"has no '{k}'"))
            if item.get("id") in seen:
                image_id = item.get("image_id") if kind == "annotation" else None
                problems.append(Problem(source, image_id, f"{source}: {kind} id {item['id']} appears twice"))
            seen.add(item.get("id"))
    images = {im["id"]: im for im in data["images"]}
    sized = set()  # images with a usable width and height
    for im in data["images"]:
        if "width" not in im or "height" not in im:
            continue  # already reported
        if _is_number(im["width"]) and _is_number(im["height"]) and im["width"] >= 1 and im["height"] >= 1:
            sized.add(im["id"])
        else:
            problems.append(Problem(source, im["id"], f"{source}: image {im['id']} ({im.get('file_name')}) has "
                                                      f"width {im['width']!r} and height {im['height']!r}; "
                                                      f"expected positive numbers"))
    cats = {c["id"]: c for c in data["categories"]}
    for ann in data.get("annotations", []):
        if not all(k in ann for k in ("id", "image_id", "category_id", "bbox")):
            continue  # already reported
        image_id = ann["image_id"]
        if image_id not in images:
            problems.append(Problem(source, image_id, f"{source}: annotation {ann['id']} points at unknown "
                                                      f"image_id {image_id!r}"))
            continue
        where = f"{source}: annotation {ann['id']} (image {image_id})"
        if ann["category_id"] not in cats:
            problems.append(Problem(source, image_id, f"{where} has unknown category_id "
                                                      f"{ann['category_id']!r} (known: {sorted(cats)})"))
            continue
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            problems.append(Problem(source, image_id, f"{where} has a bbox that is not 4 finite numbers: {bbox!r}"))
        segm = ann.get("segmentation")
        if segm and image_id in sized:
            im = images[image_id]
            wrong = segmentation_problem(segm, im["height"], im["width"])
            if wrong:
                problems.append(Problem(source, image_id, f"{where} {wrong}"))
        kp_names = cats[ann["category_id"]].get("keypoints")
        raw = ann.get("keypoints")
        if kp_names and raw is not None:
            if not isinstance(raw, list) or len(raw) != 3 * len(kp_names):
                n = len(raw) if isinstance(raw, list) else type(raw).__name__
                problems.append(Problem(source, image_id, f"{where} has {n} keypoint values; expected "
                                                          f"3 x {len(kp_names)} = {3 * len(kp_names)}"))
            elif not all(_is_number(v) for v in raw):
                problems.append(Problem(source, image_id, f"{where} has keypoints that are not all finite "
                                                          f"numbers: {str(raw)[:80]}"))
    return problems


def without_images(data: dict, image_ids: Iterable) -> dict:
    """A shallow copy of a COCO dict without the given images and the annotations of any image
    not left in it (``data`` itself is not changed)."""
    drop = set(image_ids)
    out = dict(data)
    out["images"] = [im for im in data["images"] if im.get("id") not in drop]
    kept = {im.get("id") for im in out["images"]}
    out["annotations"] = [a for a in data.get("annotations", []) if a.get("image_id") in kept]
    return out


def raise_problems(problems: list[Problem]) -> None:
    """Raise the first problem as a DatasetError, saying how many more there are."""
    if problems:
        more = len(problems) - 1
        tail = (f" (and {more} more problem{'s' if more > 1 else ''}; tools/check_dataset.py lists them all)"
                if more else "")
        raise DatasetError(problems[0].message + tail)


def load_coco_json(ann_file: str | Path, *, skip_image_ids: Iterable = ()) -> COCO:
    """Read and check a COCO JSON; return a pycocotools ``COCO`` (built quietly).

    ``skip_image_ids``: images left out (with their annotations) before the checks, e.g. those
    ``common.dataset_check`` found bad when ``data.skip_bad_images`` is on.
    """
    ann_file = Path(ann_file)
    data = read_json(ann_file)
    skip = set(skip_image_ids)
    if skip and isinstance(data, dict) and isinstance(data.get("images"), list):
        data = without_images(data, skip)
    raise_problems(coco_problems(data, str(ann_file)))
    data.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco

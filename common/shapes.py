"""The built-in synthetic COCO-format dataset ("shapes"): circles, squares, triangles and stars.

Every tool uses it when no dataset is given, and the detectors are benchmarked on it.

    root = ensure_shapes_dataset()                 # datasets/shapes, generated on first use
    generate_shapes_dataset("/tmp/s", num_train=12, num_val=6, size=96, seed=0)

Layout of a generated directory ``DIR``:

    DIR/train.json, DIR/val.json      COCO instances (+ keypoints for stars); ``file_name`` is
                                      relative to ``DIR/<split>/``
    DIR/train/*.jpg, DIR/val/*.jpg    RGB images (JPEG quality 92)
    DIR/<split>_semantic/<stem>.png   uint8 label map: 0 background, 1 + contiguous class index
                                      (categories sorted by id), 255 ignore (crowd regions)
    DIR/semantic.json                 {"classes": ["background", ...], "ignore_index": 255}
    DIR/.shapes_complete.json         written last: the generation parameters

Conventions (what the tests check):
- Coordinates are continuous pixels: pixel (row i, col j) covers [j, j+1) x [i, i+1), the
  convention of pycocotools' polygon rasteriser. Boxes are COCO xywh, the tight box of the
  visible mask (so ``bbox == pycocotools.mask.toBbox(rle)``).
- Category ids are deliberately non-contiguous: circle=1, square=3, triangle=5, star=7.
- Later objects occlude earlier ones. An instance's mask is its *visible* region; instances
  less than 25% visible are not drawn at all, so image, masks and semantic map agree exactly.
- Masks are polygons for un-occluded polygonal shapes that lie fully inside the image, RLE
  (``counts`` as str) otherwise (all circles, occluded or clipped shapes, crowds). Polygons are
  rasterised with pycocotools when drawing, so ``annToMask`` equals the drawn pixels.
- ``area`` is the number of mask pixels.
- Stars carry 5 keypoints at their tips, ``[x, y, v] * 5``: v=2 visible, v=1 inside the image
  but under a later object, v=0 (x = y = 0) outside the image. As in COCO, keypoints are pixel
  indices: a tip at continuous (x, y) is written (x - 0.5, y - 0.5) (readers such as
  ``detection.data`` add the 0.5 back, as detectron2 does). "left"/"right" are the viewer's
  (smaller / larger x). Star rotation stays within +-20 degrees, so a horizontal flip
  (x -> W - x) plus the category's ``flip_map`` gives exactly another valid star.
  Every other annotation (and every crowd) has ``keypoints`` all zeros and ``num_keypoints`` 0,
  so keypoint code and COCOeval never meet a missing field.
- About 5% of images are empty; about 4% hold one ``iscrowd=1`` clump of small objects of one
  class (one RLE annotation, 255 in the semantic map). Image 0 of each split always holds at
  least 3 objects, the last one an un-occluded star, so even tiny sets exercise keypoints.
- Each image is drawn from its own generator seeded by (seed, split, index): a small set is the
  prefix of a larger one with the same seed, and output bytes depend only on the arguments.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from common.generated import generate_once

KEYPOINT_NAMES = ["top", "upper_left", "upper_right", "lower_left", "lower_right"]
SKELETON = [[1, 2], [1, 3], [2, 4], [3, 5], [4, 5]]  # 1-based, as in COCO: the pentagon of tips
FLIP_MAP = [["upper_left", "upper_right"], ["lower_left", "lower_right"]]
STAR_ID = 7
CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 5, "name": "triangle", "supercategory": "shape"},
    {"id": STAR_ID, "name": "star", "supercategory": "shape", "keypoints": KEYPOINT_NAMES,
     "skeleton": SKELETON, "flip_map": FLIP_MAP},
]
IGNORE_INDEX = 255
COMPLETE_MARKER = ".shapes_complete.json"
# bumped when the same arguments produce different annotations (2: keypoints as pixel indices)
FORMAT_VERSION = 2

ASPECTS = [(1.0, 1.0), (0.75, 1.0), (1.0, 0.75)]  # (height, width) as fractions of `size`
P_EMPTY = 0.05            # chance that an image has no objects
P_CROWD = 0.05            # chance that a non-empty image holds one crowd clump
MAX_OBJECTS = 6
OBJECT_SIZE = (0.12, 0.45)  # object diameter as a fraction of the image's short side
P_CLIPPED = 0.2           # chance that an object may stick out of the image
MIN_VISIBLE = 0.25        # instances less visible than this are not drawn
MIN_PIXELS = 12           # ... nor those with fewer visible pixels than this
STAR_MAX_ROTATION = 20.0  # degrees
TIP_WINDOW = 3            # px around a star tip that must be uncovered for v=2
JPEG_QUALITY = 92
SPLIT_CODES = {"train": 0, "val": 1}


def generate_shapes_dataset(out_dir, num_train=2000, num_val=200, size=192, seed=0) -> Path:
    """Write the shapes dataset into ``out_dir`` (created if missing, must be empty) and return it.

    size: the long side of every image in pixels; the other side is ``size`` or ``0.75 * size``.
    """
    for name, value, low in (("num_train", num_train, 0), ("num_val", num_val, 0),
                             ("size", size, 32), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"generate_shapes_dataset: {name} must be an integer >= {low}, "
                             f"got {value!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"generate_shapes_dataset: output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"generate_shapes_dataset: output directory {out} is not empty; "
                         "delete it or pass a new directory")
    out.mkdir(parents=True, exist_ok=True)

    for split, count in (("train", num_train), ("val", num_val)):
        (out / split).mkdir()
        (out / f"{split}_semantic").mkdir()
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
            image, semantic, layers = _render_scene(rng, size, rich=(index == 0))
            image_id = index + 1
            stem = f"{image_id:06d}"
            _write_image(out / split / f"{stem}.jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            _write_image(out / f"{split}_semantic" / f"{stem}.png", semantic, [])
            images.append({"id": image_id, "file_name": f"{stem}.jpg",
                           "height": int(image.shape[0]), "width": int(image.shape[1])})
            for layer in layers:
                annotations.append(_annotation(layer, len(annotations) + 1, image_id))
        coco = {
            "info": {"description": "rcnn-toolkit synthetic shapes", "split": split,
                     "size": size, "seed": seed},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": CATEGORIES,
        }
        (out / f"{split}.json").write_text(json.dumps(coco, separators=(",", ":")))

    classes = ["background"] + [c["name"] for c in sorted(CATEGORIES, key=lambda c: c["id"])]
    (out / "semantic.json").write_text(json.dumps({"classes": classes, "ignore_index": IGNORE_INDEX}))
    params = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed,
              "format": FORMAT_VERSION}
    (out / COMPLETE_MARKER).write_text(json.dumps(params))
    return out


def ensure_shapes_dataset(root="datasets/shapes", **kwargs) -> Path:
    """Return ``root`` (relative to the working directory), generating it first if missing.

    ``kwargs`` go to :func:`generate_shapes_dataset`. The data is written to a temporary
    directory next to ``root`` and renamed into place, so an interrupted run never leaves a
    half dataset, and two processes racing here both end up with the same complete one.
    """
    root = Path(root)
    generate_once(root, lambda tmp: generate_shapes_dataset(tmp, **kwargs))
    return _check_complete(root, kwargs)


def _check_complete(root: Path, kwargs: dict) -> Path:
    """``root`` must be a complete shapes dataset; warn if it was made with other parameters."""
    marker = root / COMPLETE_MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{root} exists but is not a complete shapes dataset (no {COMPLETE_MARKER}); "
                                "delete it so that it can be generated again")
    made_with = json.loads(marker.read_text())
    made_format = made_with.get("format", 1)  # markers before format 2 carry no "format"
    if made_format != FORMAT_VERSION:
        warnings.warn(f"{root} was generated by an older version of the toolkit (format "
                      f"{made_format}, now {FORMAT_VERSION}: keypoints are pixel indices since 2); "
                      "delete the directory to regenerate it", stacklevel=3)
    differ = {k: v for k, v in kwargs.items() if made_with.get(k) != v}
    if differ:
        warnings.warn(f"{root} was generated with {made_with}; ignoring the requested {differ} "
                      "(delete the directory to regenerate it)", stacklevel=3)
    return root


def _write_image(path: Path, array: np.ndarray, params: list[int]) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(array), params):
        raise OSError(f"could not write {path}")


# --------------------------------------------------------------------------------------------
# one scene
# --------------------------------------------------------------------------------------------

@dataclass
class _Layer:
    """One drawn thing: an object or a crowd clump. ``full`` is its (H, W) bool mask in the image."""

    category_id: int
    full: np.ndarray
    area: float                    # geometric area, including any part outside the image
    color: np.ndarray              # (3,) RGB
    polygon: list[float] | None = None   # flat [x0, y0, x1, y1, ...] when polygonal
    inside: bool = True            # the whole shape lies inside the image
    tips: np.ndarray | None = None  # (5, 2) star tips in KEYPOINT_NAMES order
    iscrowd: int = 0
    # filled by _resolve_occlusion
    visible: np.ndarray | None = None
    keypoints: list | None = None


def _render_scene(rng: np.random.Generator, size: int, rich: bool = False):
    """Draw one image. Returns (image (H, W, 3) uint8 RGB, semantic (H, W) uint8, kept layers).

    rich: at least 3 objects survive occlusion and the last one is an un-occluded star.
    """
    ah, aw = ASPECTS[rng.integers(len(ASPECTS))]
    h, w = int(round(ah * size)), int(round(aw * size))
    background, bg_colors = _background(rng, h, w)

    for _attempt in range(20):
        if rich:
            num = int(rng.integers(3, MAX_OBJECTS + 1))
        else:
            num = 0 if rng.random() < P_EMPTY else int(rng.integers(1, MAX_OBJECTS + 1))
        layers = []
        if num > 0 and not rich and rng.random() < P_CROWD:
            layers.append(_crowd(rng, h, w, bg_colors))
        for k in range(num):
            cat = STAR_ID if (rich and k == num - 1) else int(rng.choice([c["id"] for c in CATEGORIES]))
            color = _pick_color(rng, bg_colors, [layer.color for layer in layers])
            diameter = rng.uniform(*OBJECT_SIZE) * min(h, w)
            center = _place(rng, h, w, diameter / 2, inside=rich or rng.random() >= P_CLIPPED)
            layers.append(_shape(rng, cat, h, w, diameter, color, center))
        layers = _resolve_occlusion(layers, h, w)
        if not rich or sum(1 for layer in layers if not layer.iscrowd) >= 3:
            break

    image = background
    semantic = np.zeros((h, w), np.uint8)
    label_of = {c["id"]: 1 + i for i, c in enumerate(sorted(CATEGORIES, key=lambda c: c["id"]))}
    for layer in layers:  # draw order: later layers paint over earlier ones
        image[layer.full] = _shade(rng, layer, h, w)
        semantic[layer.full] = IGNORE_INDEX if layer.iscrowd else label_of[layer.category_id]
    return np.clip(image, 0, 255).astype(np.uint8), semantic, layers


def _resolve_occlusion(layers: list[_Layer], h: int, w: int) -> list[_Layer]:
    """Keep the layers at least MIN_VISIBLE visible, deciding from the top layer down.

    A layer's visibility depends only on the layers drawn after it, so one pass from the top
    is exact. Fills ``visible`` and, for stars, ``keypoints``.
    """
    covered = np.zeros((h, w), bool)
    kept = []
    for layer in reversed(layers):
        visible = layer.full & ~covered
        pixels = int(visible.sum())
        if pixels < MIN_PIXELS or pixels < MIN_VISIBLE * layer.area:
            continue
        layer.visible = visible
        layer.keypoints = _star_keypoints(layer.tips, layer.full, covered) if layer.tips is not None else [0] * 15
        covered |= layer.full
        kept.append(layer)
    return kept[::-1]


def _star_keypoints(tips: np.ndarray, full: np.ndarray, covered: np.ndarray) -> list:
    """[x, y, v] * 5 for a star with (H, W) mask ``full`` under the later layers' ``covered``.

    v=0 (and x = y = 0): the tip is outside the image. v=1: a later object covers the tip pixel
    or the star's own pixels within TIP_WINDOW px of it (a thin spike is not drawn to its very
    end, so the pixel alone would say too little). v=2: otherwise.
    """
    h, w = covered.shape
    r = TIP_WINDOW
    out = []
    for x, y in tips:
        if not (0 <= x < w and 0 <= y < h):
            out += [0, 0, 0]
            continue
        col, row = int(x), int(y)
        window = np.s_[max(row - r, 0):row + r + 1, max(col - r, 0):col + r + 1]
        hidden = covered[row, col] or bool((covered[window] & full[window]).any())
        out += [round(max(x - 0.5, 0.0), 2), round(max(y - 0.5, 0.0), 2), 1 if hidden else 2]  # pixel index
    return out


def _annotation(layer: _Layer, ann_id: int, image_id: int) -> dict:
    """The COCO annotation of a kept layer (its visible region)."""
    if layer.polygon is not None and layer.inside and not layer.iscrowd and \
            np.array_equal(layer.visible, layer.full):
        segmentation = [layer.polygon]
    else:
        rle = mask_utils.encode(np.asfortranarray(layer.visible.astype(np.uint8)))
        segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    rows = np.flatnonzero(layer.visible.any(axis=1))
    cols = np.flatnonzero(layer.visible.any(axis=0))
    bbox = [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
    return {
        "id": ann_id, "image_id": image_id, "category_id": layer.category_id,
        "segmentation": segmentation, "area": float(layer.visible.sum()), "bbox": bbox,
        "iscrowd": layer.iscrowd, "keypoints": layer.keypoints,
        "num_keypoints": sum(1 for v in layer.keypoints[2::3] if v > 0),
    }


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------

def _place(rng, h: int, w: int, radius: float, inside: bool) -> tuple[float, float]:
    """A random centre: the whole disc of ``radius`` in the image if ``inside``, else just the centre."""
    if inside:
        margin = min(radius + 1, h / 2, w / 2)
        return rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
    return rng.uniform(0, w), rng.uniform(0, h)


def _shape(rng, category_id: int, h: int, w: int, diameter: float, color, center) -> _Layer:
    """One object of the given category, circumscribed ``diameter``, centred at ``center`` (x, y)."""
    radius = diameter / 2
    cx, cy = center
    name = next(c["name"] for c in CATEGORIES if c["id"] == category_id)
    if name == "circle":
        ys, xs = np.ogrid[:h, :w]
        full = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= radius ** 2
        return _Layer(category_id, full, math.pi * radius ** 2, color)
    tips = None
    if name == "square":
        angles = rng.uniform(0, 90) + np.array([45, 135, 225, 315])
        radii = np.full(4, radius)
    elif name == "triangle":
        angles = rng.uniform(0, 360) + np.array([0, 120, 240]) + rng.uniform(-12, 12, 3)
        radii = radius * rng.uniform(0.8, 1.0, 3)
    else:  # star: outer tips at -90 + 72k degrees (k = 0 is the top), inner corners between
        rotation = rng.uniform(-STAR_MAX_ROTATION, STAR_MAX_ROTATION)
        angles = rotation - 90 + 36 * np.arange(10)
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    theta = np.deg2rad(angles)
    xy = np.round(np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], 1), 2)  # (V, 2)
    if name == "star":
        outer = xy[0::2]  # k = 0 top, 1 upper right, 2 lower right, 3 lower left, 4 upper left
        tips = outer[[0, 4, 1, 3, 2]]  # KEYPOINT_NAMES order
    polygon = [float(v) for v in xy.reshape(-1)]
    # rasterise with pycocotools so that annToMask of this polygon is exactly what is drawn
    full = mask_utils.decode(mask_utils.frPyObjects([polygon], h, w))[:, :, 0].astype(bool)
    x, y = xy[:, 0], xy[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))  # shoelace
    fits = bool(x.min() >= 0 and y.min() >= 0 and x.max() <= w and y.max() <= h)
    return _Layer(category_id, full, area, color, polygon=polygon, inside=fits, tips=tips)


def _crowd(rng, h: int, w: int, bg_colors) -> _Layer:
    """A clump of 6-11 small objects of one class, annotated together as one crowd region."""
    category_id = int(rng.choice([c["id"] for c in CATEGORIES]))
    color = _pick_color(rng, bg_colors, [])
    short = min(h, w)
    cx, cy = rng.uniform(0.25 * w, 0.75 * w), rng.uniform(0.25 * h, 0.75 * h)
    full = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(6, 12))):
        d = max(5.0, rng.uniform(0.05, 0.09) * short)
        spot = cx + rng.normal(0, 0.07 * short), cy + rng.normal(0, 0.07 * short)
        full |= _shape(rng, category_id, h, w, d, color, spot).full
    return _Layer(category_id, full, float(full.sum()), color, iscrowd=1)


# --------------------------------------------------------------------------------------------
# appearance
# --------------------------------------------------------------------------------------------

def _background(rng, h: int, w: int):
    """A flat, gradient, striped or noise-textured (H, W, 3) float32 background and its 2 colours."""
    c1 = rng.uniform(0, 255, 3)
    c2 = np.clip(c1 + rng.normal(0, 1, 3) / math.sqrt(3) * rng.uniform(30, 70), 0, 255)
    kind = rng.integers(4)
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.arange(w, dtype=np.float32)[None, :] * np.float32(math.cos(angle))  # (1, W)
    ys = np.arange(h, dtype=np.float32)[:, None] * np.float32(math.sin(angle))  # (H, 1)
    proj = xs + ys  # (H, W) distance along a random direction
    if kind == 0:    # flat
        t = np.zeros((h, w), np.float32)
    elif kind == 1:  # gradient
        t = (proj - proj.min()) / np.float32(max(float(proj.max() - proj.min()), 1.0))
    elif kind == 2:  # stripes
        period = rng.uniform(6, 0.25 * max(h, w))
        phase = np.float32(rng.uniform(0, 2 * math.pi))
        t = (np.sin(proj * np.float32(2 * math.pi / period) + phase) > 0).astype(np.float32)
    else:            # smooth noise texture plus grain
        cells = rng.uniform(0, 1, (int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.float32)
        t = np.clip(cv2.resize(cells, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)
        t = t + rng.standard_normal((h, w), dtype=np.float32) * np.float32(0.08)
    image = c1.astype(np.float32) + (c2 - c1).astype(np.float32) * t[..., None]  # (H, W, 3)
    return image, [c1, c2]


def _pick_color(rng, bg_colors, object_colors) -> np.ndarray:
    """A random RGB colour far from the background colours and, if possible, from other objects."""
    best, best_score = None, -1.0
    for _ in range(40):
        c = rng.uniform(0, 255, 3)
        d_bg = min(float(np.linalg.norm(c - b)) for b in bg_colors)
        d_obj = min((float(np.linalg.norm(c - o)) for o in object_colors), default=255.0)
        if d_bg >= 110 and d_obj >= 60:
            return c
        score = min(d_bg / 110, d_obj / 60)
        if score > best_score:
            best, best_score = c, score
    return best


def _shade(rng, layer: _Layer, h: int, w: int) -> np.ndarray:
    """(P, 3) colours of the layer's P pixels: its colour with a gentle linear shading."""
    ys, xs = np.nonzero(layer.full)
    angle = rng.uniform(0, 2 * math.pi)
    proj = (xs * math.cos(angle) + ys * math.sin(angle)) / max(h, w)  # roughly in [-1.4, 1.4]
    proj = proj - proj.mean()
    return layer.color[None, :] + rng.uniform(0, 30) * proj[:, None]

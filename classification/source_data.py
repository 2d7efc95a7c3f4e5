"""The built-in source task for offline pretraining: a generated image-classification set.

It is NOT ImageNet and no substitute for it: ten synthetic classes, a few thousand small images,
made so that a backbone can be pretrained and its transfer measured on a machine without
downloads. It deliberately differs from the detection and segmentation targets (the shapes
data: filled circles, squares, triangles and stars on plain, gradient, striped or noisy
backgrounds; nor the classes of the independent check set /work/data/variety: ellipse,
pentagon, cross, arrow, crescent, walker, plate): five classes are textures that fill the whole
image, five are outlined, hollow or jagged figures that none of those contain, in colours drawn
from the whole HSV range, a fifth of the images grayscale.

    root = ensure_source_dataset()                     # datasets/source_cls, generated on first use
    generate_source_dataset("/tmp/src", num_train=4, num_val=2, size=72, seed=0)

Layout (torchvision's ImageFolder, as for ImageNet):

    DIR/train/<class>/<class>_000000.jpg     ``num_train`` images per class
    DIR/val/<class>/<class>_000000.jpg       ``num_val`` images per class
    DIR/.source_complete.json                written last: the generation parameters

Classes (``CLASSES``):
    textures  stripes (parallel bands at any angle), checker (rotated checkerboard), dots (a
              jittered dot lattice), rings (concentric rings around a random centre),
              crosshatch (two crossing line families)
    figures   hexagon (outline), annulus (a hollow ring), chevron (a thick V), hourglass (two
              triangles tip to tip), zigzag (a thick three-segment polyline); one figure of
              45-90 % of the image side on a smooth noisy background

Each image comes from its own generator seeded by (seed, split, class, index): a small set is a
prefix of a larger one with the same seed, and the bytes depend only on the arguments.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np

from common.generated import generate_once

TEXTURES = ("stripes", "checker", "dots", "rings", "crosshatch")
FIGURES = ("hexagon", "annulus", "chevron", "hourglass", "zigzag")
CLASSES = TEXTURES + FIGURES
COMPLETE_MARKER = ".source_complete.json"
SPLIT_CODES = {"train": 0, "val": 1}
P_GRAY = 0.2          # chance that an image is grayscale
FIGURE_SIZE = (0.45, 0.9)  # figure diameter as a fraction of the image side
SUPERSAMPLE = 4       # figures are drawn this many times larger, then shrunk (anti-aliasing)
JPEG_QUALITY = 92


def generate_source_dataset(out_dir, num_train: int = 300, num_val: int = 50, size: int = 72,
                            seed: int = 0) -> Path:
    """Write the source task into ``out_dir`` (created if missing, must be empty); return it.

    num_train / num_val: images per class in each split; size: the square image side in pixels.
    """
    for name, value, low in (("num_train", num_train, 0), ("num_val", num_val, 0),
                             ("size", size, 16), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"generate_source_dataset: {name} must be an integer >= {low}, got {value!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"generate_source_dataset: {out} exists and is not an empty directory")
    for split, count in (("train", num_train), ("val", num_val)):
        for c, name in enumerate(CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng([seed, SPLIT_CODES[split], c, index])
                rgb = render(rng, name, size)
                path = folder / f"{name}_{index:06d}.jpg"
                if not cv2.imwrite(str(path), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                    raise OSError(f"could not write {path}")
    params = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed}
    (out / COMPLETE_MARKER).write_text(json.dumps(params))
    return out


def ensure_source_dataset(root="datasets/source_cls", **kwargs) -> Path:
    """Return ``root``, generating it first if missing (into a temporary sibling, renamed into
    place, so an interrupted run leaves no half dataset). ``kwargs`` go to the generator."""
    root = Path(root)
    generate_once(root, lambda tmp: generate_source_dataset(tmp, **kwargs))
    marker = root / COMPLETE_MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{root} exists but is not a complete source dataset (no {COMPLETE_MARKER}); "
                                "delete it so that it can be generated again")
    made_with = json.loads(marker.read_text())
    differ = {k: v for k, v in kwargs.items() if made_with.get(k) != v}
    if differ:
        warnings.warn(f"{root} was generated with {made_with}; ignoring the requested {differ} "
                      "(delete the directory to regenerate it)", stacklevel=2)
    return root


def render(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 RGB image of class ``name``."""
    fg, bg = _colour_pair(rng)
    if name in TEXTURES:
        t = _texture(rng, name, size)                      # (S, S) in [0, 1]: 1 = foreground
    else:
        t = _smooth_noise(rng, size) * rng.uniform(0.1, 0.35)  # faint background structure
        figure = _figure(rng, name, size)                  # (S, S) coverage in [0, 1]
        t = t * (1 - figure) + figure
    image = bg[None, None, :] + (fg - bg)[None, None, :] * t[..., None]  # (S, S, 3)
    image = image + rng.normal(0, rng.uniform(0, 8), image.shape)       # sensor grain
    if rng.random() < P_GRAY:
        image = image.mean(axis=2, keepdims=True).repeat(3, axis=2)
    return np.clip(image, 0, 255).astype(np.uint8)


def _colour_pair(rng) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB colours (float, 0-255) far enough apart to be told from each other."""
    while True:
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 255), rng.uniform(40, 255)],
                         [rng.uniform(0, 180), rng.uniform(0, 255), rng.uniform(0, 255)]]], np.float32)
        rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0].astype(np.float32)
        if np.linalg.norm(rgb[0] - rgb[1]) > 90:
            return rgb[0], rgb[1]


def _smooth_noise(rng, size: int) -> np.ndarray:
    cells = rng.uniform(0, 1, (int(rng.integers(2, 6)),) * 2).astype(np.float32)
    return np.clip(cv2.resize(cells, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)


def _texture(rng, name: str, size: int) -> np.ndarray:
    """(S, S) float32 in [0, 1]: a texture filling the image."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)    # coordinates along / across a random direction
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    period = rng.uniform(5, size / 4)
    phase = rng.uniform(0, 2 * math.pi)

    def bands(coord):  # soft square wave of the period
        return np.clip(np.sin(2 * math.pi * coord / period + phase) * 3, -1, 1) * 0.5 + 0.5

    if name == "stripes":
        return bands(u)
    if name == "checker":
        return (bands(u) - 0.5) * (bands(v) - 0.5) * 2 + 0.5
    if name == "crosshatch":
        other = v * math.cos(0.6) + u * math.sin(0.6)  # a second family 55-125 degrees off
        return np.maximum(1 - bands(u), 1 - bands(other))
    if name == "rings":
        cy, cx = rng.uniform(-0.2, 1.2, 2) * size
        return bands(np.hypot(xs - cx, ys - cy))
    # dots: a jittered lattice of discs
    image = np.zeros((size, size), np.float32)
    step = period * 1.3
    radius = step * rng.uniform(0.2, 0.35)
    for gy in np.arange(-step, size + step, step):
        for gx in np.arange(-step, size + step, step):
            cx, cy = gx + rng.uniform(-0.15, 0.15) * step, gy + rng.uniform(-0.15, 0.15) * step
            cv2.circle(image, (int(round(cx)), int(round(cy))), max(1, int(round(radius))), 1.0, -1,
                       cv2.LINE_AA)
    return image


def _figure(rng, name: str, size: int) -> np.ndarray:
    """(S, S) float32 coverage of one figure, drawn at SUPERSAMPLE x and shrunk (soft edges)."""
    big = size * SUPERSAMPLE
    canvas = np.zeros((big, big), np.float32)
    r = rng.uniform(*FIGURE_SIZE) * big / 2
    cx, cy = rng.uniform(r * 0.8, big - r * 0.8, 2)
    angle = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def poly(points):  # unit-scale (P, 2) points -> rotated, scaled, placed int32 polygon
        p = np.asarray(points, np.float64) @ rot.T * r + (cx, cy)
        return [np.round(p).astype(np.int32)]

    thickness = max(2, int(r * rng.uniform(0.12, 0.25)))
    if name == "hexagon":  # outlined: the targets' shapes are filled
        corners = [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)]
        cv2.polylines(canvas, poly(corners), True, 1.0, thickness)
    elif name == "annulus":
        cv2.circle(canvas, (int(cx), int(cy)), int(r - thickness / 2), 1.0, thickness)
    elif name == "chevron":
        cv2.polylines(canvas, poly([(-0.9, -0.8), (0.6, 0.0), (-0.9, 0.8)]), False, 1.0, 2 * thickness)
    elif name == "hourglass":
        cv2.fillPoly(canvas, poly([(-0.6, -1), (0.6, -1), (0, 0), (0.6, 1), (-0.6, 1), (0, 0)]), 1.0)
    elif name == "zigzag":
        cv2.polylines(canvas, poly([(-1, -0.6), (-0.35, 0.6), (0.35, -0.6), (1, 0.6)]), False, 1.0, thickness)
    else:
        raise ValueError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}")
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)

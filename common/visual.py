"""Drawing for people: boxes, masks, keypoints and semantic maps, with OpenCV only.

Shape shorthand: R instances, P keypoints per instance, H x W the image.

Every function takes an RGB uint8 (H, W, 3) array and returns a new one (the input is never
modified); boxes, masks and keypoints are in that image's pixel frame. Arrays may also be
torch tensors on any device. Colours are RGB tuples; ``color_for(label)``
gives every class the same colour everywhere.

    vis = draw_instances(image, boxes=boxes, labels=labels, scores=scores, masks=masks,
                         keypoints=keypoints, class_names=meta.class_names, skeleton=meta.skeleton)
    cv2.imwrite("vis.jpg", vis[:, :, ::-1])   # OpenCV writes BGR
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import cv2
import numpy as np

Color = tuple[int, int, int]

FONT = cv2.FONT_HERSHEY_SIMPLEX


def color_for(label: int) -> Color:
    """A deterministic, well-spread RGB colour for a class label (or any integer).

    Hues step by the golden ratio, so neighbouring labels get clearly different colours.
    """
    hue = (int(label) * 0.618033988749895 + 0.05) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _np(x) -> np.ndarray:
    """A torch tensor (read without importing torch) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _image(img) -> np.ndarray:
    """A contiguous RGB uint8 (H, W, 3) copy of ``img``."""
    arr = _np(img).copy()
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def _thickness(img: np.ndarray) -> int:
    """Line width: 1 px for small images, growing slowly with size."""
    return max(1, round(min(img.shape[:2]) / 300))


def _font_scale(img: np.ndarray) -> float:
    return max(0.3, min(img.shape[:2]) / 600)


def _text_color(background: Color) -> Color:
    """Black on light backgrounds, white on dark ones."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _put_label(img: np.ndarray, text: str, x: int, y: int, color: Color) -> None:
    """Text on a filled ``color`` box whose bottom-left is (x, y), kept inside the image."""
    scale = _font_scale(img)
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    h, w = img.shape[:2]
    x = int(min(max(x, 0), max(w - tw - 2, 0)))
    y = int(min(max(y, th + base + 1), h - 1))
    cv2.rectangle(img, (x, y - th - base - 1), (x + tw + 1, y), color, thickness=-1)
    cv2.putText(img, text, (x + 1, y - base), FONT, scale, _text_color(color), 1, cv2.LINE_AA)


def draw_boxes(img, boxes, labels=None, scores=None, class_names: Sequence[str] | None = None,
               colors: Sequence[Color] | None = None) -> np.ndarray:
    """Rectangles with a "name score" tag above each.

    boxes:  (R, 4) xyxy pixels.  labels: (R,) int.  scores: (R,) float.
    colors: one RGB colour per box; default ``color_for(label)`` (or ``color_for(0)``).
    """
    out = _image(img)
    boxes = _np(boxes).astype(np.float64).reshape(-1, 4)
    labels = None if labels is None else _np(labels).reshape(-1).astype(np.int64)
    scores = None if scores is None else _np(scores).astype(np.float64).reshape(-1)
    t = _thickness(out)
    for i, box in enumerate(boxes):
        label = None if labels is None else int(labels[i])
        color = tuple(int(c) for c in colors[i]) if colors is not None else color_for(label or 0)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, t)
        parts = []
        if label is not None:
            parts.append(class_names[label] if class_names is not None and 0 <= label < len(class_names)
                         else str(label))
        if scores is not None:
            parts.append(f"{scores[i]:.2f}")
        if parts:
            _put_label(out, " ".join(parts), x0, y0 - 1, color)
    return out


def draw_masks(img, masks, colors: Sequence[Color] | None = None, alpha: float = 0.5) -> np.ndarray:
    """Translucent masks with a solid contour.

    masks: (R, H, W) bool/uint8, or float probabilities (drawn where >= 0.5).
    colors: one RGB colour per mask; default ``color_for(i)``.
    """
    out = _image(img)
    masks = _np(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[1:] != out.shape[:2]:
        raise ValueError(f"masks of shape {masks.shape} do not match the image {out.shape[:2]}")
    binary = masks >= 0.5 if masks.dtype.kind == "f" else masks.astype(bool)
    for i, m in enumerate(binary):
        color = tuple(int(c) for c in colors[i]) if colors is not None else color_for(i)
        tint = np.asarray(color, dtype=np.float32)
        out[m] = ((1 - alpha) * out[m] + alpha * tint).round().astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, color, 1)
    return out


def draw_keypoints(img, keypoints, skeleton: Sequence[tuple[int, int]] | None = None,
                   threshold: float = 0.5, colors: Sequence[Color] | None = None) -> np.ndarray:
    """Keypoints as dots joined by skeleton lines.

    keypoints: (R, P, 3) (x, y, v): v is the COCO visibility (0 unlabelled, 1, 2) or a score;
               a keypoint is drawn when v > ``threshold``.
    skeleton:  (a, b) pairs of 0-based keypoint indices (``DatasetMeta.skeleton``).
    colors:    one colour per instance for its lines; default white. Dots are ``color_for(p)``.
    """
    out = _image(img)
    kps = _np(keypoints).astype(np.float64)
    if kps.ndim == 2:
        kps = kps[None]
    if kps.ndim != 3 or kps.shape[-1] != 3:
        raise ValueError(f"keypoints must have shape (R, P, 3), got {kps.shape}")
    num_points = kps.shape[1]
    for a, b in skeleton or []:
        if not (0 <= a < num_points and 0 <= b < num_points):
            raise ValueError(f"skeleton edge ({a}, {b}) is out of range for {num_points} keypoints "
                             f"(indices are 0-based)")
    t = _thickness(out)
    radius = max(2, t + 1)
    for r, inst in enumerate(kps):
        line_color = tuple(int(c) for c in colors[r]) if colors is not None else (255, 255, 255)
        shown = inst[:, 2] > threshold
        for a, b in skeleton or []:
            if shown[a] and shown[b]:
                cv2.line(out, _point(inst[a]), _point(inst[b]), line_color, t, cv2.LINE_8)
        for p in np.flatnonzero(shown):
            cv2.circle(out, _point(inst[p]), radius, color_for(p), -1, cv2.LINE_8)
    return out


def _point(kp: np.ndarray) -> tuple[int, int]:
    return int(round(kp[0])), int(round(kp[1]))


def draw_instances(img, *, boxes, labels, scores=None, masks=None, keypoints=None,
                   class_names: Sequence[str] | None = None,
                   skeleton: Sequence[tuple[int, int]] | None = None,
                   keypoint_threshold: float = 0.5) -> np.ndarray:
    """Masks, then boxes with class names, then keypoints, each instance in its class colour.

    boxes (R, 4) xyxy, labels (R,), scores (R,), masks (R, H, W), keypoints (R, P, 3).
    """
    labels = _np(labels).reshape(-1).astype(np.int64)
    colors = [color_for(int(label)) for label in labels]
    out = _image(img)
    if masks is not None and len(labels):
        out = draw_masks(out, masks, colors=colors)
    out = draw_boxes(out, boxes, labels, scores, class_names, colors=colors)
    if keypoints is not None and len(labels):
        out = draw_keypoints(out, keypoints, skeleton, threshold=keypoint_threshold, colors=colors)
    return out


def draw_semantic(img, label_map, class_names: Sequence[str], ignore_index: int = 255,
                  alpha: float = 0.5, colors: Sequence[Color] | None = None) -> np.ndarray:
    """A label map tinted over the image, with a legend of the classes present.

    label_map: (H, W) int, values in 0..len(class_names)-1 or ``ignore_index`` (left untinted).
    colors:    one RGB colour per class; default ``color_for(c)`` for class c. The legend is a panel appended on the right, so the
    result is (H, W + legend width, 3) and no pixel of the map is hidden.
    """
    out = _image(img)
    labels = _np(label_map)
    if labels.shape != out.shape[:2]:
        raise ValueError(f"label map of shape {labels.shape} does not match the image {out.shape[:2]}")
    present = [int(v) for v in np.unique(labels) if v != ignore_index]
    bad = [v for v in present if not 0 <= v < len(class_names)]
    if bad:
        raise ValueError(f"label map holds value {bad[0]}, but there are only {len(class_names)} "
                         f"class names (ignore_index {ignore_index})")
    palette = [tuple(int(v) for v in col) for col in colors] if colors is not None \
        else [color_for(c) for c in range(len(class_names))]
    for c in present:
        m = labels == c
        out[m] = ((1 - alpha) * out[m] + alpha * np.asarray(palette[c], np.float32)).round().astype(np.uint8)
    return np.concatenate([out, _legend([(class_names[c], palette[c]) for c in present],
                                        out.shape[0], _font_scale(out))], axis=1)


def _legend(entries: list[tuple[str, Color]], height: int, scale: float) -> np.ndarray:
    """A dark (height, w, 3) panel listing colour swatches and names, in columns if needed."""
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, 1)
    row = th + base + 4
    per_col = max(1, (height - 4) // row)
    cols = max(1, math.ceil(len(entries) / per_col))
    text_w = max([cv2.getTextSize(name, FONT, scale, 1)[0][0] for name, _ in entries] or [0])
    col_w = row + text_w + 8
    panel = np.full((height, max(col_w * cols, 8), 3), 32, np.uint8)
    for i, (name, color) in enumerate(entries):
        x = (i // per_col) * col_w + 3
        y = (i % per_col) * row + 3
        cv2.rectangle(panel, (x, y), (x + row - 4, y + row - 4), color, -1)
        cv2.putText(panel, name, (x + row, y + th), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def confusion_image(cm, class_names: Sequence[str], cell: int = 48) -> np.ndarray:
    """(H, W, 3) uint8 RGB picture of the row-normalised (K, K) confusion matrix ``cm`` (rows =
    ground truth), percentages in the cells (segmentation pixels, detection boxes)."""
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)                 # each gt row sums to 1
    margin = 8 + 8 * max(len(n) for n in class_names)
    img = np.full((margin + k * cell + 4, margin + k * cell + 4, 3), 255, np.uint8)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)  # (K, K, 3) BGR
    heat = cv2.resize(heat[:, :, ::-1], (k * cell, k * cell), interpolation=cv2.INTER_NEAREST)
    img[margin:margin + k * cell, margin:margin + k * cell] = heat
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(k):
        for j in range(k):
            color = (0, 0, 0) if norm[i, j] > 0.6 else (255, 255, 255)
            cv2.putText(img, f"{100 * norm[i, j]:.0f}", (margin + j * cell + 6, margin + i * cell + cell // 2 + 5),
                        font, 0.4, color, 1, cv2.LINE_AA)
        cv2.putText(img, class_names[i], (2, margin + i * cell + cell // 2 + 5), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        # column labels, written vertically by rotating a text patch
        patch = np.full((12, margin - 4, 3), 255, np.uint8)
        cv2.putText(patch, class_names[i], (2, 10), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        patch = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)          # (margin-4, 12, 3)
        x = margin + i * cell + cell // 2 - 6
        img[2:2 + patch.shape[0], x:x + 12] = patch
    return img

"""COCO-format detection data: metadata, annotation cleaning and the dataset.

Shape shorthand: M instances in one image, P keypoints per instance, H x W the image.

Any COCO JSON plus an image folder works: boxes, polygon and RLE (compressed and uncompressed)
masks, keypoints, ``iscrowd``, non-contiguous category ids. Category ids are mapped to
contiguous labels ``0..K-1`` in increasing id order (``DatasetMeta.category_ids[label]`` is the
COCO id); this mapping lives only here and in ``detection.evaluation``.

What happens to imperfect annotations (decided once, when the dataset is built):
- a box is clipped to the image; a box with a side < ``MIN_BOX_SIDE`` px after clipping
  (degenerate, or entirely outside the image) drops its instance;
- a polygon with fewer than 3 points is dropped; an instance left without any polygon is
  dropped (pycocotools would read a 2-point polygon as a box);
- crowd annotations (``iscrowd=1``) are not targets (they stay in ``.coco`` for evaluation).
All of these are counted in ``.stats`` and reported once as a single :class:`DatasetWarning`.

Broken input is a :class:`DatasetError` naming the file, the image or annotation id and the
value: a file that is not JSON or not COCO, an annotation pointing at an unknown image or
category, a malformed segmentation or keypoint list (all checked by ``common.coco``, the reader
segmentation's COCO layout shares), a missing/unreadable image, an image whose size on disk
differs from the JSON. The tools find all of these before training (``common.dataset_check``).

Coordinates are continuous everywhere (pixel (i, j) covers [j, j+1) x [i, i+1), as boxes and
polygons are in COCO). COCO keypoints are pixel indices (the pixel at index x has its centre at
x + 0.5), so labelled keypoints (v > 0) get 0.5 added on reading, as in detectron2, and
``detection.evaluation`` takes it off again when writing results; v stays in {0, 1, 2} and
unlabelled keypoints stay (0, 0, 0). Masks are decoded with pycocotools (``COCO.annToMask``
semantics), so they match pycocotools exactly.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO

from common.coco import DatasetError, load_coco_json, usable_polygons

from .keypoint_flip import derive_flip_map

MIN_BOX_SIDE = 1.0  # px: a box narrower or shorter than this (after clipping) is degenerate


class DatasetWarning(UserWarning):
    """Annotations that were clipped or dropped (one warning per dataset, with counts)."""


@dataclass
class DatasetMeta:
    """Class and keypoint metadata read from a COCO JSON."""

    class_names: list[str]
    category_ids: list[int]  # label -> COCO category id
    keypoint_names: list[str] = field(default_factory=list)  # empty if the dataset has none
    keypoint_flip_map: list[tuple[str, str]] = field(default_factory=list)  # (left, right) names
    skeleton: list[tuple[int, int]] = field(default_factory=list)  # 0-based keypoint indices
    keypoint_classes: list[int] = field(default_factory=list)  # labels of the categories that have keypoints

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def flip_indices(self) -> list[int]:
        """``flip_indices[i]`` is the index of keypoint i's mirror image (itself if unpaired)."""
        index = {n: i for i, n in enumerate(self.keypoint_names)}
        out = list(range(self.num_keypoints))
        for a, b in self.keypoint_flip_map:
            out[index[a]], out[index[b]] = index[b], index[a]
        return out

    def to_dict(self) -> dict:
        """Plain dict (for checkpoints); :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetMeta":
        return cls(class_names=list(d["class_names"]), category_ids=[int(c) for c in d["category_ids"]],
                   keypoint_names=list(d.get("keypoint_names", [])),
                   keypoint_flip_map=[tuple(p) for p in d.get("keypoint_flip_map", [])],
                   skeleton=[tuple(e) for e in d.get("skeleton", [])],
                   keypoint_classes=[int(c) for c in d.get("keypoint_classes", [])])


def meta_from_coco(coco: dict | COCO, source_name: str = "<COCO dict>") -> DatasetMeta:
    """Read :class:`DatasetMeta` from a COCO dict or a pycocotools ``COCO``.

    Keypoint names come from the categories that have ``"keypoints"`` (they must all share the
    same names). The flip map is the category's ``"flip_map"`` (pairs of names) if present,
    else the pairs found from the names (``detection.data.keypoint_flip``: ``left_X`` /
    ``right_X``, ``X_l`` / ``X_r``, ``LeftX`` / ``RightX``, ``left`` / ``right``). The skeleton is converted from COCO's 1-based
    indices to 0-based.
    """
    data = coco.dataset if isinstance(coco, COCO) else coco
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    kp_cats = [c for c in cats if c.get("keypoints")]
    names: list[str] = []
    flip_map: list[tuple[str, str]] = []
    skeleton: list[tuple[int, int]] = []
    if kp_cats:
        names = [str(n) for n in kp_cats[0]["keypoints"]]
        for c in kp_cats[1:]:
            if [str(n) for n in c["keypoints"]] != names:
                raise DatasetError(
                    f"{source_name}: categories {kp_cats[0]['id']} and {c['id']} have different keypoint "
                    f"names ({names} vs {c['keypoints']}); one model needs one keypoint set")
        if len(set(names)) != len(names):
            raise DatasetError(f"{source_name}: category {kp_cats[0]['id']} repeats a keypoint name: {names}")
        if "flip_map" in kp_cats[0]:
            flip_map = [(str(a), str(b)) for a, b in kp_cats[0]["flip_map"]]
            for a, b in flip_map:
                if a not in names or b not in names:
                    raise DatasetError(f"{source_name}: flip_map pair ({a!r}, {b!r}) of category "
                                       f"{kp_cats[0]['id']} names an unknown keypoint (known: {names})")
        else:  # COCO files carry no flip map: pairs from the names (left_X / right_X, ...)
            flip_map = derive_flip_map(names)
        for edge in kp_cats[0].get("skeleton", []):
            a, b = int(edge[0]) - 1, int(edge[1]) - 1
            if not (0 <= a < len(names) and 0 <= b < len(names)):
                raise DatasetError(f"{source_name}: skeleton edge {list(edge)} of category {kp_cats[0]['id']} "
                                   f"is out of range for {len(names)} keypoints (COCO skeletons are 1-based)")
            skeleton.append((a, b))
    return DatasetMeta(class_names=[str(c["name"]) for c in cats], category_ids=[int(c["id"]) for c in cats],
                       keypoint_names=names, keypoint_flip_map=flip_map, skeleton=skeleton,
                       keypoint_classes=[i for i, c in enumerate(cats) if c.get("keypoints")])


def read_image(path: str | Path, image_id: Any = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Grayscale is replicated to 3 channels, alpha is dropped, 16-bit is scaled to 8-bit
    (65535 -> 255). Missing or undecodable files raise :class:`DatasetError` naming the file
    and the image id.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file {path} (image id {image_id}) does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"image file {path} (image id {image_id}) could not be read as an image")
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DatasetError(f"image file {path} (image id {image_id}) has pixel type {img.dtype}; "
                           f"only 8- and 16-bit images are supported")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise DatasetError(f"image file {path} (image id {image_id}) has {img.shape[2]} channels; expected 1, 3 or 4")


def _empty_reason(anns: list[dict]) -> str:
    """Why an image without a usable instance has none (for the empty-training-set message)."""
    if not anns:
        return "have no annotations"
    if all(a.get("iscrowd", 0) for a in anns):
        return "have only crowd annotations"
    return (f"have only degenerate boxes (side < {MIN_BOX_SIDE:g} px after clipping), crowd annotations "
            "or instances without a valid polygon")


@dataclass
class _Instance:
    """One cleaned, non-crowd annotation."""

    ann_id: int
    box: list[float]  # xyxy, clipped to the image
    label: int
    segmentation: Any  # cleaned polygons / RLE dict, or None
    keypoints: np.ndarray | None  # (P, 3) or None


class CocoDetection(torch.utils.data.Dataset):
    """A COCO JSON and its image folder as ``(image, target)`` pairs.

    ``dataset[i] -> (image (3, H, W) uint8 RGB tensor, target dict)``; the target fields are
    those of ``detection/fields.py``: ``image_id``, ``orig_size`` (2,) int64 (h, w on disk),
    ``gt_boxes`` (M, 4) float32 xyxy, ``gt_classes`` (M,) int64, ``gt_masks`` (M, H, W) uint8
    (when ``use_masks`` and the dataset has segmentations), ``gt_keypoints`` (M, P, 3) float32
    (when ``use_keypoints`` and the dataset has keypoints; instances of classes without
    keypoints get zeros), ``proposal_boxes`` (R, 4) float32 xyxy (when ``proposals`` is set: Fast
    R-CNN; clipped to the image, empty ones dropped, best first). ``transforms(image HWC uint8,
    target of numpy arrays)`` runs before the tensors are made.

    Attributes: ``meta`` (:class:`DatasetMeta`), ``coco`` (pycocotools ``COCO``, crowd
    annotations included), ``ids`` (COCO image ids in dataset order, increasing),
    ``stats`` (counts of clipped/dropped annotations), ``dropped_empty`` (images dropped by
    ``filter_empty``, counted by reason). ``skip_image_ids``: images left out before anything
    is checked (the bad images ``common.dataset_check`` found, when they are to be skipped).
    ``proposals`` (None, or image id -> {"boxes" (R, 4), "scores" (R,)} in the pixels on disk,
    see ``detection.proposals``; every id of ``ids`` must have an entry).
    """

    def __init__(self, ann_file: str | Path, image_root: str | Path,
                 transforms: Callable | None = None, *, filter_empty: bool = False,
                 use_masks: bool = True, use_keypoints: bool = True, skip_image_ids: Iterable = ()):
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        self.transforms = transforms
        self.proposals: dict[int, dict[str, np.ndarray]] | None = None
        self.coco = load_coco_json(self.ann_file, skip_image_ids=skip_image_ids)
        self.meta = meta_from_coco(self.coco, str(self.ann_file))
        self.stats = {"crowd": 0, "boxes_clipped": 0, "boxes_degenerate": 0,
                      "polygons_too_short": 0, "instances_without_polygon": 0, "images_dropped_empty": 0}
        anns = [a for a in self.coco.dataset["annotations"] if not a.get("iscrowd", 0)]
        self.has_masks = use_masks and any(a.get("segmentation") for a in anns)
        self.has_keypoints = use_keypoints and self.meta.num_keypoints > 0
        self._label_of = {cid: i for i, cid in enumerate(self.meta.category_ids)}
        self._kp_cats = {c["id"] for c in self.coco.dataset["categories"] if c.get("keypoints")}

        self.ids: list[int] = []
        self._instances: list[list[_Instance]] = []
        self.dropped_empty: Counter[str] = Counter()  # why images were dropped by filter_empty
        for image_id in sorted(self.coco.imgs):
            anns = self.coco.imgToAnns.get(image_id, [])
            instances = [inst for a in anns if (inst := self._clean(a)) is not None]
            if filter_empty and not instances:
                self.stats["images_dropped_empty"] += 1
                self.dropped_empty[_empty_reason(anns)] += 1
                continue
            self.ids.append(image_id)
            self._instances.append(instances)
        self._warn_once()

    # ---- building ------------------------------------------------------------------------
    def _clean(self, ann: dict) -> _Instance | None:
        """Check one annotation; return the cleaned instance, or None if it is not a target."""
        if ann.get("iscrowd", 0):
            self.stats["crowd"] += 1
            return None
        img = self.coco.imgs[ann["image_id"]]
        h, w = img["height"], img["width"]
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        box = [min(max(x, 0.0), w), min(max(y, 0.0), h), min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)]
        if box != [x, y, x + bw, y + bh]:
            self.stats["boxes_clipped"] += 1
        if box[2] - box[0] < MIN_BOX_SIDE or box[3] - box[1] < MIN_BOX_SIDE:
            self.stats["boxes_degenerate"] += 1
            return None
        segm = None
        if self.has_masks:
            segm = self._clean_segmentation(ann)
            if segm is None:
                return None
        kps = None
        if self.has_keypoints:
            kps = np.zeros((self.meta.num_keypoints, 3), np.float32)
            if ann["category_id"] in self._kp_cats and ann.get("keypoints") is not None:
                kps = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)  # length checked on reading
                kps[kps[:, 2] > 0, :2] += 0.5  # pixel index -> continuous coordinates
        return _Instance(ann["id"], box, self._label_of[ann["category_id"]], segm, kps)

    def _clean_segmentation(self, ann: dict) -> Any:
        """Polygons with < 3 points are dropped (counted); None if no polygon is left. The shape
        of polygons and RLEs was checked by ``common.coco`` when the file was read."""
        segm = ann.get("segmentation")
        if not segm:
            raise DatasetError(f"{self.ann_file}: annotation {ann['id']} (image {ann['image_id']}) has no "
                               f"segmentation while other annotations do; set model.mask_on=false to "
                               f"train on boxes only")
        if isinstance(segm, dict):
            return segm
        polygons, dropped = usable_polygons(segm)
        self.stats["polygons_too_short"] += dropped
        if not polygons:
            self.stats["instances_without_polygon"] += 1
            return None
        return polygons

    def _warn_once(self) -> None:
        s = self.stats
        parts = []
        if s["boxes_clipped"]:
            parts.append(f"{s['boxes_clipped']} boxes clipped to the image")
        if s["boxes_degenerate"]:
            parts.append(f"{s['boxes_degenerate']} degenerate or outside boxes dropped "
                         f"(side < {MIN_BOX_SIDE:g} px after clipping)")
        if s["polygons_too_short"]:
            parts.append(f"{s['polygons_too_short']} polygons with fewer than 3 points dropped")
        if s["instances_without_polygon"]:
            parts.append(f"{s['instances_without_polygon']} instances dropped for having no valid polygon")
        if parts:
            warnings.warn(f"{self.ann_file}: " + "; ".join(parts), DatasetWarning, stacklevel=3)

    # ---- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def aspect_ratios(self) -> list[float]:
        """Width / height of each item, from the JSON (no image is opened)."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def classes_per_image(self) -> list[set[int]]:
        """The labels present in each item (from the JSON; no image is opened)."""
        return [{inst.label for inst in instances} for instances in self._instances]

    def class_counts(self) -> list[int]:
        """Training instances (non-crowd) per label."""
        counts = [0] * self.meta.num_classes
        for instances in self._instances:
            for inst in instances:
                counts[inst.label] += 1
        return counts

    def instance_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every training instance as (boxes (M, 4) float32 xyxy pixels of the image on disk,
        image indices (M,) int64), from the JSON (no image is opened)."""
        boxes = [inst.box for instances in self._instances for inst in instances]
        index = [i for i, instances in enumerate(self._instances) for _ in instances]
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(index, np.int64)

    def load_numpy(self, index: int) -> tuple[np.ndarray, dict]:
        """The image (H, W, 3) uint8 RGB and its target as numpy arrays, before transforms."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        path = self.image_root / info["file_name"]
        image = read_image(path, image_id)
        if image.shape[:2] != (h, w):
            raise DatasetError(f"image file {path} (image id {image_id}) is {image.shape[0]}x{image.shape[1]} "
                               f"(h x w) but {self.ann_file.name} says {h}x{w}")
        instances = self._instances[index]
        target: dict[str, Any] = {
            "image_id": image_id,
            "orig_size": np.array([h, w], np.int64),
            "gt_boxes": np.array([i.box for i in instances], np.float32).reshape(-1, 4),
            "gt_classes": np.array([i.label for i in instances], np.int64),
        }
        if self.has_masks:
            masks = np.zeros((len(instances), h, w), np.uint8)
            for m, inst in zip(masks, instances):
                try:
                    m[:] = self.coco.annToMask({"image_id": image_id, "segmentation": inst.segmentation})
                except Exception as e:  # pycocotools raises bare errors on corrupt RLE strings
                    raise DatasetError(f"{self.ann_file}: annotation {inst.ann_id} (image {image_id}): "
                                       f"segmentation could not be decoded ({e})") from None
            target["gt_masks"] = masks
        if self.has_keypoints:
            target["gt_keypoints"] = np.stack([i.keypoints for i in instances]).astype(np.float32) if instances \
                else np.zeros((0, self.meta.num_keypoints, 3), np.float32)
        if self.proposals is not None:
            boxes = np.clip(self.proposals[image_id]["boxes"], 0, [w, h, w, h]).astype(np.float32)
            target["proposal_boxes"] = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.load_numpy(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return to_tensors(image, target)


def to_tensors(image: np.ndarray, target: dict) -> tuple[torch.Tensor, dict]:
    """(H, W, 3) uint8 numpy + numpy target -> (3, H, W) uint8 tensor + tensor target."""
    image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # HWC -> CHW
    dtypes = {"orig_size": torch.int64, "gt_boxes": torch.float32, "gt_classes": torch.int64,
              "gt_masks": torch.uint8, "gt_keypoints": torch.float32, "proposal_boxes": torch.float32}
    out = {}
    for k, v in target.items():
        if k in dtypes:
            out[k] = torch.as_tensor(np.ascontiguousarray(v), dtype=dtypes[k])
        else:
            out[k] = v
    return image_t, out

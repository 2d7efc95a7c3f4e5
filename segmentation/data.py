"""Semantic segmentation data: label maps from three layouts, joint transforms, batching.

Shape shorthand: N images, H x W one image, K classes (0 = background, 1..K-1 objects).

A dataset returns ``(image, target)``: ``image`` (3, H, W) uint8 RGB after transforms, and
``target`` = {"sem_seg": (H, W) int64 labels with ``ignore_index`` for "don't care",
"image_id", "file_name", "orig_size": (2,) int64 (height, width) on disk}.

Layouts (each a function returning a :class:`SemSegDataset`; the two label-map layouts also list
their files as a :class:`LabelSplit` for the start-up check):
- :func:`load_semantic_dir`: the synthetic shapes dataset (``common.shapes``):
  ``ROOT/{split}/*.jpg``, ``ROOT/{split}_semantic/<stem>.png``, ``ROOT/semantic.json`` =
  {"classes": [...], "ignore_index": 255};
- :func:`load_voc`: Pascal VOC (``JPEGImages/``, ``SegmentationClass/`` palette PNGs whose
  palette *indices* are the labels, ``ImageSets/Segmentation/{split}.txt``, 255 = ignore);
- :func:`load_coco_semantic`: label maps painted from COCO instance annotations with
  pycocotools (contiguous labels 1..K by sorted category id, larger instances painted first so
  small ones stay visible, crowd regions = ignore).

Every label map is checked when read: its size must equal its image's and its values must be
declared classes or the ignore index; the error is one sentence naming the file, the image id
and the value. The tools find all of these before any work (``common.dataset_check``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from common.coco import DatasetError, load_coco_json, usable_polygons
from common.loaders import train_loader
from common.samplers import Batches, InfiniteSampler

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class SegDataError(DatasetError):
    """A dataset file that is missing or inconsistent; the message names the file and the value."""


@dataclass
class SemSegItem:
    """One image on disk and where its labels come from (a PNG or COCO annotations)."""

    image_id: str | int
    image_path: Path
    label_path: Path | None = None
    annotations: list[dict] = field(default_factory=list)   # COCO layout only
    size: tuple[int, int] | None = None                     # COCO layout: (height, width) from the JSON


class SemSegDataset(torch.utils.data.Dataset):
    """Images and label maps; ``transforms`` is an albumentations Compose (image + mask) or None."""

    def __init__(self, items: list[SemSegItem], class_names: list[str], ignore_index: int = 255,
                 transforms=None, coco_label_of: dict[int, int] | None = None):
        self.items = items
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.transforms = transforms
        self.coco_label_of = coco_label_of or {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.items)

    def read_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        item = self.items[i]
        img = cv2.imread(str(item.image_path), cv2.IMREAD_COLOR)
        if img is None:
            what = "does not exist" if not item.image_path.exists() else "cannot be read as an image"
            raise SegDataError(f"image file {item.image_path} (image id {item.image_id}) {what}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def read_label(self, i: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 labels, checked against the declared classes (and ``image_size`` if given)."""
        item = self.items[i]
        if item.label_path is not None:
            lab, source = read_label_png(item.label_path, item.image_id), item.label_path
        else:
            lab, source = self._paint_coco(item), f"the COCO annotations of image {item.image_id}"
        if image_size is not None and lab.shape != tuple(image_size):
            raise SegDataError(f"{source}: label map of image {item.image_id} is {lab.shape[0]}x{lab.shape[1]} "
                               f"(HxW) but the image {item.image_path} is {image_size[0]}x{image_size[1]}")
        values = np.unique(lab)
        bad = values[(values >= self.num_classes) & (values != self.ignore_index)]
        if bad.size:
            raise SegDataError(f"{source}: label map of image {item.image_id} contains class id {int(bad[0])}, "
                               f"outside the {self.num_classes} declared classes 0..{self.num_classes - 1} "
                               f"(ignore index {self.ignore_index})")
        return lab

    def __getitem__(self, i: int) -> tuple[Tensor, dict]:
        item = self.items[i]
        img = self.read_image(i)
        lab = self.read_label(i, img.shape[:2])
        orig = img.shape[:2]
        if self.transforms is not None:
            out = self.transforms(image=img, mask=lab)
            img, lab = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        target = {"sem_seg": torch.from_numpy(np.ascontiguousarray(lab)).long(), "image_id": item.image_id,
                  "file_name": str(item.image_path), "orig_size": torch.tensor(orig, dtype=torch.int64)}
        return image, target

    def _paint_coco(self, item: SemSegItem) -> np.ndarray:
        from pycocotools import mask as mask_utils

        h, w = item.size
        lab = np.zeros((h, w), np.uint8)
        anns = sorted(item.annotations, key=lambda a: -float(a.get("area", 0)))  # large first, small on top
        for ann in anns:
            seg = ann.get("segmentation")
            if isinstance(seg, list):
                seg = usable_polygons(seg)[0]  # shapes were checked on reading; < 3 points are dropped
            if not seg:
                continue
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = seg
            m = mask_utils.decode(rle).astype(bool)
            if ann.get("iscrowd", 0):
                lab[m] = self.ignore_index
            else:
                lab[m] = self.coco_label_of[ann["category_id"]]  # known: checked on reading
        return lab


def read_label_png(path: Path, image_id) -> np.ndarray:
    """(H, W) uint8 class ids from a grayscale or palette PNG (palette indices, not colours)."""
    if not path.is_file():
        raise SegDataError(f"label file {path} for image {image_id} does not exist")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise SegDataError(f"label file {path} for image {image_id} is a {im.mode} image; expected "
                                   f"single-channel class ids or a palette PNG")
            return np.array(im, dtype=np.uint8)                          # palette mode gives the indices
    except OSError as e:
        raise SegDataError(f"label file {path} for image {image_id} cannot be read: {e}") from None


# --------------------------------------------------------------------------- layouts

@dataclass
class LabelSplit:
    """One split of a label-map layout as listed on disk (semantic_dir or VOC); its files are
    checked by ``common.dataset_check.check_label_split`` and again when read."""

    source: Path              # what names the split: semantic_dir's label folder, VOC's list file
    image_root: Path
    items: list[SemSegItem]
    class_names: list[str]
    ignore_index: int = 255

    def check(self, cache_dir: Path | None = None):
        """``common.dataset_check.check_label_split`` of every (image, label map) pair: a SplitCheck."""
        from common.dataset_check import check_label_split

        pairs = [(it.image_id, it.image_path, it.label_path) for it in self.items]
        return check_label_split(self.source, self.image_root, pairs, len(self.class_names), self.ignore_index,
                                 cache_dir=cache_dir)

    def dataset(self, transforms=None, skip_image_ids=()) -> SemSegDataset:
        """The split without ``skip_image_ids`` (the bad images ``common.dataset_check`` found, when
        they are skipped); a missing label file is an error here, anything else when it is read."""
        items = [it for it in self.items if it.image_id not in skip_image_ids]
        for it in items:
            if not it.label_path.is_file():
                raise SegDataError(f"label file {it.label_path} for image {it.image_id} does not exist")
        return SemSegDataset(items, self.class_names, self.ignore_index, transforms)


def semantic_dir_split(root: str | Path, split: str) -> LabelSplit:
    """The shapes layout: ``root/{split}/*.jpg`` + ``root/{split}_semantic/<stem>.png``."""
    root = Path(root)
    meta_path = root / "semantic.json"
    if not meta_path.is_file():
        raise SegDataError(f"{meta_path} does not exist (it lists the classes of the label maps)")
    meta = json.loads(meta_path.read_text())
    image_dir, label_dir = root / split, root / f"{split}_semantic"
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise SegDataError(f"directory {d} does not exist (split {split!r} of {root})")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SegDataError(f"no images in {image_dir}")
    items = [SemSegItem(p.stem, p, label_dir / f"{p.stem}.png") for p in images]
    return LabelSplit(label_dir, image_dir, items, meta["classes"], int(meta.get("ignore_index", 255)))


def voc_split(root: str | Path, split: str, class_names: list[str] | None = None) -> LabelSplit:
    """Pascal VOC: ``root`` holds JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/."""
    root = Path(root)
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise SegDataError(f"VOC split file {list_file} does not exist")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    items = [SemSegItem(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]
    return LabelSplit(list_file, root / "JPEGImages", items, class_names or VOC_CLASSES, 255)


def load_semantic_dir(root: str | Path, split: str, transforms=None, skip_image_ids=()) -> SemSegDataset:
    return semantic_dir_split(root, split).dataset(transforms, skip_image_ids)


def load_voc(root: str | Path, split: str, transforms=None, class_names: list[str] | None = None,
             skip_image_ids=()) -> SemSegDataset:
    return voc_split(root, split, class_names).dataset(transforms, skip_image_ids)


def load_coco_semantic(json_path: str | Path, image_dir: str | Path, transforms=None,
                       skip_image_ids=()) -> SemSegDataset:
    """Label maps painted from COCO instances; classes = ["background"] + categories by id.

    The JSON is read and checked by ``common.coco`` (the detectors' reader); ``skip_image_ids``
    are left out first (the bad images ``common.dataset_check`` found, when they are skipped).
    """
    json_path, image_dir = Path(json_path), Path(image_dir)
    coco = load_coco_json(json_path, skip_image_ids=skip_image_ids)
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
    items = []
    for img_id in sorted(coco.imgs):
        info = coco.imgs[img_id]
        items.append(SemSegItem(img_id, image_dir / info["file_name"], None, coco.imgToAnns.get(img_id, []),
                                (int(info["height"]), int(info["width"]))))
    return SemSegDataset(items, ["background"] + [c["name"] for c in cats], 255, transforms, label_of)


# --------------------------------------------------------------------------- transforms and batches

def build_transforms(train: bool, crop_size: int = 0, scale_range: tuple[float, float] = (0.75, 1.25),
                     hflip: bool = True, color_jitter: float = 0.2, ignore_index: int = 255):
    """albumentations pipeline applied to image and mask together (masks: nearest interpolation).

    Train: random scale in ``scale_range``, pad (mask padding = ignore) and random crop to
    ``crop_size`` (0 = no crop), horizontal flip, colour jitter of strength ``color_jitter``.
    Eval: None (images are evaluated at their own size).
    """
    if not train:
        return None
    import albumentations as A

    ops = []
    if tuple(scale_range) != (1.0, 1.0):
        ops.append(A.RandomScale(scale_limit=(scale_range[0] - 1.0, scale_range[1] - 1.0),
                                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    if crop_size > 0:
        ops += [A.PadIfNeeded(crop_size, crop_size, border_mode=cv2.BORDER_CONSTANT, fill=0,
                              fill_mask=ignore_index),
                A.RandomCrop(crop_size, crop_size)]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        j = color_jitter
        ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j / 10, p=0.8))
    return A.Compose(ops)


def build_train_loader(dataset: SemSegDataset, *, batch_size: int, size_divisibility: int,
                       pad_value: tuple[float, ...], indices: list[int] | None = None, seed: int = 0,
                       start_iter: int = 0, num_workers: int = 0, rank: int = 0, world_size: int = 1):
    """Endless iterator of (ImageList, targets); batch ``start_iter`` first, as a fresh run would see it.

    indices: what the sampler draws from (default: every image once; repeat-factor lists repeat).
    """
    indices = list(range(len(dataset))) if indices is None else list(indices)
    sampler = InfiniteSampler(len(indices), seed=seed, start=start_iter * batch_size, rank=rank,
                              world_size=world_size)
    batches = ([indices[i] for i in batch] for batch in Batches(sampler, batch_size))
    return train_loader(dataset, batches, seed=seed, rank=rank, start_iter=start_iter, num_workers=num_workers,
                        size_divisibility=size_divisibility, pad_value=pad_value)

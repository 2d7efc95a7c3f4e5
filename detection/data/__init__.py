"""COCO data for the detectors: dataset + metadata, albumentations transforms, loaders.

The COCO ``category_id`` <-> contiguous label mapping lives here (``DatasetMeta.category_ids``)
and in ``detection.evaluation`` only.
"""
from .coco import (MIN_BOX_SIDE, CocoDetection, DatasetError, DatasetMeta, DatasetWarning,
                   load_coco_json, meta_from_coco, read_image)
from .loader import AspectRatioGroupedBatches, build_train_loader
from .transforms import DetectionTransforms, build_transforms

__all__ = [
    "MIN_BOX_SIDE", "CocoDetection", "DatasetError", "DatasetMeta", "DatasetWarning", "load_coco_json",
    "meta_from_coco", "read_image", "AspectRatioGroupedBatches", "build_train_loader",
    "DetectionTransforms", "build_transforms",
]

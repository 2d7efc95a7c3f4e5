"""Classification data in the ImageNet folder layout, its augmentation and its loaders.

Shape shorthand: N images, S = ``image_size``.

    DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg  (torchvision's ImageFolder: classes are the
    folder names sorted; both splits must have the same classes)

A dataset item is ``(image, label)``: image (3, S, S) uint8 RGB tensor after the transforms,
label an int in ``0..K-1``. A batch is ``(images, labels)``: (N, 3, S, S) float32 in [0, 1] and
(N,) int64; the model normalises.

Augmentation (albumentations, as for ImageNet): training takes a random resized crop (area
fraction ``crop_scale``, aspect ``crop_ratio``) resized to S x S and a random horizontal flip;
evaluation resizes the shorter side to ``S * eval_resize`` and takes the centre S x S crop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

from common.samplers import Batches, InfiniteSampler, SeededBatches, SeededDataset


class ClassificationDataError(ValueError):
    """A dataset folder that cannot be read; the message names the folder or file."""


class ClassificationTransforms:
    """albumentations pipeline: image (H, W, 3) uint8 -> (S, S, 3) uint8 (see module docstring)."""

    def __init__(self, train: bool, image_size: int, crop_scale=(0.08, 1.0), crop_ratio=(0.75, 4 / 3),
                 hflip: bool = True, eval_resize: float = 1.14):
        s = int(image_size)
        if train:
            steps = [A.RandomResizedCrop(size=(s, s), scale=tuple(crop_scale), ratio=tuple(crop_ratio))]
            if hflip:
                steps.append(A.HorizontalFlip(p=0.5))
        else:
            steps = [A.SmallestMaxSize(max_size=int(round(s * eval_resize))), A.CenterCrop(height=s, width=s)]
        self.pipeline = A.Compose(steps)

    def set_random_seed(self, seed: int) -> None:
        """Reset the pipeline's random generators (the train loader seeds every sample)."""
        self.pipeline.set_random_seed(int(seed))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.pipeline(image=image)["image"]


class ImageFolderDataset(Dataset):
    """One split of an ImageNet-layout folder, read with torchvision's ImageFolder."""

    def __init__(self, folder: str | Path, transforms: ClassificationTransforms | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ClassificationDataError(f"image folder {self.folder} does not exist (expected "
                                          f"{self.folder}/<class>/<image> as in ImageNet)")
        try:
            self.folder_set = ImageFolder(str(self.folder), loader=str)  # items are (path, label)
        except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images in them
            raise ClassificationDataError(f"image folder {self.folder}: {e}") from None
        self.class_names = list(self.folder_set.classes)
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.folder_set.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.folder_set.samples[index]
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)  # grayscale files come back as 3 equal channels
        if bgr is None:
            raise ClassificationDataError(f"could not read image {path} (class {self.class_names[label]})")
        image = np.ascontiguousarray(bgr[:, :, ::-1])  # (H, W, 3) RGB
        if self.transforms is not None:
            image = self.transforms(image)
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), label  # HWC -> CHW


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(image (3, S, S) uint8, label)] -> images (N, 3, S, S) float in [0, 1], labels (N,) int64."""
    images = torch.stack([image for image, _ in batch]).float().div_(255)
    return images, torch.tensor([label for _, label in batch], dtype=torch.int64)


def build_train_loader(dataset: ImageFolderDataset, *, batch_size: int, num_workers: int = 0,
                       seed: int = 0, start_iter: int = 0, rank: int = 0,
                       world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless, resumable iterator of training batches: batch ``start_iter`` first, as a fresh
    loader would yield it; every sample's augmentation is seeded by (seed, rank, batch number)."""
    sampler = InfiniteSampler(len(dataset), seed=seed, start=start_iter * batch_size, rank=rank,
                              world_size=world_size)
    return iter(DataLoader(SeededDataset(dataset),
                           batch_sampler=SeededBatches(Batches(sampler, batch_size), seed, rank, start_iter),
                           num_workers=num_workers, collate_fn=collate))


def build_test_loader(dataset: ImageFolderDataset, *, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A finite loader over the dataset in order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)

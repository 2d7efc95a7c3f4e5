"""A batch of images of different sizes padded into one tensor: what every model takes.

Shared by detection and segmentation (which never import each other).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ImageList:
    """Images of different sizes padded into one tensor.

    tensor:      (N, 3, Hp, Wp) float32; pixels in [0, 1], padding set to ``pad_value``
    image_sizes: list of N (h, w), the size of each image before padding
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def to(self, device) -> "ImageList":
        return ImageList(self.tensor.to(device, non_blocking=True), self.image_sizes)

    def __len__(self) -> int:
        return len(self.image_sizes)

    @staticmethod
    def from_tensors(images: list[Tensor], size_divisibility: int = 32,
                     pad_value: tuple[float, ...] | float = 0.0) -> "ImageList":
        """Pad (3, h, w) images to a common size divisible by ``size_divisibility``.

        uint8 images are scaled to [0, 1]. ``pad_value`` is per channel (use the backbone's
        pixel mean so that padding normalises to zero).
        """
        if len(images) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        if size_divisibility > 1:
            max_h = (max_h + size_divisibility - 1) // size_divisibility * size_divisibility
            max_w = (max_w + size_divisibility - 1) // size_divisibility * size_divisibility
        c = images[0].shape[0]
        batch = torch.empty(len(images), c, max_h, max_w, dtype=torch.float32, device=images[0].device)
        pad = torch.as_tensor(pad_value, dtype=torch.float32, device=batch.device).reshape(-1, 1, 1)
        batch[:] = pad.expand(c, 1, 1) if pad.numel() > 1 else pad
        for img, out in zip(images, batch):
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            out[:, : img.shape[1], : img.shape[2]].copy_(img)
        return ImageList(batch, sizes)


def collate(batch: list[tuple[Tensor, dict]], size_divisibility: int = 32,
            pad_value: float | Sequence[float] = 0.0) -> tuple["ImageList", list[dict]]:
    """``[(image (3, H, W) uint8, target)] * N`` -> ``(ImageList (N, 3, Hp, Wp) in [0, 1], targets)``.

    ``pad_value`` is on the [0, 1] scale (the backbone's pixel mean, so padding normalises to 0).
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return ImageList.from_tensors(images, size_divisibility, pad_value), targets

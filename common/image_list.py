"""A batch of images of different sizes padded into one tensor: what every model takes.

Shared by detection and segmentation (which never import each other).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class ImageList:
    """Images of different sizes padded into one tensor.

    tensor:      (N, 3, Hp, Wp) float32; pixels in [0, 1], padding set to ``pad_value``
    image_sizes: list of N (h, w), the size of each image before padding

    A batch made by ``from_tensors`` from uint8 images keeps its pixels as uint8 until ``tensor``
    is read: the loader copies, pins and sends a quarter of the bytes, and the conversion to
    [0, 1] floats (and the padding) happens once, on the device the batch was sent to.
    """

    def __init__(self, tensor: Tensor, image_sizes: Sequence[tuple[int, int]],
                 pad_value: tuple[float, ...] | float = 0.0):
        self._pixels = tensor  # (N, 3, Hp, Wp): uint8 with zero padding, or float in [0, 1] padded
        self.image_sizes = [tuple(s) for s in image_sizes]
        self.pad_value = pad_value  # on the [0, 1] scale, per channel or one number

    @property
    def tensor(self) -> Tensor:
        """(N, 3, Hp, Wp) float32 in [0, 1], padding at ``pad_value`` (converted on first read)."""
        if self._pixels.dtype == torch.uint8:
            x = self._pixels.float().div_(255.0)
            pad = torch.as_tensor(self.pad_value, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
            for img, (h, w) in zip(x, self.image_sizes):  # (3, Hp, Wp): the rows below, then the columns right
                img[:, h:, :] = pad
                img[:, :h, w:] = pad
            self._pixels = x
        return self._pixels

    def to(self, device) -> "ImageList":
        return ImageList(self._pixels.to(device, non_blocking=True), self.image_sizes, self.pad_value)

    def pin_memory(self) -> "ImageList":
        """Page-locked copy (what ``DataLoader(pin_memory=True)`` calls), for asynchronous GPU copies."""
        return ImageList(self._pixels.pin_memory(), self.image_sizes, self.pad_value)

    def __len__(self) -> int:
        return len(self.image_sizes)

    @staticmethod
    def from_tensors(images: list[Tensor], size_divisibility: int = 32,
                     pad_value: tuple[float, ...] | float = 0.0) -> "ImageList":
        """Pad (3, h, w) images to a common size divisible by ``size_divisibility``.

        uint8 images stay uint8 (scaled to [0, 1] when ``tensor`` is read); float images are used
        as they are. ``pad_value`` is per channel on the [0, 1] scale (use the backbone's pixel
        mean so that padding normalises to zero).
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
        if all(im.dtype == torch.uint8 for im in images):  # stays uint8, zero padding until read
            batch = torch.zeros(len(images), c, max_h, max_w, dtype=torch.uint8, device=images[0].device)
            for img, out in zip(images, batch):
                out[:, : img.shape[1], : img.shape[2]].copy_(img)
            return ImageList(batch, sizes, pad_value)
        batch = torch.empty(len(images), c, max_h, max_w, dtype=torch.float32, device=images[0].device)
        pad = torch.as_tensor(pad_value, dtype=torch.float32, device=batch.device).reshape(-1, 1, 1)
        batch[:] = pad.expand(c, 1, 1) if pad.numel() > 1 else pad
        for img, out in zip(images, batch):
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            out[:, : img.shape[1], : img.shape[2]].copy_(img)
        return ImageList(batch, sizes, pad_value)


def collate(batch: list[tuple[Tensor, dict]], size_divisibility: int = 32,
            pad_value: float | Sequence[float] = 0.0) -> tuple["ImageList", list[dict]]:
    """``[(image (3, H, W) uint8, target)] * N`` -> ``(ImageList (N, 3, Hp, Wp) in [0, 1], targets)``.

    ``pad_value`` is on the [0, 1] scale (the backbone's pixel mean, so padding normalises to 0).
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return ImageList.from_tensors(images, size_divisibility, pad_value), targets

"""Batching detection data: aspect-ratio grouping and the training stream (the test loader is
``common.loaders.build_test_loader``).

Shape shorthand: N images in a batch, Hp x Wp the padded batch size.

The train loader is an infinite iterator of ``(ImageList, list[target])``; everything about it
is decided in the main process from ``seed`` and the iteration number: which indices form batch
``t`` (an :class:`~common.samplers.InfiniteSampler` stream, optionally grouped by aspect ratio)
and the augmentation seed of every sample in it. So the batches are the same with 0 or 8
workers, and ``start_iter=t`` resumes exactly at batch ``t``.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator, Sequence

from torch.utils.data import Dataset

from common.image_list import ImageList
from common.loaders import train_loader
from common.samplers import Batches, InfiniteSampler


class AspectRatioGroupedBatches:
    """Batches of indices whose images are all landscape (w >= h) or all portrait.

    Indices are taken in order from ``sampler`` (an infinite stream) and put in the bucket of
    their orientation; a bucket that reaches ``batch_size`` is yielded and emptied. The result
    is a deterministic function of the stream.
    """

    def __init__(self, sampler: Iterable[int], aspect_ratios: Sequence[float], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.sampler = sampler
        self.aspect_ratios = list(aspect_ratios)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buckets: tuple[list[int], list[int]] = ([], [])  # (landscape, portrait)
        for index in self.sampler:
            bucket = buckets[0] if self.aspect_ratios[index] >= 1.0 else buckets[1]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()


def build_train_loader(dataset: Dataset, *, batch_size: int, num_workers: int, size_divisibility: int,
                       pad_value: float | Sequence[float], seed: int = 0, start_iter: int = 0,
                       aspect_ratio_grouping: bool = True, rank: int = 0, world_size: int = 1,
                       indices: Sequence[int] | None = None,
                       pin_memory: bool = False) -> Iterator[tuple[ImageList, list[dict]]]:
    """An infinite iterator of training batches (``batch_size`` images per process), uint8 until the
    model reads them (see ``ImageList``); ``pin_memory`` (for CUDA) page-locks them for async copies.

    ``start_iter`` restores the data position: the first batch yielded is the one a fresh loader
    would yield as batch number ``start_iter``. Grouping needs ``dataset.aspect_ratios()``.
    ``indices``: the dataset items an epoch is made of (default: each once; a repeat-factor list,
    ``common.samplers.repeat_indices``, holds rare-class images several times).
    """
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0; got {start_iter}")
    indices = list(range(len(dataset))) if indices is None else list(indices)
    if aspect_ratio_grouping:
        sampler = InfiniteSampler(len(indices), seed=seed, rank=rank, world_size=world_size)
        ratios = dataset.aspect_ratios()
        grouped = AspectRatioGroupedBatches((indices[i] for i in sampler), ratios, batch_size)
        # bucket leftovers make the index position of batch t data-dependent: replay the
        # grouping (integers only, no image is read) up to it
        batches: Iterable[list[int]] = itertools.islice(grouped, start_iter, None)
    else:
        sampler = InfiniteSampler(len(indices), seed=seed, rank=rank, world_size=world_size,
                                  start=start_iter * batch_size)
        batches = ([indices[i] for i in batch] for batch in Batches(sampler, batch_size))
    return train_loader(dataset, batches, seed=seed, rank=rank, start_iter=start_iter, num_workers=num_workers,
                        size_divisibility=size_divisibility, pad_value=pad_value, pin_memory=pin_memory)

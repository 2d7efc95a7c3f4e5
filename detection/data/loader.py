"""Batching detection data: collate, aspect-ratio grouping, train and test loaders.

Shape shorthand: N images in a batch, Hp x Wp the padded batch size.

The train loader is an infinite iterator of ``(ImageList, list[target])``; everything about it
is decided in the main process from ``seed`` and the iteration number: which indices form batch
``t`` (an :class:`~common.samplers.InfiniteSampler` stream, optionally grouped by aspect ratio)
and the augmentation seed of every sample in it. So the batches are the same with 0 or 8
workers, and ``start_iter=t`` resumes exactly at batch ``t``.
"""
from __future__ import annotations

import itertools
from functools import partial
from typing import Iterable, Iterator, Sequence

from torch.utils.data import DataLoader, Dataset

from common.image_list import collate  # noqa: F401  (re-exported by detection.data)
from common.samplers import Batches, InfiniteSampler, SeededBatches, SeededDataset
from detection.structures import ImageList


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
                       pin_memory: bool = False) -> Iterator[tuple[ImageList, list[dict]]]:
    """An infinite iterator of training batches (``batch_size`` images per process), uint8 until the
    model reads them (see ``ImageList``); ``pin_memory`` (for CUDA) page-locks them for async copies.

    ``start_iter`` restores the data position: the first batch yielded is the one a fresh loader
    would yield as batch number ``start_iter``. Grouping needs ``dataset.aspect_ratios()``.
    """
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0; got {start_iter}")
    if aspect_ratio_grouping:
        sampler = InfiniteSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
        grouped = AspectRatioGroupedBatches(sampler, dataset.aspect_ratios(), batch_size)
        # bucket leftovers make the index position of batch t data-dependent: replay the
        # grouping (integers only, no image is read) up to it
        batches: Iterable[list[int]] = itertools.islice(grouped, start_iter, None)
    else:
        sampler = InfiniteSampler(len(dataset), seed=seed, rank=rank, world_size=world_size,
                                  start=start_iter * batch_size)
        batches = Batches(sampler, batch_size)
    loader = DataLoader(
        SeededDataset(dataset),
        batch_sampler=SeededBatches(batches, seed, rank, start_iter),
        num_workers=num_workers,
        collate_fn=partial(collate, size_divisibility=size_divisibility, pad_value=pad_value),
        pin_memory=pin_memory,
    )
    return iter(loader)


def build_test_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int, size_divisibility: int,
                      pad_value: float | Sequence[float], rank: int = 0, world_size: int = 1,
                      pin_memory: bool = False) -> DataLoader:
    """A finite loader over the dataset in order; with ``world_size > 1`` rank ``r`` gets the
    items ``r, r + world_size, ...`` (every item on exactly one rank). ``pin_memory``: as above."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=range(rank, len(dataset), world_size),
        num_workers=num_workers,
        collate_fn=partial(collate, size_divisibility=size_divisibility, pad_value=pad_value),
        pin_memory=pin_memory,
    )

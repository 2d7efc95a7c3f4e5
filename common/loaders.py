"""The DataLoaders of both tasks: an endless, resumable training stream and a finite, sharded
test pass, each yielding ``(ImageList (N, 3, Hp, Wp) in [0, 1], list of N target dicts)``.

The task decides *which* indices form training batch ``t`` (detection: an InfiniteSampler stream
grouped by aspect ratio; segmentation: a repeat-factor index list); everything else is here.
"""
from __future__ import annotations

from functools import partial
from typing import Iterable, Iterator, Sequence

from torch.utils.data import DataLoader, Dataset

from common.image_list import ImageList, collate
from common.samplers import SeededBatches, SeededDataset


def train_loader(dataset: Dataset, batches: Iterable[list[int]], *, seed: int, rank: int, start_iter: int,
                 num_workers: int, size_divisibility: int, pad_value: float | Sequence[float],
                 pin_memory: bool = False) -> Iterator[tuple[ImageList, list[dict]]]:
    """An iterator over ``batches`` (index lists, the first being batch number ``start_iter``),
    each sample loaded with the augmentation seed of (seed, rank, batch number, position): the
    batches are the same with 0 or 8 workers and a resumed run repeats the uninterrupted one.
    ``pin_memory`` (for CUDA) page-locks the batches for asynchronous copies."""
    loader = DataLoader(
        SeededDataset(dataset),
        batch_sampler=SeededBatches(batches, seed, rank, start_iter),
        num_workers=num_workers,
        collate_fn=partial(collate, size_divisibility=size_divisibility, pad_value=pad_value),
        pin_memory=pin_memory,
    )
    return iter(loader)


def build_test_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0, size_divisibility: int,
                      pad_value: float | Sequence[float], rank: int = 0, world_size: int = 1,
                      pin_memory: bool = False) -> DataLoader:
    """A finite loader over the dataset in order; with ``world_size > 1`` rank ``r`` gets the
    items ``r, r + world_size, ...`` (every item on exactly one rank). ``pin_memory``: for CUDA."""
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

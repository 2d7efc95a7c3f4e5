"""An infinite, deterministic, resumable, shardable stream of dataset indices.

The global stream is the concatenation of epochs; epoch ``e`` is a permutation of
``range(size)`` drawn from ``numpy.random.default_rng([seed, e])`` (or ``range(size)`` when
``shuffle=False``). Rank ``r`` of ``world_size`` takes the global positions
``r, r + world_size, r + 2 * world_size, ...``. ``start`` skips that many indices of this rank's
stream, so a run resumed after consuming ``k`` indices per rank sees exactly what it would have
seen. Skipping is arithmetic (no replay): resuming deep into training is instant.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import numpy as np
from torch.utils.data import Dataset, Sampler


class InfiniteSampler(Sampler[int]):
    """Yields indices in ``[0, size)`` forever (see the module docstring for the order)."""

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, start: int = 0,
                 rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise ValueError(f"InfiniteSampler needs a non-empty dataset; got size={size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"InfiniteSampler: rank must be in [0, world_size); got rank={rank}, "
                             f"world_size={world_size}")
        if start < 0:
            raise ValueError(f"InfiniteSampler: start must be >= 0; got {start}")
        self.size = int(size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.start = int(start)
        self.rank = int(rank)
        self.world_size = int(world_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of indices in ``epoch`` (a permutation of ``range(size)``)."""
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        pos = self.rank + self.start * self.world_size  # global position of our next index
        epoch, offset = divmod(pos, self.size)
        order = self.epoch_order(epoch)
        while True:
            yield int(order[offset])
            offset += self.world_size
            if offset >= self.size:  # next epoch (several when world_size > size)
                epoch += offset // self.size
                offset %= self.size
                order = self.epoch_order(epoch)


# ---------------------------------------------------------------------------------------------
# batches with per-sample augmentation seeds (shared by the detection and segmentation loaders)


class Batches:
    """Consecutive ``batch_size`` indices of a stream."""

    def __init__(self, sampler: Iterable[int], batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        it = iter(self.sampler)
        while batch := list(itertools.islice(it, self.batch_size)):
            yield batch


class SeededBatches:
    """Attach an augmentation seed to every index: batch ``t`` -> ``[(index, seed), ...]``."""

    def __init__(self, batches: Iterable[list[int]], seed: int, rank: int, first_iter: int):
        self.batches, self.seed, self.rank, self.first_iter = batches, seed, rank, first_iter

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it, batch in enumerate(self.batches, start=self.first_iter):
            seeds = np.random.SeedSequence([self.seed, self.rank, it]).generate_state(len(batch))
            yield [(index, int(s)) for index, s in zip(batch, seeds)]


class SeededDataset(Dataset):
    """``dataset[(index, seed)]``: reseed the dataset's transforms, then read the item."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        transforms = getattr(self.dataset, "transforms", None)
        if hasattr(transforms, "set_random_seed"):
            transforms.set_random_seed(seed)
        return self.dataset[index]

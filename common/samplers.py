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
import math
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
# repeat-factor resampling (LVIS): images with rare classes appear more often in the stream


def class_repeat_factors(classes_per_image: list[set[int]], threshold: float, ignore_classes=(0,)) -> dict[int, float]:
    """LVIS repeat factor of each class (Gupta et al. 2019): r(c) = max(1, sqrt(t / f(c))) with
    f(c) the fraction of images containing class c. ``ignore_classes`` get none."""
    n = max(len(classes_per_image), 1)
    count: dict[int, int] = {}
    for cs in classes_per_image:
        for c in cs:
            count[c] = count.get(c, 0) + 1
    return {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in sorted(count.items()) if c not in ignore_classes}


def repeat_factors(classes_per_image: list[set[int]], threshold: float, ignore_classes=(0,)) -> list[float]:
    """Repeat factor per image: the largest :func:`class_repeat_factors` of the classes it contains
    (1 for an image with none). ``ignore_classes`` (background by default) do not drive repetition."""
    r_class = class_repeat_factors(classes_per_image, threshold, ignore_classes)
    return [max([r_class[c] for c in cs if c in r_class], default=1.0) for cs in classes_per_image]


def repeat_indices(factors: list[float], seed: int = 0) -> list[int]:
    """Expand image indices by their repeat factors with seeded stochastic rounding.

    An image with factor 2.3 appears twice, plus a third time with probability 0.3.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i, r in enumerate(factors):
        k = int(math.floor(r)) + int(rng.random() < r - math.floor(r))
        out.extend([i] * k)
    return out


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

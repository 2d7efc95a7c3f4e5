"""InfiniteSampler: epochs are permutations, deterministic per seed, resumable, sharded."""
import itertools

import numpy as np
import pytest

from common.samplers import InfiniteSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_each_epoch_is_a_permutation_and_epochs_differ():
    stream = take(InfiniteSampler(10, seed=3), 30)
    epochs = [stream[i:i + 10] for i in (0, 10, 20)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != list(range(10))


def test_deterministic_per_seed():
    assert take(InfiniteSampler(50, seed=1), 120) == take(InfiniteSampler(50, seed=1), 120)
    assert take(InfiniteSampler(50, seed=1), 120) != take(InfiniteSampler(50, seed=2), 120)
    assert take(InfiniteSampler(4, shuffle=False), 10) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("world_size", [1, 3])
@pytest.mark.parametrize("start", [0, 1, 7, 23, 50])
def test_start_resumes_exactly(start, world_size):
    for rank in range(world_size):
        full = take(InfiniteSampler(7, seed=5, rank=rank, world_size=world_size), start + 20)
        resumed = take(InfiniteSampler(7, seed=5, rank=rank, world_size=world_size, start=start), 20)
        assert resumed == full[start:]


@pytest.mark.parametrize("size, world_size", [(12, 3), (5, 2), (2, 4)])
def test_ranks_interleave_the_global_stream(size, world_size):
    n = 6
    glob = take(InfiniteSampler(size, seed=9), n * world_size)
    shards = [take(InfiniteSampler(size, seed=9, rank=r, world_size=world_size), n) for r in range(world_size)]
    rebuilt = [shards[i % world_size][i // world_size] for i in range(n * world_size)]
    assert rebuilt == glob


def test_iter_restarts_from_start():
    s = InfiniteSampler(6, seed=0, start=4)
    assert take(s, 8) == take(s, 8)
    assert all(isinstance(i, int) for i in take(s, 3))
    assert np.array_equal(s.epoch_order(0), np.random.default_rng([0, 0]).permutation(6))


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 0}, r"needs a non-empty dataset; got size=0"),
    ({"size": 5, "rank": 2, "world_size": 2}, r"rank must be in \[0, world_size\); got rank=2, world_size=2"),
    ({"size": 5, "start": -1}, r"start must be >= 0; got -1"),
])
def test_bad_arguments(kwargs, message):
    size = kwargs.pop("size")
    with pytest.raises(ValueError, match=message):
        InfiniteSampler(size, **kwargs)

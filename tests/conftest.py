"""Shared fixtures: a tiny synthetic COCO-format dataset made once per test session."""
import os

# idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads
# steal the core the main thread needs (must be set before torch starts OpenMP)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A small shapes dataset (12 train, 6 val images of 96 px), deterministic."""
    from common.shapes import generate_shapes_dataset

    out = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(out, num_train=12, num_val=6, size=96, seed=0)
    return out


@pytest.fixture(autouse=True, scope="session")
def _dataset_check_cache(tmp_path_factory):
    """The start-up dataset check caches into $XDG_CACHE_HOME: a temporary folder, not the user's."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
def _run_ranks(worker, *args, world: int = 2, timeout_s: float = 120.0) -> None:
    """Run ``worker(rank, port, *args)`` in ``world`` processes on a free local port (gloo) and wait.

    fork, not spawn: the children reuse the imported torch instead of paying ~10 s each to import
    it again on a busy 2-core machine; workers set 1 thread before any torch op."""
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(worker, args=(port, *args), nprocs=world, join=False, start_method="fork")
    deadline = time.time() + timeout_s
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"the {world}-process run did not finish in {timeout_s:.0f} s")


@pytest.fixture
def run_ranks():
    """``run_ranks(worker, *args)``: see ``_run_ranks`` (a multi-process gloo run on this machine)."""
    return _run_ranks

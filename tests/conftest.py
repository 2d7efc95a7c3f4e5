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

"""Checkpoints: atomic writes, safe loads (``weights_only=True``), clear architecture mismatches,
and the random-number-generator states that make a resumed run repeat the uninterrupted one.

Everything stored is tensors, numbers, strings, lists and dicts, so no pickle of arbitrary
objects is ever needed to read a checkpoint back.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or made for another model; the message says which."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` so that a crash at any moment leaves either the old or the new file.

    The bytes go to a temporary file in the same directory, are fsync'ed, then renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, "wb", lambda f: torch.save(state, f))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Same guarantee as :func:`save_checkpoint` for a small text file (the ``last_checkpoint`` pointer)."""
    _write_atomic(Path(path), "w", lambda f: f.write(text))


def _write_atomic(path: Path, mode: str, write) -> None:
    """``write(f)`` into a temp file beside ``path``, fsync, then rename over ``path``: a crash at
    any point leaves either the old file or the new one, never a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (not possible on every platform; best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (or a plain state dict) safely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not zipfile.is_zipfile(path):  # random bytes, a cut-off file, another format
            raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file (not a checkpoint, "
                                  "or one cut off while it was written)") from None
        # a torch file holding arbitrary Python objects; torch's own text suggests loading it
        # unsafely, which is never the fix here: name what it holds instead
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()
        what = f" ({detail[0].strip()})" if detail and "WeightsUnpickler" in str(e) else ""
        raise CheckpointError(
            f"checkpoint {path} holds Python objects other than tensors, numbers, strings, lists and "
            f"dicts{what}; it was not written by this toolkit") from None
    except Exception as e:  # truncated zip, empty file ...
        reason = f" ({type(e).__name__}: {str(e).splitlines()[0]})" if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file (not a checkpoint, "
                              f"or one cut off while it was written){reason}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def load_model_state(model: nn.Module, state_dict: dict, source: str, max_keys: int = 5) -> None:
    """Load ``state_dict`` into ``model`` strictly; on a mismatch raise one CheckpointError that lists
    the first few missing, unexpected and shape-mismatched keys. A ``module.`` prefix (from a DDP
    model) is stripped first. ``source`` names where the weights came from (a path). A module may
    name buffers that older checkpoints lack in ``optional_state`` (it then fills them itself).
    """
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    own = model.state_dict()
    optional = {f"{name}.{key}" if name else key for name, m in model.named_modules()
                for key in getattr(m, "optional_state", ())}
    missing = [k for k in own if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        def listing(name, items):
            more = f" (+{len(items) - max_keys} more)" if len(items) > max_keys else ""
            return f"{len(items)} {name}: {', '.join(items[:max_keys])}{more}"
        parts = [listing(n, i) for n, i in (("missing", missing), ("unexpected", unexpected),
                                            ("with a different shape", shapes)) if i]
        raise CheckpointError(f"{source} does not fit {type(model).__name__} (another architecture?); "
                              + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


# ---------------------------------------------------------------- seeding and RNG states


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally ask for deterministic kernels.

    ``deterministic`` turns on ``torch.use_deterministic_algorithms(True, warn_only=True)``: every op
    with a deterministic implementation uses it, and an op without one (on CUDA: torchvision's
    RoIAlign backward and bilinear ``F.interpolate`` backward, both atomicAdd-based) runs anyway with
    a warning naming it, instead of raising at the first training step. Those ops stay
    nondeterministic on CUDA (gradients of the RoI heads and of upsampling differ in the last bits
    from run to run); on the CPU every op this toolkit uses is deterministic. cuDNN autotuning is
    off, and CUBLAS_WORKSPACE_CONFIG (deterministic cuBLAS on CUDA >= 10.2) is set unless already
    set: it only takes effect if no CUDA work ran before this call, so call it first.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def get_rng_state() -> dict:
    """The python, numpy, torch (and CUDA) RNG states as tensors / ints / lists (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def checkpoint_task(state: dict, source: str, default: str | None = None) -> str:
    """"detection" or "segmentation": which training tool wrote the checkpoint ``state``.

    tools/train_det.py stores the dataset's classes as ``metadata["dataset"]``; tools/train_seg.py
    stores a config whose model has an ``arch`` (fcn | unet | unet_resnet). A checkpoint with
    neither gives ``default``, or a CheckpointError when there is none."""
    import yaml

    if (state.get("metadata") or {}).get("dataset"):
        return "detection"
    try:
        model = (yaml.safe_load(state.get("config_yaml") or "") or {}).get("model") or {}
    except yaml.YAMLError:
        model = {}
    if "arch" in model:
        return "segmentation"
    if "rpn" in model or "roi_heads" in model:
        return "detection"
    if default is not None:
        return default
    raise CheckpointError(f"checkpoint {source} has neither dataset metadata (tools/train_det.py) nor a "
                          "segmentation config (tools/train_seg.py); pass --config")

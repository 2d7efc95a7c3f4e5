"""Multi-process training through ``torchrun`` (or any launcher that sets RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT). Single-process runs need none of it: every helper
here works, and does nothing, when the process group is not initialised.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_distributed(timeout_s: float = 1800.0) -> torch.device:
    """Join the process group described by the torchrun environment variables, if any.

    Backend: nccl when CUDA is available (one GPU per process, chosen by LOCAL_RANK), gloo on CPU.
    Returns the device this process should train on.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but {var} is not set; "
                                   "launch with `torchrun --nproc_per_node N ...`")
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://",
                                timeout=timedelta(seconds=timeout_s),
                                **({"device_id": device} if cuda else {}))
    return device


def check_sync_bn(norm: str, device: torch.device, world_size: int) -> None:
    """SyncBN needs CUDA: torch's SyncBatchNorm has no CPU kernel, so with gloo it would fail at the
    first forward. Raise a one-line ValueError at start-up instead (single-process runs keep plain BN)."""
    if norm == "SyncBN" and world_size > 1 and torch.device(device).type != "cuda":
        raise ValueError(f"backbone norm SyncBN needs CUDA (torch's SyncBatchNorm has no CPU kernel), "
                         f"but this run has {world_size} processes on {device}; use "
                         f"model.backbone.norm=BN (or GN) on the CPU")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0: the only process that writes files, logs and shows a progress bar."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_dict(values: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """The mean over processes of each scalar in ``values`` (same keys on every rank), as floats."""
    keys = sorted(values)
    if not keys:
        return {}
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if is_distributed():
        if dist.get_backend() == "nccl":
            flat = flat.cuda()
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
    return dict(zip(keys, flat.cpu().tolist()))


def all_gather_object(obj) -> list:
    """``[obj from rank 0, obj from rank 1, ...]`` for any picklable object."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (e.g. metrics computed on rank 0 only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_ranks_true(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (lets all ranks stop together, none left waiting)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""Mixed precision: which autocast dtype a setting means on a device.

One setting for training (``solver.amp``) and one for evaluation (``test.amp``), each
``off | bf16 | fp16 | auto`` (YAML ``false``/``off`` read as off):

    off   float32 everywhere
    bf16  torch.autocast(device, bfloat16); no gradient scaling (bf16 has float32's range)
    fp16  torch.autocast(device, float16) + GradScaler
    auto  CUDA: bf16 where the GPU supports it, else fp16. CPU: bf16 only where the CPU has
          native bf16 arithmetic (AVX-512 BF16 or AMX); elsewhere off, because oneDNN then
          emulates bf16 through float32 and a step runs many times slower (measured 10-30x on
          an AVX2-only EPYC).
    true  the old boolean ``solver.amp: true``: fp16 on CUDA, off on the CPU (as before)

Autocast only changes the dtype of the layers (convolutions, linear layers); the detection code
keeps every box computation, level assignment, NMS and loss in float32 itself.
"""
from __future__ import annotations

import contextlib
import functools

import torch

SETTINGS = ("off", "bf16", "fp16", "auto")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:  # not Linux: ask oneDNN (true for emulated bf16 too, so only as a fallback)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(setting: bool | str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype a precision setting means on ``device`` (None: run in float32)."""
    device = torch.device(device)
    if setting is False or setting == "off":
        return None
    if setting is True:  # the boolean of older configs: float16 on CUDA only
        return torch.float16 if device.type == "cuda" else None
    if setting not in SETTINGS:
        raise ValueError(f"amp = {setting!r} must be one of {', '.join(SETTINGS)}")
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def autocast(dtype: torch.dtype | None, device: str | torch.device):
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def emulation_note(key: str, setting: bool | str, device: str | torch.device) -> str | None:
    """A sentence when ``setting`` asks for bf16 on a CPU that would only emulate it, else None."""
    if torch.device(device).type == "cpu" and autocast_dtype(setting, device) == torch.bfloat16 \
            and not cpu_has_native_bf16():
        return (f"{key}={setting}: this CPU has no native bf16 (AVX-512 BF16 or AMX), so autocast "
                f"emulates it and runs several times slower than float32 (use {key}=auto or off)")
    return None


def describe(setting: bool | str, device: str | torch.device) -> str:
    """'fp32', 'bf16' or 'fp16': what a setting resolves to, for logs and benchmark tables."""
    dtype = autocast_dtype(setting, device)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

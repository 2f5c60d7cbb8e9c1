"""Device choice, batch transfer and mixed precision, so that the rest of the library never calls ``.cuda()``."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "DeviceError",
    "autocast", "make_grad_scaler", "resolve_precision", "select_device",
    "to_device",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class DeviceError(RuntimeError, ValueError):
    """A requested device that does not exist here or that torch does not know.

    A bad option value (one line, exit 2 on the command line), and still a ``RuntimeError`` for code that caught that.
    """


def select_device(preference: str | torch.device | None = None) -> torch.device:
    """The training device: ``preference`` when given (checked), else the best available, cuda > mps > cpu.

    Raises:
        DeviceError: the requested device is not a device torch knows, or not available on this machine.
    """
    if preference is not None and str(preference) != "auto":
        try:
            device = torch.device(preference)
        except (RuntimeError, TypeError):
            raise DeviceError(f"device {preference!r} is not a device torch knows (use cpu, cuda, cuda:1 or mps)") \
                from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"device {device} was requested but CUDA is not available here (use device=cpu)")
        if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"device {device} was requested but MPS is not available here (use device=cpu)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device} was requested but only {torch.cuda.device_count()} GPU(s) exist")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def to_device(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor of a (nested) dict/list/tuple batch to ``device``; other values are returned unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking and device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device, non_blocking) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` becomes bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 elsewhere.

    CPU autocast is off by default because bf16 matmuls on most CPUs are slower than fp32 and change the numbers;
    ask for ``"bf16"`` explicitly to use it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("fp16 autocast is for GPUs; on CPU use precision=bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision not in ("fp32", "bf16", "fp16"):  # "auto" must go through resolve_precision first
        raise ValueError(f"autocast needs a resolved precision fp32 | bf16 | fp16, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")

"""Argument checks shared by the ops: run before any kernel touches memory, and
name the argument and what was expected."""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(name: str, t, ndim: int, dtypes=FLOAT_DTYPES, device=None, shape=None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all inputs on one device)")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t


def check_nonempty(name: str, t: Tensor) -> None:
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): nothing to compute")


def check_ids(ids, n: int, vocab: int, device) -> Tensor:
    """ids: (n,) integer tensor with values in [0, vocab); returned as int64."""
    check_tensor("ids", ids, 1, (torch.int64, torch.int32), device, (n,))
    ids = ids.long()
    capturing = ids.is_cuda and torch.cuda.is_current_stream_capturing()
    if not capturing:  # a CUDA kernel cannot raise; check here, outside graph capture
        bad = (ids < 0) | (ids >= vocab)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"ids[{row}] = {int(ids[row])} is out of range [0, {vocab})")
    return ids


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0 and t < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return t


def as_f32_vector(name: str, t, n: int, device) -> Tensor:
    """A per-row (n,) vector (any float dtype), returned as contiguous fp32."""
    check_tensor(name, t, 1, None, device, (n,))
    if not (t.is_floating_point() or t.dtype == torch.bool):
        raise TypeError(f"{name} must be a float (or bool mask) tensor, got {t.dtype}")
    return t.float().contiguous()


def rows_contiguous(t: Tensor) -> Tensor:
    """Rows may be strided (row stride >= width) but each row must be dense."""
    return t if t.stride(-1) == 1 and t.stride(0) >= t.shape[-1] else t.contiguous()

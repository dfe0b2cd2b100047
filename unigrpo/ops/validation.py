"""Argument checks shared by the ops: run before any kernel touches memory, and
name the argument and what was expected."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ..config_bounds import Bound

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REAL_FLOAT_DTYPES = FLOAT_DTYPES + (torch.float64,)
# one rule on every backend: 1 / T and logits / T stay ordinary fp32 numbers
TEMPERATURE = Bound(lo=1e-6, hi=1e6)


def check_tensor(name: str, t, ndim: int, dtypes=FLOAT_DTYPES, device=None, shape=None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (a shape without data): the ops compute on cpu or cuda tensors")
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


def check_scalar(name: str, value, bound: Bound, integer: bool = False):
    """A real number (a Python number or a one-element real tensor) within ``bound``,
    returned as a Python float (int with ``integer``)."""
    kind = "an integer" if integer else "a real number"
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool or value.device.type == "meta":
            raise TypeError(f"{name} must be {kind} (a number or a one-element real tensor), "
                            f"got a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}")
        value = value.item()
    wrong_kind = not isinstance(value, numbers.Integral if integer else numbers.Real)
    if isinstance(value, bool) or wrong_kind:
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    bound.check(name, value)
    return int(value) if integer else float(value)


def check_temperature(temperature) -> float:
    return check_scalar("temperature", temperature, TEMPERATURE)


def check_no_grad(**tensors) -> None:
    """The ops differentiate w.r.t. v (or the logits) only: an input that asks for a
    gradient it would not get is refused rather than silently given none."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.requires_grad:
            raise ValueError(f"{name} requires grad, but this op is differentiable only w.r.t. v (x, x_next and "
                             f"v_ref come from the rollout and the frozen reference, the schedule is fixed); "
                             f"pass {name}.detach()")


def as_f32_vector(name: str, t, n: int, device) -> Tensor:
    """A per-row (n,) vector (any float dtype), returned as contiguous fp32."""
    check_tensor(name, t, 1, None, device, (n,))
    if not (t.dtype in REAL_FLOAT_DTYPES or t.dtype == torch.bool):
        raise TypeError(f"{name} must be a float (or bool mask) tensor, got {t.dtype}")
    return t.float().contiguous()


def rows_contiguous(t: Tensor) -> Tensor:
    """Rows may be strided (row stride >= width) but each row must be dense."""
    return t if t.stride(-1) == 1 and t.stride(0) >= t.shape[-1] else t.contiguous()


def refuse_double_backward(op: str) -> None:
    """Call first in an autograd backward: grad mode is on there only under
    ``create_graph=True``, whose second derivative these kernels do not provide."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{op}: double backward (create_graph=True) is not supported: the backward is a fused "
                           "kernel with no derivative of its own")

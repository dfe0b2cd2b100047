"""The compiled kernels: ``unigrpo._C`` for CPU tensors, ``unigrpo._C_cuda`` for
CUDA tensors (csrc/README.md states their ABI; the math is in ``__init__.py``).

Importing this module never raises: a missing or broken extension leaves
``available_for`` false for that device and the reason in ``load_error``, and the
dispatcher falls back. The four functions take and return tensors exactly like
``torch_backend``; outputs are allocated here with ``torch.empty``.
"""

from __future__ import annotations

import functools
import importlib
import threading

import torch
from torch import Tensor

name = "native"

_REQUIRED = ("logprob_forward", "logprob_backward", "sde_row_sums", "sde_row_grad")
ABI_VERSION = 2  # csrc/README.md; 2: the log-sum-exp travels as lse_parts (N, 2) = [max, log sum]
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _load(module: str):
    """(module, None) or (None, why it cannot be used); never raises."""
    try:
        mod = importlib.import_module(f"unigrpo.{module}")
    except Exception as exc:  # ImportError, OSError (bad .so), anything a broken build throws
        return None, f"unigrpo.{module} could not be imported ({type(exc).__name__}: {exc})"
    missing = [f for f in _REQUIRED if not callable(getattr(mod, f, None))]
    if missing:
        return None, f"unigrpo.{module} lacks {', '.join(missing)} (stale build? rebuild the extension)"
    if getattr(mod, "ABI_VERSION", None) != ABI_VERSION:
        return None, (f"unigrpo.{module} has ABI version {getattr(mod, 'ABI_VERSION', None)}, this package needs "
                      f"{ABI_VERSION} (stale build? rebuild the extension)")
    return mod, None


_C, _cpu_error = _load("_C")
_C_cuda, _cuda_error = _load("_C_cuda")

# Why native kernels are unavailable. A missing CUDA module only counts where
# this torch has CUDA at all (a CPU-only build never has one, by design).
_errors = [_cpu_error] + ([_cuda_error] if torch.version.cuda is not None else [])
load_error: str | None = "; ".join(e for e in _errors if e) or None

# Last thread count pushed to _C, per Python thread: OpenMP's thread-count
# setting belongs to the calling OS thread (autograd may call from another one).
_omp = threading.local()


def available_for(device: torch.device) -> bool:
    """Whether the compiled kernels can run on tensors of ``device``."""
    device = torch.device(device)
    if device.type == "cpu":
        return _C is not None
    if device.type == "cuda":
        # device_count() > 0 also proves the driver runs the statically linked CUDA runtime
        return _C_cuda is not None and torch.cuda.is_available() and _cuda_usable()
    return False


def why_unavailable(device: torch.device) -> str:
    """Why :func:`available_for` is false for ``device``, in words a user can act on."""
    device = torch.device(device)
    if device.type == "cpu":
        return _cpu_error or "unknown"
    if device.type != "cuda":
        return f"there are no native kernels for {device.type} tensors"
    if _C_cuda is None:
        return _cuda_error or "this build has no CUDA kernels (build on a machine with nvcc: pip install .)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    # the kernels link the CUDA runtime they were built with statically; a driver older than
    # that runtime shows it no device at all, while torch (with its own runtime) still sees them
    return (f"the native CUDA kernels' runtime finds no device while torch finds {torch.cuda.device_count()}: "
            "the NVIDIA driver is older than the CUDA toolkit they were built with; update the driver, or rebuild "
            "on this machine with an older toolkit (pip install .)")


def describe(device: torch.device) -> str:
    """What runs on ``device`` (for the line a training run starts with)."""
    return f"C++ kernels at ISA level {_C.cpu_isa()}" if torch.device(device).type == "cpu" else "CUDA kernels"


@functools.lru_cache(maxsize=1)
def _cuda_usable() -> bool:
    return _C_cuda.device_count() > 0


def _sync_threads() -> None:
    """Makes the kernels use torch.get_num_threads() threads (a call into _C only when it changed)."""
    n = torch.get_num_threads()
    if getattr(_omp, "threads", None) != n:
        _C.set_num_threads(n)
        _omp.threads = n


def _dtype_code(t: Tensor) -> int:
    try:
        return _DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"native kernels support float32, float16 and bfloat16, got {t.dtype}") from None


def _call(device: torch.device, fn: str, *args) -> None:
    """Runs kernel ``fn`` for tensors on ``device`` (CUDA: on the current stream)."""
    if device.type == "cpu":
        if _C is None:
            raise RuntimeError(f"native CPU kernels unavailable: {_cpu_error}")
        _sync_threads()
        getattr(_C, fn)(*args)
    elif device.type == "cuda":
        if _C_cuda is None:
            raise RuntimeError(f"native CUDA kernels unavailable: {_cuda_error}")
        with torch.cuda.device(device):
            getattr(_C_cuda, fn)(*args, torch.cuda.current_stream(device).cuda_stream)
    else:
        raise RuntimeError(f"native kernels do not support {device.type} tensors")


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _vec(t: Tensor | None) -> Tensor | None:
    """A per-row vector as contiguous fp32 (a no-op for what the ops layer passes)."""
    return None if t is None else t.float().contiguous()


def _rows(logits: Tensor) -> tuple[Tensor, int]:
    """logits with dense rows, and its row stride (>= V)."""
    n, v = logits.shape
    if logits.stride(-1) != 1 or (n > 1 and logits.stride(0) < v):
        logits = logits.contiguous()
    return logits, (logits.stride(0) if n > 1 else v)


def logprob_forward(logits: Tensor, ids: Tensor, inv_temp: float, want_entropy: bool):
    logits, row_stride = _rows(logits)
    n, v = logits.shape
    ids = ids.long().contiguous()
    out = dict(dtype=torch.float32, device=logits.device)
    logp, lse_parts = torch.empty(n, **out), torch.empty((n, 2), **out)
    entropy = torch.empty(n, **out) if want_entropy else None
    _call(logits.device, "logprob_forward", logits.data_ptr(), _dtype_code(logits), n, v, row_stride,
          ids.data_ptr(), float(inv_temp), logp.data_ptr(), lse_parts.data_ptr(), _ptr(entropy))
    return logp, lse_parts, entropy


def logprob_backward(logits, ids, lse_parts, inv_temp, grad_logp, grad_entropy=None, entropy=None):
    logits, row_stride = _rows(logits)
    n, v = logits.shape
    ids = ids.long().contiguous()
    lse_parts, grad_logp = _vec(lse_parts), _vec(grad_logp)
    if grad_entropy is not None and entropy is None:
        raise ValueError("logprob_backward: grad_entropy needs the forward's entropy")
    grad_entropy = _vec(grad_entropy)
    entropy = _vec(entropy) if grad_entropy is not None else None
    grad = torch.empty((n, v), dtype=logits.dtype, device=logits.device)
    _call(logits.device, "logprob_backward", logits.data_ptr(), _dtype_code(logits), n, v, row_stride,
          ids.data_ptr(), lse_parts.data_ptr(), float(inv_temp), grad_logp.data_ptr(), _ptr(grad_entropy),
          _ptr(entropy), grad.data_ptr())
    return grad


def _flow_inputs(v: Tensor, *tensors: Tensor | None) -> list[Tensor | None]:
    """(B, D) inputs of v's dtype, contiguous (a no-op for what the ops layer passes)."""
    out = []
    for t in tensors:
        if t is not None:
            if t.dtype != v.dtype:
                raise ValueError(f"flow kernels need one dtype for all latents, got {t.dtype} and {v.dtype}")
            t = t.contiguous()
        out.append(t)
    return out


def _weight(weight: Tensor | None, v: Tensor) -> tuple[Tensor | None, int]:
    """weight as (D,) (row stride 0) or (B, D) (row stride D), contiguous."""
    if weight is None:
        return None, 0
    if weight.dtype != v.dtype:
        raise ValueError(f"weight must have the latents' dtype {v.dtype}, got {weight.dtype}")
    b, d = v.shape
    if weight.dim() == 1 or weight.shape[0] == 1:
        return weight.reshape(d).contiguous(), 0
    return weight.reshape(b, d).contiguous(), d


def sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, want_s1, want_s2):
    if not (want_s1 or want_s2):
        return None, None
    v = v.contiguous()
    b, d = v.shape
    x, x_next, v_ref = _flow_inputs(v, x if want_s1 else None, x_next if want_s1 else None,
                                    v_ref if want_s2 else None)
    weight, w_stride = _weight(weight if want_s2 else None, v)
    cx, cv = (_vec(cx), _vec(cv)) if want_s1 else (None, None)
    out = dict(dtype=torch.float32, device=v.device)
    s1 = torch.empty(b, **out) if want_s1 else None
    s2 = torch.empty(b, **out) if want_s2 else None
    _call(v.device, "sde_row_sums", _dtype_code(v), b, d, _ptr(x), _ptr(x_next), v.data_ptr(), _ptr(cx),
          _ptr(cv), _ptr(v_ref), _ptr(weight), w_stride, _ptr(s1), _ptr(s2))
    return s1, s2


def sde_row_grad(x, x_next, v, cx, cv, v_ref, weight, a, b):
    v = v.contiguous()
    rows, d = v.shape
    has_a, has_b = a is not None, b is not None
    x, x_next, v_ref = _flow_inputs(v, x if has_a else None, x_next if has_a else None, v_ref if has_b else None)
    weight, w_stride = _weight(weight if has_b else None, v)
    cx, cv = (_vec(cx), _vec(cv)) if has_a else (None, None)
    a, b = _vec(a), _vec(b)
    grad = torch.empty((rows, d), dtype=v.dtype, device=v.device)
    _call(v.device, "sde_row_grad", _dtype_code(v), rows, d, _ptr(x), _ptr(x_next), v.data_ptr(), _ptr(cx),
          _ptr(cv), _ptr(v_ref), _ptr(weight), w_stride, _ptr(a), _ptr(b), grad.data_ptr())
    return grad

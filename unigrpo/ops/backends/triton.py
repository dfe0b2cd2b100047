"""The four backend kernels in Triton (kernels in ``unigrpo.ops.triton``).

Same functions, signatures and output dtypes as ``torch_backend``; this module
allocates the outputs, picks block sizes / num_warps and launches. Importing it
never raises: without a usable triton, ``load_error`` says why and
``available_for`` answers False.

Triton fixes at kernel-definition time whether kernels are compiled for the GPU
or run by its CPU interpreter (``TRITON_INTERPRET=1``). The kernels package is
therefore imported lazily, on the first ``available_for`` or kernel call, so a
test that sets ``TRITON_INTERPRET=1`` before using this backend gets
interpreted kernels even if this module was imported earlier. CPU tensors are
served only when the kernels were defined under the interpreter.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

name = "triton"

load_error: str | None = None
try:  # never let a broken / missing triton break `import unigrpo`
    import triton as _triton  # noqa: F401  (absolute import: the real package)
except Exception as exc:  # pragma: no cover - depends on the environment
    load_error = f"triton import failed: {type(exc).__name__}: {exc}"

_kern = None  # the unigrpo.ops.triton package, once imported

# Launch configuration. GPU: large power-of-2 chunks (memory-bound kernels).
# Interpreter: small chunks so that CPU tests are fast yet still loop / mask.
GPU_BLOCK_V = 4096
GPU_BLOCK_D = 2048
INTERP_BLOCK_V = 256
INTERP_BLOCK_D = 128
INTERP_TARGET_PROGRAMS = 8  # row-sum split target under the interpreter
_MAX_GRID_DIM1 = 65535


def _kernels():
    """Import ``unigrpo.ops.triton`` once; on failure record ``load_error`` and raise."""
    global _kern, load_error
    if _kern is None:
        if load_error is not None:
            raise RuntimeError(f"triton backend unavailable: {load_error}")
        try:
            from .. import triton as mod  # unigrpo.ops.triton (the kernels), not the triton package
        except Exception as exc:
            load_error = f"unigrpo.ops.triton import failed: {type(exc).__name__}: {exc}"
            raise RuntimeError(f"triton backend unavailable: {load_error}") from exc
        _kern = mod
    return _kern


def available_for(device) -> bool:
    """Whether this backend can run on ``device`` (a torch.device, str or Tensor).

    CUDA: whenever CUDA is usable and triton and the kernels import. CPU: only with
    ``TRITON_INTERPRET=1`` set, and only if the kernels were (or are now) defined
    under the interpreter.
    """
    if isinstance(device, Tensor):
        device = device.device
    device = torch.device(device)
    if load_error is not None:
        return False
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            _kernels()
        except RuntimeError:
            return False
        return True
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return False
        try:
            return bool(_kernels().INTERPRETED)
        except RuntimeError:
            return False
    return False


# ----------------------------------------------------------------- helpers


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _num_warps(block: int) -> int:
    return min(8, max(1, block // 256))


def _is_gpu(t: Tensor) -> bool:
    return t.device.type != "cpu"


def _device_ctx(t: Tensor):
    # Triton launches on the current CUDA device: make it the tensor's.
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _block(n: int, cap: int, floor: int = 16) -> int:
    return max(floor, min(cap, _next_pow2(n)))


_sm_count_cache: dict = {}


def _sm_count(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _sm_count_cache:
        _sm_count_cache[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _sm_count_cache[idx]


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def _rows(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _token_block(logits: Tensor, v: int) -> int:
    block = _block(v, GPU_BLOCK_V if _is_gpu(logits) else INTERP_BLOCK_V)
    while _cdiv(v, block) > _MAX_GRID_DIM1:  # backward grid dim 1
        block *= 2
    return block


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------- token side


def logprob_forward(logits: Tensor, ids: Tensor, inv_temp: float, want_entropy: bool):
    k = _kernels()
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    ids = ids.contiguous()
    n, v = logits.shape
    dev = logits.device
    logp = torch.empty(n, dtype=torch.float32, device=dev)
    lse_parts = torch.empty((n, 2), dtype=torch.float32, device=dev)
    entropy = torch.empty(n, dtype=torch.float32, device=dev) if want_entropy else None
    if n == 0:
        return logp, lse_parts, entropy
    if v == 0:
        raise ValueError("logprob_forward: empty vocabulary (V == 0)")
    block = _block(v, GPU_BLOCK_V if _is_gpu(logits) else INTERP_BLOCK_V)
    with _device_ctx(logits):
        k.launch_logprob_forward(
            logits, ids, float(inv_temp), logp, lse_parts, entropy, block_v=block, num_warps=_num_warps(block)
        )
    return logp, lse_parts, entropy


def logprob_backward(logits, ids, lse_parts, inv_temp, grad_logp, grad_entropy=None, entropy=None):
    k = _kernels()
    if grad_entropy is not None and entropy is None:
        raise ValueError("logprob_backward: grad_entropy needs entropy")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    n, v = logits.shape
    grad = torch.empty((n, v), dtype=logits.dtype, device=logits.device)
    if n == 0 or v == 0:
        return grad
    if grad_entropy is None:
        entropy = None
    block = _token_block(logits, v)
    with _device_ctx(logits):
        k.launch_logprob_backward(
            logits,
            ids.contiguous(),
            _f32(lse_parts),
            float(inv_temp),
            _f32(grad_logp),
            _f32(grad_entropy),
            _f32(entropy),
            grad,
            block_v=block,
            num_warps=_num_warps(block),
        )
    return grad


# ------------------------------------------------------------- image side


def _flow_block(v: Tensor, d: int) -> int:
    block = _block(d, GPU_BLOCK_D if _is_gpu(v) else INTERP_BLOCK_D)
    while _cdiv(d, block) > _MAX_GRID_DIM1:
        block *= 2
    return block


def sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, want_s1, want_s2):
    k = _kernels()
    if not (want_s1 or want_s2):
        return None, None
    bsz, d = v.shape
    dev = v.device
    if bsz == 0 or d == 0:
        zeros = lambda: torch.zeros(bsz, dtype=torch.float32, device=dev)  # noqa: E731
        return (zeros() if want_s1 else None), (zeros() if want_s2 else None)
    block = _flow_block(v, d)
    n_chunks = _cdiv(d, block)
    target = 4 * _sm_count(dev) if dev.type == "cuda" else INTERP_TARGET_PROGRAMS
    split = max(1, min(n_chunks, _cdiv(target, bsz), _MAX_GRID_DIM1))
    s1p = torch.empty((bsz, split), dtype=torch.float32, device=dev) if want_s1 else None
    s2p = torch.empty((bsz, split), dtype=torch.float32, device=dev) if want_s2 else None
    with _device_ctx(v):
        k.launch_sde_row_sums(
            _rows(x) if want_s1 else None,
            _rows(x_next) if want_s1 else None,
            _rows(v),
            _f32(cx) if want_s1 else None,
            _f32(cv) if want_s1 else None,
            _rows(v_ref) if want_s2 else None,
            _rows(weight) if want_s2 else None,
            s1p,
            s2p,
            block_d=block,
            split=split,
            num_warps=_num_warps(block),
        )

    def finish(p):
        if p is None:
            return None
        return p.reshape(bsz) if split == 1 else p.sum(-1)

    return finish(s1p), finish(s2p)


def sde_row_grad(x, x_next, v, cx, cv, v_ref, weight, a, b):
    k = _kernels()
    bsz, d = v.shape
    if a is None and b is None:
        return torch.zeros((bsz, d), dtype=v.dtype, device=v.device)
    grad = torch.empty((bsz, d), dtype=v.dtype, device=v.device)
    if bsz == 0 or d == 0:
        return grad
    block = _flow_block(v, d)
    has_a, has_b = a is not None, b is not None
    with _device_ctx(v):
        k.launch_sde_row_grad(
            _rows(x) if has_a else None,
            _rows(x_next) if has_a else None,
            _rows(v),
            _f32(cx) if has_a else None,
            _f32(cv) if has_a else None,
            _rows(v_ref) if has_b else None,
            _rows(weight) if has_b else None,
            _f32(a),
            _f32(b),
            grad,
            block_d=block,
            num_warps=_num_warps(block),
        )
    return grad

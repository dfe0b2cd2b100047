"""Triton kernels for the image (flow-matching) side: per-row sums and the per-row
affine gradient. Contract (see ``unigrpo/ops/backends/__init__.py``); (B, D)
tensors share one dtype among fp32/fp16/bf16 and have contiguous rows of length
D; math is fp32.

  sde_row_sums  s1[b] = sum_d (x_next - cx[b] x - cv[b] v)^2
                s2[b] = sum_d w (v - v_ref)^2
  sde_row_grad  grad[b, d] = a[b] (x_next - cx[b] x - cv[b] v) + b[b] w (v - v_ref)

``w`` is absent (HAS_W False), a (D,) vector (row stride 0) or (B, D) (row stride D).

B is often small (a few images) and D large (latent size), so the sums split
each row over a second grid axis: program (row, part) sums the chunks
part, part + SPLIT, ... and writes one fp32 partial; the caller adds the SPLIT
partials of a row (deterministic, no atomics). The gradient is elementwise on a
(B, cdiv(D, BLOCK_D)) grid.
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_GRID_DIM1 = 65535


@triton.jit
def _sde_row_sums_kernel(
    x_ptr,
    x_next_ptr,
    v_ptr,
    cx_ptr,
    cv_ptr,
    v_ref_ptr,
    w_ptr,
    s1_ptr,
    s2_ptr,
    D,
    stride_w_row,
    SPLIT,
    BLOCK_D: tl.constexpr,
    WANT_S1: tl.constexpr,
    WANT_S2: tl.constexpr,
    HAS_W: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    base = row * D
    cols = tl.arange(0, BLOCK_D)
    acc1 = tl.zeros([BLOCK_D], tl.float32)
    acc2 = tl.zeros([BLOCK_D], tl.float32)
    cx = 0.0
    cv = 0.0
    if WANT_S1:
        cx = tl.load(cx_ptr + row)
        cv = tl.load(cv_ptr + row)
    for start in range(part * BLOCK_D, D, SPLIT * BLOCK_D):
        offs = start + cols
        mask = offs < D
        v = tl.load(v_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        if WANT_S1:
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            xn = tl.load(x_next_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            r = xn - cx * x - cv * v
            acc1 += r * r
        if WANT_S2:
            vr = tl.load(v_ref_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            d = v - vr
            if HAS_W:
                w = tl.load(w_ptr + row * stride_w_row + offs, mask=mask, other=0.0).to(tl.float32)
                acc2 += d * (d * w)
            else:
                acc2 += d * d
    out = row * SPLIT + part
    if WANT_S1:
        tl.store(s1_ptr + out, tl.sum(acc1, axis=0))
    if WANT_S2:
        tl.store(s2_ptr + out, tl.sum(acc2, axis=0))


@triton.jit
def _sde_row_grad_kernel(
    x_ptr,
    x_next_ptr,
    v_ptr,
    cx_ptr,
    cv_ptr,
    v_ref_ptr,
    w_ptr,
    a_ptr,
    b_ptr,
    grad_ptr,
    D,
    stride_w_row,
    BLOCK_D: tl.constexpr,
    HAS_A: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_W: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    base = row * D
    v = tl.load(v_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    if HAS_A:
        a = tl.load(a_ptr + row)
        cx = tl.load(cx_ptr + row)
        cv = tl.load(cv_ptr + row)
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        xn = tl.load(x_next_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        acc += tl.where(a != 0.0, a * (xn - cx * x - cv * v), 0.0)  # a zero coefficient: exactly 0
    if HAS_B:
        b = tl.load(b_ptr + row)
        vr = tl.load(v_ref_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        d = v - vr
        if HAS_W:
            w = tl.load(w_ptr + row * stride_w_row + offs, mask=mask, other=0.0).to(tl.float32)
            d = d * w
        acc += tl.where(b != 0.0, b * d, 0.0)
    tl.store(grad_ptr + base + offs, acc.to(grad_ptr.dtype.element_ty), mask=mask)


def _weight_row_stride(weight, d):
    if weight is None:
        return 0
    return 0 if weight.dim() == 1 else d


def launch_sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, s1_partial, s2_partial, *, block_d, split, num_warps):
    """Fill ``s1_partial`` / ``s2_partial`` ((B, split) fp32, contiguous; None = term
    not wanted) with per-row partial sums; the row sum is ``partial.sum(-1)``.

    (B, D) tensors must be contiguous; ``weight`` None, contiguous (D,) or (B, D).
    Tensors a wanted term does not use may be None. ``split`` <= 65535.
    """
    bsz, d = v.shape
    want_s1 = s1_partial is not None
    want_s2 = s2_partial is not None
    if bsz == 0 or not (want_s1 or want_s2):
        return
    if split < 1 or split > MAX_GRID_DIM1:
        raise ValueError(f"split={split} out of range")
    dummy = v  # stands in for pointers a disabled branch never touches (never an output)
    _sde_row_sums_kernel[(bsz, split)](
        x if want_s1 else dummy,
        x_next if want_s1 else dummy,
        v,
        cx if want_s1 else dummy,
        cv if want_s1 else dummy,
        v_ref if want_s2 else dummy,
        weight if (want_s2 and weight is not None) else dummy,
        s1_partial if want_s1 else s2_partial,
        s2_partial if want_s2 else s1_partial,
        d,
        _weight_row_stride(weight, d),
        split,
        BLOCK_D=block_d,
        WANT_S1=want_s1,
        WANT_S2=want_s2,
        HAS_W=weight is not None,
        num_warps=num_warps,
    )


def launch_sde_row_grad(x, x_next, v, cx, cv, v_ref, weight, a, b, grad, *, block_d, num_warps):
    """Fill ``grad`` ((B, D) contiguous, any float dtype) with
    ``a[:, None] * residual + b[:, None] * w * (v - v_ref)``; a term whose
    coefficient is None is absent (both None gives zeros).
    """
    bsz, d = v.shape
    if bsz == 0 or d == 0:
        return
    if a is None and b is None:
        grad.zero_()
        return
    n_chunks = triton.cdiv(d, block_d)
    if n_chunks > MAX_GRID_DIM1:
        raise ValueError(f"block_d={block_d} gives {n_chunks} > {MAX_GRID_DIM1} chunks per row")
    has_a = a is not None
    has_b = b is not None
    has_w = has_b and weight is not None
    dummy = v
    _sde_row_grad_kernel[(bsz, n_chunks)](
        x if has_a else dummy,
        x_next if has_a else dummy,
        v,
        cx if has_a else dummy,
        cv if has_a else dummy,
        v_ref if has_b else dummy,
        weight if has_w else dummy,
        a if has_a else dummy,
        b if has_b else dummy,
        grad,
        d,
        _weight_row_stride(weight, d) if has_w else 0,
        BLOCK_D=block_d,
        HAS_A=has_a,
        HAS_B=has_b,
        HAS_W=has_w,
        num_warps=num_warps,
    )

"""Triton kernels for per-token log-probabilities (and entropy) over a vocabulary.

Contract (see ``unigrpo/ops/backends/__init__.py``), math in fp32 for
fp32/fp16/bf16 logits whose rows are contiguous (row stride may exceed V):

  forward   z = logits * inv_temp, m = max(z), s = sum exp(z - m),
            logp = (z[id] - m) - log(s), lse_parts = [m, log(s)] (lse = m + log(s), kept apart),
            entropy = log(s) + u / s,  u = sum exp(z - m) * (m - z) >= 0
  backward  q = (z - m) - log(s) (= z - lse, exact at any |z|), p = exp(q)
            grad = inv_temp * (g_logp * (onehot(id) - p) - g_ent * p * (q + H))

The forward is one program per row and a single online pass over V in BLOCK_V
chunks, keeping the running max ``m``, ``s`` and (entropy only) ``u``; when the
max grows to m', ``s <- exp(m - m') s`` and ``u <- exp(m - m') (u + s (m' - m))``.
``logp`` is taken from ``z[id] - m`` (not ``z[id] - lse``) and the entropy from
non-negative terms, so neither loses ~|z| * 1e-7 to cancellation when |z| is
large. One exp per element. Nothing (N, V) is allocated.

The backward is elementwise given lse_parts: grid (N, cdiv(V, BLOCK_V)).

Launchers take preallocated outputs and the launch configuration; choosing
block sizes and allocating is the backend's job (``unigrpo.ops.backends.triton``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Finite "minus infinity" for the running max: keeps every rescale factor and
# s * (m_new - m_old) product finite (0 * inf would be NaN).
_NEG_BIG = tl.constexpr(-3.0e38)

# CUDA caps grid dims 1 and 2 at 65535; dim 0 allows 2**31 - 1.
MAX_GRID_DIM1 = 65535


@triton.jit
def _logprob_fwd_kernel(
    logits_ptr,
    ids_ptr,
    logp_ptr,
    lse_ptr,
    ent_ptr,
    V,
    stride_row,
    inv_temp,
    BLOCK_V: tl.constexpr,
    WANT_ENTROPY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    cols = tl.arange(0, BLOCK_V)

    m = tl.full([], _NEG_BIG, tl.float32)  # running max of z
    s = tl.zeros([], tl.float32)  # sum exp(z - m)
    u = tl.zeros([], tl.float32)  # sum exp(z - m) * (m - z) >= 0   (entropy only)
    for start in range(0, V, BLOCK_V):
        offs = start + cols
        mask = offs < V
        x = tl.load(row_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        z = x * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=0))
        alpha = tl.exp(m - m_new)
        d = m_new - z  # >= 0; +inf on masked lanes
        e = tl.exp(-d)  # 0 on masked lanes
        if WANT_ENTROPY:
            # e == 0 where z = -inf (masked lanes): use d = 0 there, not 0 * inf = NaN.
            u = alpha * (u + s * (m_new - m)) + tl.sum(e * tl.where(e > 0, d, 0.0), axis=0)
        s = s * alpha + tl.sum(e, axis=0)
        m = m_new

    log_s = tl.log(s)
    idx = tl.load(ids_ptr + row).to(tl.int64)
    # an id outside [0, V) (unchecked under CUDA-graph capture) reads nothing and gives NaN, as in CUDA
    in_range = (idx >= 0) & (idx < V)
    z_id = tl.load(row_ptr + idx, mask=in_range, other=float("nan")).to(tl.float32) * inv_temp
    tl.store(logp_ptr + row, (z_id - m) - log_s)
    tl.store(lse_ptr + 2 * row, m)
    tl.store(lse_ptr + 2 * row + 1, log_s)
    if WANT_ENTROPY:
        tl.store(ent_ptr + row, log_s + u / s)


@triton.jit
def _logprob_bwd_kernel(
    logits_ptr,
    ids_ptr,
    lse_ptr,
    grad_logp_ptr,
    grad_ent_ptr,
    ent_ptr,
    grad_ptr,
    V,
    stride_row,
    stride_grad_row,
    inv_temp,
    BLOCK_V: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = offs < V
    # Masked lanes read -inf, so p = 0 there (no overflow; they are not stored).
    x = tl.load(logits_ptr + row * stride_row + offs, mask=mask, other=float("-inf")).to(tl.float32)
    z = x * inv_temp
    m = tl.load(lse_ptr + 2 * row)
    log_s = tl.load(lse_ptr + 2 * row + 1)
    g = tl.load(grad_logp_ptr + row)
    idx = tl.load(ids_ptr + row).to(tl.int64)
    q = (z - m) - log_s
    p = tl.exp(q)
    grad = tl.where(offs == idx, g, 0.0) - g * p
    if HAS_ENTROPY:
        g_ent = tl.load(grad_ent_ptr + row)
        ent = tl.load(ent_ptr + row)
        # p == 0 where z = -inf: the term is 0 there, not 0 * -inf = NaN.
        grad = grad - g_ent * p * tl.where(p > 0, q + ent, 0.0)
    grad = grad * inv_temp
    tl.store(grad_ptr + row * stride_grad_row + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def launch_logprob_forward(logits, ids, inv_temp, logp, lse_parts, entropy, *, block_v, num_warps):
    """Fill ``logp`` and (if not None) ``entropy`` ((N,) fp32) and ``lse_parts`` ((N, 2) fp32).

    ``logits``: (N, V) with ``stride(1) == 1``; ``ids``: (N,) integer, contiguous.
    ``block_v`` must be a power of two. ``entropy=None`` skips the entropy sums.
    """
    n, v = logits.shape
    if n == 0:
        return
    want_entropy = entropy is not None
    _logprob_fwd_kernel[(n,)](
        logits,
        ids,
        logp,
        lse_parts,
        entropy if want_entropy else logp,  # never written when WANT_ENTROPY is False
        v,
        logits.stride(0),
        float(inv_temp),
        BLOCK_V=block_v,
        WANT_ENTROPY=want_entropy,
        num_warps=num_warps,
    )


def launch_logprob_backward(
    logits, ids, lse_parts, inv_temp, grad_logp, grad_entropy, entropy, grad, *, block_v, num_warps
):
    """Fill ``grad`` ((N, V), rows contiguous, any float dtype) with d loss / d logits.

    ``grad_entropy`` and ``entropy`` are both tensors or both None (no entropy term).
    ``cdiv(V, block_v)`` must not exceed ``MAX_GRID_DIM1``.
    """
    n, v = logits.shape
    if n == 0 or v == 0:
        return
    has_entropy = grad_entropy is not None
    n_chunks = triton.cdiv(v, block_v)
    if n_chunks > MAX_GRID_DIM1:
        raise ValueError(f"block_v={block_v} gives {n_chunks} > {MAX_GRID_DIM1} chunks per row")
    _logprob_bwd_kernel[(n, n_chunks)](
        logits,
        ids,
        lse_parts,
        grad_logp,
        grad_entropy if has_entropy else grad_logp,
        entropy if has_entropy else grad_logp,
        grad,
        v,
        logits.stride(0),
        grad.stride(0),
        float(inv_temp),
        BLOCK_V=block_v,
        HAS_ENTROPY=has_entropy,
        num_warps=num_warps,
    )

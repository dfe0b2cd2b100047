"""Token log-probs straight from hidden states and the LM head, in row chunks,
so the (N, V) logits never exist whole: peak extra memory is one chunk's logits
and gradient, flat in N. The backward recomputes each chunk's logits (one extra
matmul) rather than storing them."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config_bounds import Bound
from .dispatch import check_backend_name, get_backend
from .validation import (check_ids, check_nonempty, check_scalar, check_temperature,
                         check_tensor, refuse_double_backward)

DEFAULT_CHUNK_BYTES = 64 * 2**20  # of logits per chunk, in their own dtype


def _chunk_logits(hidden, weight, bias, rows):
    logits = hidden[rows] @ weight.T
    return logits if bias is None else logits + bias


class FusedLinearTokenLogprobsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, inv_temp, want_entropy, chunk, backend):
        n = hidden.shape[0]
        logp = hidden.new_empty(n, dtype=torch.float32)
        lse_parts = logp.new_empty((n, 2))
        entropy = torch.empty_like(logp) if want_entropy else None
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            lp, ls, ent = backend.logprob_forward(_chunk_logits(hidden, weight, bias, rows),
                                                  ids[rows], inv_temp, want_entropy)
            logp[rows], lse_parts[rows] = lp, ls
            if want_entropy:
                entropy[rows] = ent
        ctx.save_for_backward(hidden, weight, bias, ids, lse_parts, entropy)
        ctx.inv_temp, ctx.chunk, ctx.backend = inv_temp, chunk, backend
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        refuse_double_backward("fused_linear_token_logprobs")
        hidden, weight, bias, ids, lse_parts, entropy = ctx.saved_tensors
        n = hidden.shape[0]
        grad_logp = lse_parts.new_zeros(n) if grad_logp is None else grad_logp.float()
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # fp32 accumulators: summing many chunks in bf16 would lose the small ones
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) \
            if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, n, ctx.chunk):
            rows = slice(start, min(start + ctx.chunk, n))
            logits = _chunk_logits(hidden, weight, bias, rows)
            g = ctx.backend.logprob_backward(
                logits, ids[rows], lse_parts[rows], ctx.inv_temp, grad_logp[rows].contiguous(),
                None if grad_entropy is None else grad_entropy[rows].float().contiguous(),
                None if entropy is None else entropy[rows])
            del logits
            if grad_hidden is not None:
                grad_hidden[rows] = g @ weight
            if grad_weight is not None:
                grad_weight.addmm_(g.T.float(), hidden[rows].float())
            if grad_bias is not None:
                grad_bias += g.float().sum(0)
        return (grad_hidden,
                None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype),
                None, None, None, None, None)


def check_lm_head_inputs(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, temperature: float,
                         chunk_size: int | None, chunk_bytes: int, backend: str | None) -> tuple[Tensor, float, int]:
    """The checks of every op on hidden states and an LM head -> (ids, 1 / temperature, rows
    per chunk: ``chunk_size``, or ``chunk_bytes`` of logits in hidden's dtype)."""
    check_backend_name(backend)
    check_tensor("hidden", hidden, 2)
    check_nonempty("hidden", hidden)
    n, h = hidden.shape
    check_tensor("weight", weight, 2, (hidden.dtype,), hidden.device)
    if weight.shape[1] != h:
        raise ValueError(f"weight must have shape (V, {h}) to match hidden (N, {h}), got {tuple(weight.shape)}")
    vocab = weight.shape[0]
    if bias is not None:
        check_tensor("bias", bias, 1, (hidden.dtype,), hidden.device, (vocab,))
    ids = check_ids(ids, n, vocab, hidden.device)
    inv_temp = 1.0 / check_temperature(temperature)
    if chunk_size is None:  # the chunk's logits are of hidden's dtype: bf16 chunks hold twice the rows of fp32
        chunk_size = max(1, chunk_bytes // (hidden.element_size() * vocab))
    chunk_size = check_scalar("chunk_size", chunk_size, Bound(lo=1), integer=True)
    return ids, inv_temp, int(chunk_size)


def fused_linear_token_logprobs(hidden: Tensor, weight: Tensor, ids: Tensor, temperature: float = 1.0,
                                bias: Tensor | None = None, return_entropy: bool = False,
                                chunk_size: int | None = None, backend: str | None = None):
    """log_softmax((hidden @ weight.T + bias) / temperature)[ids], chunked over rows.

    hidden: (N, H) and weight: (V, H) of one float dtype; bias: optional (V,);
    ids: (N,) in [0, V). Returns fp32 (N,) (and entropy with ``return_entropy``),
    differentiable w.r.t. hidden, weight and bias. ``chunk_size`` rows per chunk
    (default: 64 MiB of logits in hidden's dtype) bounds the extra memory, whatever N.
    """
    ids, inv_temp, chunk_size = check_lm_head_inputs(hidden, weight, bias, ids, temperature, chunk_size,
                                                     DEFAULT_CHUNK_BYTES, backend)
    be = get_backend(hidden.device, backend)
    logp, entropy = FusedLinearTokenLogprobsFn.apply(hidden, weight, bias, ids, inv_temp,
                                                     return_entropy, chunk_size, be)
    return (logp, entropy) if return_entropy else logp

"""Per-token log-probabilities (and entropy) from logits, without ever holding
the (N, V) log-softmax: one online pass forward, one pass backward."""

from __future__ import annotations

import torch
from torch import Tensor

from .dispatch import check_backend_name, get_backend
from .validation import (check_ids, check_nonempty, check_temperature, check_tensor,
                         refuse_double_backward, rows_contiguous)


class TokenLogprobsFn(torch.autograd.Function):
    """(logits, ids) -> (logp, entropy or None); differentiable w.r.t. logits."""

    @staticmethod
    def forward(ctx, logits, ids, inv_temp, want_entropy, backend):
        logp, lse_parts, entropy = backend.logprob_forward(logits, ids, inv_temp, want_entropy)
        ctx.save_for_backward(logits, ids, lse_parts, entropy)
        ctx.inv_temp, ctx.backend = inv_temp, backend
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        refuse_double_backward("token_logprobs")
        logits, ids, lse_parts, entropy = ctx.saved_tensors
        if grad_logp is None:
            grad_logp = lse_parts.new_zeros(lse_parts.shape[0])
        grad = ctx.backend.logprob_backward(
            logits, ids, lse_parts, ctx.inv_temp, grad_logp.float().contiguous(),
            None if grad_entropy is None else grad_entropy.float().contiguous(), entropy)
        return grad, None, None, None, None


def prepare_logits(logits: Tensor, ids: Tensor, temperature: float):
    """Validates (logits (N, V), ids (N,), temperature); returns them ready for a backend."""
    check_tensor("logits", logits, 2)
    check_nonempty("logits", logits)
    n, v = logits.shape
    ids = check_ids(ids, n, v, logits.device)
    return rows_contiguous(logits), ids, 1.0 / check_temperature(temperature)


def token_logprobs(logits: Tensor, ids: Tensor, temperature: float = 1.0,
                   return_entropy: bool = False, backend: str | None = None):
    """log_softmax(logits / temperature)[ids] without materialising the softmax.

    logits: (N, V) fp32/fp16/bf16 (rows may be strided); ids: (N,) int64/int32 in
    [0, V). Returns fp32 (N,) log-probs, and with ``return_entropy`` also the
    fp32 (N,) entropy of softmax(logits / temperature). Differentiable w.r.t.
    logits; the gradient has the logits' dtype.
    """
    check_backend_name(backend)
    logits, ids, inv_temp = prepare_logits(logits, ids, temperature)
    be = get_backend(logits.device, backend)
    logp, entropy = TokenLogprobsFn.apply(logits, ids, inv_temp, return_entropy, be)
    return (logp, entropy) if return_entropy else logp

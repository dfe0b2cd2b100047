"""The text GRPO loss straight from hidden states and the LM head, its gradients
formed in the forward.

The loss is a weighted sum of per-token terms, each a function of its token's
log-prob alone, so d loss / d logp is known as soon as a chunk's log-probs are.
Each chunk of rows therefore costs three matmuls and no more: its logits, then
(once the kernel has turned them into the logits' gradient, in place of a second
pass) the hidden states' gradient and the LM head's. The backward only scales
what the forward stored. :func:`fused_linear_token_logprobs` instead recomputes
each chunk's logits in its backward (four matmuls), which any downstream loss
needs but this one does not. Liger-Kernel's ``LigerFusedLinearGRPOLoss`` is the
same idea; the per-token math here is :func:`grpo_token_loss`'s, so the two
paths train the same objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .dispatch import get_backend
from .fused_linear_token_logprobs import _chunk_logits, check_lm_head_inputs
from .grpo_token_loss import grpo_token_loss
from .validation import as_f32_vector, refuse_double_backward


# of logits per chunk, in their own dtype: the chunk and its gradient are the memory beyond
# the LM head's gradient, and 16 MiB keeps the matmuls large (128 rows at V = 32000 in fp32)
CHUNK_BYTES = 16 * 2**20


@dataclass
class FusedGRPOLoss:
    """loss: 0-dim fp32, sum over tokens of weight x per-token GRPO loss; logp and
    entropy: (N,) fp32, detached; stats: :class:`~unigrpo.ops.GRPOTokenLoss`'s, over
    the tokens of nonzero weight."""

    loss: Tensor
    logp: Tensor
    entropy: Tensor
    stats: dict[str, Tensor]


class _FusedLinearGRPOFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, token_loss, inv_temp, chunk, backend, needs):
        n = hidden.shape[0]
        logp = hidden.new_empty(n, dtype=torch.float32)
        entropy = torch.empty_like(logp)
        total = logp.new_zeros(())
        grad_hidden = torch.empty_like(hidden) if needs[0] else None
        # fp32 accumulators: summing many chunks in bf16 would lose the small ones
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs[1] else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if needs[2] else None
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            logits = _chunk_logits(hidden, weight, bias, rows)
            lp, lse_parts, ent = backend.logprob_forward(logits, ids[rows], inv_temp, True)
            logp[rows], entropy[rows] = lp, ent
            if not any(needs):  # no gradient will be asked for: the loss alone
                total += token_loss(lp, rows)
                continue
            with torch.enable_grad():
                lp = lp.detach().requires_grad_()
                chunk_loss = token_loss(lp, rows)
                (grad_lp,) = torch.autograd.grad(chunk_loss, lp)
            total += chunk_loss.detach()
            g = backend.logprob_backward(logits, ids[rows], lse_parts, inv_temp, grad_lp.contiguous())
            del logits
            if grad_hidden is not None:
                grad_hidden[rows] = g @ weight
            if grad_weight is not None:
                grad_weight.addmm_(g.T.float(), hidden[rows].float())
            if grad_bias is not None:
                grad_bias += g.float().sum(0)
        # held on ctx, not saved for backward: the backward scales them in place (no second
        # copy of the LM head's gradient) and so can run once
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(logp, entropy)
        return total, logp, entropy

    @staticmethod
    def backward(ctx, grad_total, _grad_logp, _grad_entropy):
        refuse_double_backward("fused_linear_grpo_loss")
        if ctx.grads is None:
            raise RuntimeError("fused_linear_grpo_loss: its gradients were formed in the forward and used by the "
                               "first backward; a second backward (retain_graph=True) needs a new forward")
        grads, ctx.grads = ctx.grads, None
        out = [None if g is None else g.mul_(grad_total).to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        return (*out, None, None, None, None, None, None)


def fused_linear_grpo_loss(hidden: Tensor, weight: Tensor, ids: Tensor, old_logp: Tensor, advantages: Tensor,
                           token_weights: Tensor, *, temperature: float = 1.0, eps_low: float = 0.2,
                           eps_high: float | None = None, ref_logp: Tensor | None = None, beta: float = 0.0,
                           bias: Tensor | None = None, chunk_size: int | None = None,
                           backend: str | None = None) -> FusedGRPOLoss:
    """sum_i token_weights[i] * grpo_token_loss(logp_i) with
    logp = log_softmax((hidden @ weight.T + bias) / temperature)[ids], chunked over rows.

    hidden: (N, H), weight: (V, H) of one float dtype; bias: optional (V,); ids: (N,) in
    [0, V); old_logp, advantages, token_weights (the aggregation's weight of each token,
    0 for tokens not trained), ref_logp: (N,). The per-token loss is
    :func:`grpo_token_loss`'s (clipped surrogate + beta * k3 to ``ref_logp``).
    Differentiable w.r.t. hidden, weight and bias (one backward per forward);
    ``chunk_size`` rows per chunk (default: 16 MiB of logits in hidden's dtype) bounds the
    extra memory, whatever N: the LM head's fp32 gradient and two chunks of logits.
    """
    ids, inv_temp, chunk_size = check_lm_head_inputs(hidden, weight, bias, ids, temperature, chunk_size,
                                                     CHUNK_BYTES, backend)
    n = hidden.shape[0]
    old_logp = as_f32_vector("old_logp", old_logp, n, hidden.device)
    advantages = as_f32_vector("advantages", advantages, n, hidden.device)
    token_weights = as_f32_vector("token_weights", token_weights, n, hidden.device)
    if ref_logp is not None:
        ref_logp = as_f32_vector("ref_logp", ref_logp, n, hidden.device)
    be = get_backend(hidden.device, backend)
    terms = dict(eps_low=eps_low, eps_high=eps_high, beta=beta)
    grpo_token_loss(old_logp[:1], advantages[:1], token_weights[:1], logp=old_logp[:1],
                    ref_logp=None if ref_logp is None else ref_logp[:1], **terms)  # checks the scalars up front

    def token_loss(lp: Tensor, rows: slice) -> Tensor:
        out = grpo_token_loss(old_logp[rows], advantages[rows], token_weights[rows], logp=lp,
                              ref_logp=None if ref_logp is None else ref_logp[rows], **terms)
        return out.loss.sum()  # grpo_token_loss multiplies by its mask: here the weights

    grad_on = torch.is_grad_enabled()  # the gradients are formed in the forward: only when they will be asked for
    needs = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
             grad_on and bias is not None and bias.requires_grad)
    total, logp, entropy = _FusedLinearGRPOFn.apply(hidden, weight, bias, ids, token_loss, inv_temp,
                                                    chunk_size, be, needs)
    with torch.no_grad():
        stats = grpo_token_loss(old_logp, advantages, token_weights != 0, logp=logp, ref_logp=ref_logp,
                                **terms).stats
    return FusedGRPOLoss(total, logp, entropy, stats)

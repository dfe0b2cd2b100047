"""The four backend kernels in plain PyTorch: the backend of last resort and the
readable statement of what the native and Triton kernels compute. Unlike those,
it materialises (N, V) temporaries."""

from __future__ import annotations

import torch
from torch import Tensor

name = "torch"


def logprob_forward(logits: Tensor, ids: Tensor, inv_temp: float, want_entropy: bool):
    z = logits.float() * inv_temp
    m = z.amax(-1, keepdim=True)
    e = torch.exp(z - m)
    s = e.sum(-1)
    log_s = torch.log(s)
    logp = (z.gather(-1, ids[:, None]) - m).squeeze(-1) - log_s
    lse_parts = torch.stack([m.squeeze(-1), log_s], -1)
    entropy = None
    if want_entropy:
        # terms >= 0: no cancellation; a -inf logit (e = 0) adds 0, not 0 * inf
        entropy = log_s + torch.where(e > 0, e * (m - z), 0.0).sum(-1) / s
    return logp, lse_parts, entropy


def logprob_backward(logits, ids, lse_parts, inv_temp, grad_logp, grad_entropy=None, entropy=None):
    z = logits.float() * inv_temp
    d = (z - lse_parts[:, :1]) - lse_parts[:, 1:]  # z - lse, exact to fp32 whatever |z|
    p = torch.exp(d)
    grad = -grad_logp[:, None] * p
    grad.scatter_add_(-1, ids[:, None], grad_logp[:, None])
    if grad_entropy is not None:  # p = 0 where z = -inf: no gradient there, not 0 * inf
        grad -= torch.where(p > 0, grad_entropy[:, None] * p * (d + entropy[:, None]), 0.0)
    return (grad * inv_temp).to(logits.dtype)


def _residual(x, x_next, v, cx, cv):
    return x_next.float() - cx[:, None] * x.float() - cv[:, None] * v.float()


def _weighted_diff(v, v_ref, weight):
    d = v.float() - v_ref.float()
    return d if weight is None else d * weight.float()


def sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, want_s1, want_s2):
    s1 = _residual(x, x_next, v, cx, cv).square().sum(-1) if want_s1 else None
    s2 = None
    if want_s2:
        d = v.float() - v_ref.float()
        s2 = (d * _weighted_diff(v, v_ref, weight)).sum(-1)
    return s1, s2


def sde_row_grad(x, x_next, v, cx, cv, v_ref, weight, a, b):
    grad = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    # a zero coefficient contributes exactly 0 (a weight-0 penalty with a NaN v_ref is not 0 * NaN)
    if a is not None:
        grad += torch.where(a[:, None] != 0, a[:, None] * _residual(x, x_next, v, cx, cv), 0.0)
    if b is not None:
        grad += torch.where(b[:, None] != 0, b[:, None] * _weighted_diff(v, v_ref, weight), 0.0)
    return grad.to(v.dtype)

"""Plain-PyTorch references of every op in ``unigrpo.ops``: the spec.

Each is the formula of docs/method.md written as directly as PyTorch allows,
materialising whatever it needs. Tests check every backend against these, and
benchmarks time the fast paths against them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .sde_coefficients import sde_coefficients

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _f(t: Tensor) -> Tensor:
    """fp16/bf16 -> fp32 for the math; fp32 and fp64 stay (fp64 for gradcheck)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _rows(t: Tensor) -> Tensor:
    """(B, ...) latents as (B, D)."""
    return t.reshape(t.shape[0], -1)


def token_logprobs(logits: Tensor, ids: Tensor, temperature: float = 1.0, return_entropy: bool = False):
    logp_all = torch.log_softmax(_f(logits) / temperature, dim=-1)
    logp = logp_all.gather(-1, ids[:, None]).squeeze(-1)
    if not return_entropy:
        return logp
    p = logp_all.exp()
    # 0 log 0 = 0 for a -inf logit, in the forward and (no 0 * inf) in the backward
    return logp, -(p * torch.where(p > 0, logp_all, 0.0)).sum(-1)


def fused_linear_token_logprobs(hidden, weight, ids, temperature=1.0, bias=None, return_entropy=False):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return token_logprobs(logits, ids, temperature, return_entropy)


def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), per element."""
    return -torch.minimum(ratio * advantages, ratio.clamp(1 - eps_low, 1 + eps_high) * advantages)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_token_loss(logp, old_logp, advantages, mask, eps_low=0.2, eps_high=None, ref_logp=None, beta=0.0):
    """Per-token GRPO loss (N,) fp32, zero where mask is 0."""
    eps_high = eps_low if eps_high is None else eps_high
    ratio = torch.exp(logp - old_logp)
    loss = clipped_surrogate(ratio, advantages, eps_low, eps_high)
    if ref_logp is not None and beta != 0.0:
        loss = loss + beta * k3_kl(logp, ref_logp)
    return loss * mask


def fused_linear_grpo_loss(hidden, weight, ids, old_logp, advantages, token_weights, temperature=1.0, eps_low=0.2,
                           eps_high=None, ref_logp=None, beta=0.0, bias=None):
    """sum_i token_weights[i] * the per-token GRPO loss of the LM head's log-prob of ids[i]."""
    logp = fused_linear_token_logprobs(hidden, weight, ids, temperature, bias)
    return grpo_token_loss(logp, old_logp, advantages, token_weights, eps_low, eps_high, ref_logp, beta).sum()


def sde_step(x, v, sigma, sigma_next, noise_level, noise):
    """FlowGRPO SDE step on (B, ...) latents; returns (x_next, mean, std (B,), logp (B,))."""
    cx, cv, std, _ = sde_coefficients(sigma, sigma_next, noise_level)
    mean = cx[:, None] * _f(_rows(x)) + cv[:, None] * _f(_rows(v))
    x_next = (mean + std[:, None] * _f(_rows(noise))).to(x.dtype)
    logp = sde_step_logprob(x, x_next, v, sigma, sigma_next, noise_level)
    return x_next.reshape(x.shape), mean.reshape(x.shape), std, logp


def sde_step_logprob(x, x_next, v, sigma, sigma_next, noise_level):
    """Per-sample Gaussian log-likelihood of x_next, mean over dims, (B,) fp32."""
    x, x_next, v = _rows(x), _rows(x_next), _rows(v)
    cx, cv, std, _ = sde_coefficients(sigma, sigma_next, noise_level)
    mean = cx[:, None] * _f(x) + cv[:, None] * _f(v)
    lp = -((_f(x_next) - mean) ** 2) / (2 * std[:, None] ** 2) - torch.log(std)[:, None] - LOG_SQRT_2PI
    return lp.mean(-1)


def velocity_mse(v, v_ref, weight=None):
    """weight: None or of v's shape."""
    v, v_ref = _rows(v), _rows(v_ref)
    weight = None if weight is None else _rows(weight)
    d2 = (_f(v) - _f(v_ref)) ** 2
    if weight is not None:
        d2 = d2 * _f(weight)
    return d2.mean(-1)


def flow_grpo_step_loss(v, v_ref, x, x_next, sigma, sigma_next, noise_level, old_logp, advantages,
                        clip_range=1e-4, penalty="velocity_mse", noise=None):
    """Per-row FlowGRPO clipped surrogate and the unweighted penalty: a tuple
    (surrogate (B,), penalty (B,)), fp32 (fp64 for fp64 inputs).

    noise (the rollout's eps, x_next = mean_old + std * eps): GRPO-Guard's ratio, in
    Flow-Factory's form exp((logp - old_logp) * std + mean((mean - mean_old)^2) / (2 std)).

    penalty: "velocity_mse" (UniGRPO: mean((v - v_ref)^2)), "latent_kl"
    (FlowGRPO: mean((mean - mean_ref)^2) / (2 s^2)) or "none" (zeros). The
    caller weights the penalty (the trainer's beta_v).
    """
    x, x_next, v, v_ref = _rows(x), _rows(x_next), _rows(v), _rows(v_ref)
    logp = sde_step_logprob(x, x_next, v, sigma, sigma_next, noise_level)
    log_ratio = logp - old_logp
    if noise is not None:
        cx, cv, std, _ = sde_coefficients(sigma, sigma_next, noise_level)
        mean = cx[:, None] * _f(x) + cv[:, None] * _f(v)
        mean_old = _f(x_next) - std[:, None] * _f(_rows(noise))
        log_ratio = log_ratio * std + ((mean - mean_old) ** 2).mean(-1) / (2 * std)
    surrogate = clipped_surrogate(torch.exp(log_ratio), advantages, clip_range, clip_range)
    if penalty == "velocity_mse":
        pen = velocity_mse(v, v_ref)
    elif penalty == "latent_kl":
        cx, cv, _, s = sde_coefficients(sigma, sigma_next, noise_level)
        mean = cx[:, None] * _f(x) + cv[:, None] * _f(v)
        mean_ref = cx[:, None] * _f(x) + cv[:, None] * _f(v_ref)
        pen = ((mean - mean_ref) ** 2).mean(-1) / (2 * s**2)
    else:
        pen = torch.zeros_like(surrogate)
    return surrogate, pen

"""Token-level GRPO loss, from log-probs or fused from logits.

From logits, the V-sized work is one kernel pass forward (log-prob, lse and,
optionally, entropy) and one backward (the logits gradient, scaled per row by
d loss / d logp); the ratio, clipping and KL are an O(N) epilogue written once,
below, for every backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config_bounds import Bound
from .dispatch import check_backend_name, get_backend
from .reference import clipped_surrogate, k3_kl
from .token_logprobs import TokenLogprobsFn, prepare_logits
from .validation import REAL_FLOAT_DTYPES, as_f32_vector, check_scalar, check_tensor


@dataclass
class GRPOTokenLoss:
    """loss: (N,) fp32 per-token loss, 0 where masked (aggregate it as you choose);
    logp: (N,) fp32 new log-probs; entropy: (N,) or None; stats: 0-dim fp32
    tensors over unmasked tokens (no host sync): clip_frac_low, clip_frac_high,
    ratio_mean, ratio_max, approx_kl (k3 estimate of KL(old || new)) and, with ref_logp, kl_ref."""

    loss: Tensor
    logp: Tensor
    entropy: Tensor | None
    stats: dict[str, Tensor]


def _masked_mean(x: Tensor, mask: Tensor, count: Tensor) -> Tensor:
    return (x * mask).sum() / count


def grpo_token_loss(old_logp: Tensor, advantages: Tensor, mask: Tensor, *, logp: Tensor | None = None,
                    logits: Tensor | None = None, ids: Tensor | None = None, temperature: float = 1.0,
                    eps_low: float = 0.2, eps_high: float | None = None, ref_logp: Tensor | None = None,
                    beta: float = 0.0, return_entropy: bool = False,
                    backend: str | None = None) -> GRPOTokenLoss:
    """Per-token -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + beta * k3(ref).

    Give either ``logp`` (N,) or ``logits`` (N, V) fp32/fp16/bf16 with ``ids``
    (N,) (fused path; the logits' gradient is computed in one pass). old_logp,
    advantages, mask, ref_logp: (N,) (mask float or bool). ``temperature`` must be
    the rollout's sampling temperature.
    """
    check_backend_name(backend)
    if (logp is None) == (logits is None):
        raise ValueError("give exactly one of logp= or logits= (with ids=)")
    eps_low = check_scalar("eps_low", eps_low, Bound(lo=0, hi=1, hi_open=True))
    eps_high = eps_low if eps_high is None else check_scalar("eps_high", eps_high, Bound(lo=0))
    beta = check_scalar("beta", beta, Bound(lo=0))
    entropy = None
    if logits is not None:
        if ids is None:
            raise ValueError("logits= needs ids= (the sampled token ids)")
        logits, ids, inv_temp = prepare_logits(logits, ids, temperature)
        be = get_backend(logits.device, backend)
        logp, entropy = TokenLogprobsFn.apply(logits, ids, inv_temp, return_entropy, be)
    else:
        check_tensor("logp", logp, 1, REAL_FLOAT_DTYPES)
        if ids is not None:
            raise ValueError("ids= goes with logits=; with logp= the log-probs are already per token")
    n, device = logp.shape[0], logp.device
    old_logp = as_f32_vector("old_logp", old_logp, n, device)
    advantages = as_f32_vector("advantages", advantages, n, device)
    mask = as_f32_vector("mask", mask, n, device)
    logp = logp.float()

    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    loss = clipped_surrogate(ratio, advantages, eps_low, eps_high)
    kl_ref = None
    if ref_logp is not None:
        kl_ref = k3_kl(logp, as_f32_vector("ref_logp", ref_logp, n, device))
        if beta != 0.0:
            loss = loss + beta * kl_ref
    loss = loss * mask

    with torch.no_grad():
        count = mask.sum().clamp_min(1.0)
        r = ratio.detach()
        stats = {
            "clip_frac_low": _masked_mean(((r < 1 - eps_low) & (advantages < 0)).float(), mask, count),
            "clip_frac_high": _masked_mean(((r > 1 + eps_high) & (advantages > 0)).float(), mask, count),
            "ratio_mean": _masked_mean(r, mask, count),
            "ratio_max": torch.where(mask > 0, r, torch.zeros_like(r)).max(),
            "approx_kl": _masked_mean(k3_kl(old_logp, logp.detach()), mask, count),
        }
        if kl_ref is not None:
            stats["kl_ref"] = _masked_mean(kl_ref.detach(), mask, count)
    return GRPOTokenLoss(loss, logp, entropy, stats)

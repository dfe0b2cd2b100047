"""Image-side ops: SDE step and its log-likelihood, velocity MSE, and the
FlowGRPO step loss.

All of them are per-row sums over the latent dims in the forward pass and a
per-row affine combination in the backward, so one autograd function over two
backend kernels serves them all; what differs is an O(B) epilogue, below.
Latents may have any trailing shape: (B, ...) is flattened to (B, D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config_bounds import Bound
from .dispatch import check_backend_name, get_backend
from .reference import LOG_SQRT_2PI, clipped_surrogate
from .sde_coefficients import sde_coefficients
from .validation import (REAL_FLOAT_DTYPES, as_f32_vector, check_no_grad, check_nonempty,
                         check_scalar, check_tensor, refuse_double_backward)

PENALTIES = ("velocity_mse", "latent_kl", "none")


class SdeRowSumsFn(torch.autograd.Function):
    """v -> (s1, s2): s1 = sum_d (x_next - cx x - cv v)^2, s2 = sum_d w (v - v_ref)^2.

    Differentiable w.r.t. v only (x, x_next come from the rollout, v_ref from
    the frozen reference, and the schedule is not learned)."""

    @staticmethod
    def forward(ctx, v, x, x_next, cx, cv, v_ref, weight, want_s1, want_s2, backend):
        s1, s2 = backend.sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, want_s1, want_s2)
        ctx.save_for_backward(v, x, x_next, cx, cv, v_ref, weight)
        ctx.backend = backend
        ctx.set_materialize_grads(False)  # an unused sum gets None, not zeros times its (maybe NaN) inputs
        return s1, s2

    @staticmethod
    def backward(ctx, grad_s1, grad_s2):
        refuse_double_backward("the sde ops")
        v, x, x_next, cx, cv, v_ref, weight = ctx.saved_tensors
        a = None if grad_s1 is None else -2 * cv * grad_s1.float()  # d s1 / d v = -2 cv res
        b = None if grad_s2 is None else 2 * grad_s2.float().contiguous()  # d s2 / d v = 2 w (v - v_ref)
        if a is None and b is None:
            return (None,) * 10
        grad_v = ctx.backend.sde_row_grad(x, x_next, v, cx, cv, v_ref, weight,
                                          None if a is None else a.contiguous(), b)
        return (grad_v,) + (None,) * 9


def _check_batched(name: str, t) -> None:
    """t: a non-empty float tensor (B, ...) with at least 2 dims."""
    check_tensor(name, t, max(t.dim(), 2) if isinstance(t, Tensor) else 2)
    check_nonempty(name, t)


def _flat(name: str, t: Tensor, like: Tensor | None = None) -> Tensor:
    """(B, ...) -> contiguous (B, D); ``like``: must match its shape, dtype and device."""
    if like is None:
        _check_batched(name, t)
    else:
        check_tensor(name, t, like.dim(), (like.dtype,), like.device, like.shape)
    return t.reshape(t.shape[0], -1).contiguous()


def _per_row(name: str, value, b: int, device) -> Tensor:
    """A real scalar (broadcast) or a (B,) vector, as fp32 (B,)."""
    if not isinstance(value, Tensor) or value.dim() == 0:
        return torch.full((b,), check_scalar(name, value, Bound()), dtype=torch.float32, device=device)
    return as_f32_vector(name, value, b, device)


def _sigmas(sigma, sigma_next, b: int, device) -> tuple[Tensor, Tensor]:
    sigma, sigma_next = _per_row("sigma", sigma, b, device), _per_row("sigma_next", sigma_next, b, device)
    if not (sigma.is_cuda and torch.cuda.is_current_stream_capturing()):
        # written as "not inside" so that NaN fails too
        if not bool(((sigma > 0) & (sigma <= 1)).all()):
            raise ValueError(f"sigma must lie in (0, 1], got values in [{sigma.min():.4g}, {sigma.max():.4g}]"
                             + (" and NaN" if bool(sigma.isnan().any()) else ""))
        if not bool(((sigma_next >= 0) & (sigma_next < sigma)).all()):
            raise ValueError("sigma_next must satisfy 0 <= sigma_next < sigma (sigma runs 1 -> 0), and not be NaN")
    return sigma, sigma_next


def _noise_level(a, allow_zero: bool = False) -> float:
    return check_scalar("noise_level", a, Bound(lo=0, lo_open=not allow_zero))


def _weight(weight, v: Tensor, sample_shape: tuple[int, ...]) -> Tensor | None:
    """None, one sample's shape (broadcast over the batch) or the latents' shape, exactly."""
    if weight is None:
        return None
    check_tensor("weight", weight, weight.dim() if isinstance(weight, Tensor) else 1, REAL_FLOAT_DTYPES, v.device)
    shape = tuple(weight.shape)
    if shape == sample_shape:
        return weight.to(v.dtype).reshape(v.shape[1]).contiguous()
    if shape == (v.shape[0], *sample_shape):
        return weight.to(v.dtype).reshape(v.shape).contiguous()
    raise ValueError(f"weight must have one sample's shape {sample_shape} or the latents' shape "
                     f"{(v.shape[0], *sample_shape)}, got {shape}")


def sde_step_logprob(x: Tensor, x_next: Tensor, v: Tensor, sigma, sigma_next, noise_level: float = 0.7,
                     backend: str | None = None) -> Tensor:
    """Gaussian log-likelihood of x_next under the SDE step from x with velocity v.

    x, x_next, v: (B, ...) one float dtype; sigma, sigma_next: (B,) or scalars.
    Returns fp32 (B,): mean over dims of log N(x_next; mean, std^2).
    Differentiable w.r.t. v (only: x, x_next, sigma requiring grad are refused).
    """
    check_backend_name(backend)
    check_no_grad(x=x, x_next=x_next, sigma=sigma, sigma_next=sigma_next)
    v2 = _flat("v", v)
    x2, xn2 = _flat("x", x, v), _flat("x_next", x_next, v)
    sigma, sigma_next = _sigmas(sigma, sigma_next, v2.shape[0], v2.device)
    cx, cv, std, _ = sde_coefficients(sigma, sigma_next, _noise_level(noise_level))
    be = get_backend(v2.device, backend)
    s1, _ = SdeRowSumsFn.apply(v2, x2, xn2, cx, cv, None, None, True, False, be)
    return -s1 / (2 * std**2 * v2.shape[1]) - torch.log(std) - LOG_SQRT_2PI


def sde_step(x: Tensor, v: Tensor, sigma, sigma_next, noise_level: float = 0.7, noise: Tensor | None = None,
             generator: torch.Generator | None = None, backend: str | None = None):
    """One FlowGRPO SDE step (noise_level 0: the deterministic Euler step).

    x, v: (B, ...) one float dtype; noise: like x (drawn from ``generator`` when
    absent). Returns (x_next like x, mean fp32 like x, std (B,) fp32, logp (B,)
    fp32). logp is computed from x_next as stored in x's dtype, exactly as the
    training path recomputes it, so the first-update ratio is 1; it is None for
    noise_level 0.
    """
    check_backend_name(backend)
    _check_batched("x", x)
    check_tensor("v", v, x.dim(), (x.dtype,), x.device, x.shape)
    if noise is not None:
        check_tensor("noise", noise, x.dim(), REAL_FLOAT_DTYPES, x.device, x.shape)
    a = _noise_level(noise_level, allow_zero=True)
    sigma, sigma_next = _sigmas(sigma, sigma_next, x.shape[0], x.device)
    cx, cv, std, _ = sde_coefficients(sigma, sigma_next, a)
    view = (-1,) + (1,) * (x.dim() - 1)
    mean = cx.view(view) * x.float() + cv.view(view) * v.float()
    if a == 0:
        return mean.to(x.dtype), mean, std, None
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    x_next = (mean + std.view(view) * noise.float()).to(x.dtype)
    with torch.no_grad():
        logp = sde_step_logprob(x, x_next, v, sigma, sigma_next, a, backend)
    return x_next, mean, std, logp


def velocity_mse(v: Tensor, v_ref: Tensor, weight: Tensor | None = None, backend: str | None = None) -> Tensor:
    """Per-sample mean over dims of weight * (v - v_ref)^2, fp32 (B,).

    v, v_ref: (B, ...) one float dtype; weight: one sample's shape or v's shape.
    Differentiable w.r.t. v (only: v_ref or weight requiring grad are refused)."""
    check_backend_name(backend)
    check_no_grad(v_ref=v_ref, weight=weight)
    v2 = _flat("v", v)
    vr2 = _flat("v_ref", v_ref, v)
    be = get_backend(v2.device, backend)
    _, s2 = SdeRowSumsFn.apply(v2, None, None, None, None, vr2, _weight(weight, v2, tuple(v.shape[1:])),
                               False, True, be)
    return s2 / v2.shape[1]


@dataclass
class FlowStepLoss:
    """loss: (B,) fp32 per-step clipped surrogate; logp: (B,) fp32;
    penalty: (B,) fp32 unweighted penalty term (velocity MSE, latent KL or zeros),
    not included in ``loss`` (the caller weights it);
    velocity_mse: (B,) fp32 always; stats: 0-dim fp32 tensors (no host sync);
    ratio: (B,) fp32, the importance ratio the surrogate clipped (detached)."""

    loss: Tensor
    logp: Tensor
    penalty: Tensor
    velocity_mse: Tensor
    stats: dict[str, Tensor]
    ratio: Tensor


def _guard_log_ratio(v: Tensor, x: Tensor, x_next: Tensor, noise: Tensor, cx: Tensor, cv: Tensor,
                     std: Tensor) -> Tensor:
    """mean(eps * (mean - mean_old)) per row, with mean_old = x_next - std * eps (fp32)."""
    eps = noise.float()
    mean = cx[:, None] * x.float() + cv[:, None] * v.float()
    return (eps * (mean - x_next.float() + std[:, None] * eps)).mean(-1)


def flow_grpo_step_loss(v: Tensor, v_ref: Tensor, x: Tensor, x_next: Tensor, sigma, sigma_next,
                        old_logp: Tensor, advantages: Tensor, *, noise_level: float = 0.7,
                        clip_range: float = 1e-4, penalty: str = "velocity_mse", noise: Tensor | None = None,
                        backend: str | None = None) -> FlowStepLoss:
    """FlowGRPO clipped surrogate on one denoising step per row, and a penalty.

    v (policy velocity, differentiable), v_ref (frozen reference), x, x_next:
    (B, ...) one float dtype; sigma, sigma_next: (B,) or scalars; old_logp,
    advantages: (B,). ``loss`` is the clipped surrogate alone; ``penalty`` is
    returned unweighted, for the caller to weight and add: "velocity_mse"
    (UniGRPO, mean (v - v_ref)^2), "latent_kl" (FlowGRPO, mean (mean - mean_ref)^2
    / (2 s^2)) or "none" (constant zeros). Differentiable w.r.t. v.
    One kernel pass reads v, v_ref, x, x_next once for both sums.

    ``noise`` (the rollout's step noise eps as x_next stores it, (x_next - mean_old) / std;
    the drawn noise for fp32 latents; shape of v):
    the ratio is GRPO-Guard's normalised one, exp(mean(eps * (mean - mean_old))), which
    is FlowGRPO's log-ratio times std plus mean((mean - mean_old)^2) / (2 std): the
    drift term that pulls the plain ratio's mean below 1 is removed and every step's
    log-ratio is on one scale. ``old_logp`` is then unused (the noise carries mean_old).
    """
    check_backend_name(backend)
    if penalty not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
    clip_range = check_scalar("clip_range", clip_range, Bound(lo=0))
    check_no_grad(x=x, x_next=x_next, v_ref=v_ref, sigma=sigma, sigma_next=sigma_next)
    v2 = _flat("v", v)
    x2, xn2, vr2 = _flat("x", x, v), _flat("x_next", x_next, v), _flat("v_ref", v_ref, v)
    b, d = v2.shape
    sigma, sigma_next = _sigmas(sigma, sigma_next, b, v2.device)
    old_logp = as_f32_vector("old_logp", old_logp, b, v2.device)
    advantages = as_f32_vector("advantages", advantages, b, v2.device)
    if noise is not None:
        check_no_grad(noise=noise)
        check_tensor("noise", noise, v.dim(), REAL_FLOAT_DTYPES, v.device, v.shape)
    cx, cv, std, s = sde_coefficients(sigma, sigma_next, _noise_level(noise_level))
    be = get_backend(v2.device, backend)
    s1, s2 = SdeRowSumsFn.apply(v2, x2, xn2, cx, cv, vr2, None, True, True, be)

    logp = -s1 / (2 * std**2 * d) - torch.log(std) - LOG_SQRT_2PI
    if noise is None:
        ratio = torch.exp(logp - old_logp)
    else:
        ratio = torch.exp(_guard_log_ratio(v2, x2, xn2, noise.reshape(b, -1), cx, cv, std))
    loss = clipped_surrogate(ratio, advantages, clip_range, clip_range)
    vmse = s2 / d
    # mean - mean_ref = cv (v - v_ref), so FlowGRPO's KL is a cv^2 / (2 s^2)-weighted velocity MSE
    pen = {"velocity_mse": vmse, "latent_kl": cv**2 / (2 * s**2) * vmse, "none": torch.zeros_like(vmse)}[penalty]
    with torch.no_grad():
        r = ratio.detach()
        stats = {
            "clip_frac": (((r < 1 - clip_range) & (advantages < 0)) | ((r > 1 + clip_range) & (advantages > 0)))
            .float().mean(),
            "ratio_mean": r.mean(),
            "ratio_max": r.max(),
            "velocity_mse": vmse.detach().mean(),
            "penalty": pen.detach().mean(),
        }
    return FlowStepLoss(loss, logp, pen, vmse, stats, r)

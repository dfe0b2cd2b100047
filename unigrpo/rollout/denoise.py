"""The denoising loop shared by rollouts (SDE, recorded) and evaluation (ODE).

All randomness is drawn up front — the initial noise and one noise tensor per
step — so the loop itself is a fixed sequence of identical steps. That is what
lets the CUDA path capture one step in a CUDA graph and replay it K times with
exactly the eager result for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..cuda_graphs import CapturedGraph
from ..policy import ImageContext, UnifiedPolicy


@dataclass
class Trajectory:
    """latents: (B, K + 1, *latent_shape), latents[:, k] is the state at sigmas[k]
    (latents[:, 0] the initial noise, latents[:, K] the final latents);
    step_logprobs: fp32 (B, K), log-likelihood of each SDE transition (None for ODE);
    model_calls: velocity evaluations made (K without CFG, 2K with it)."""

    latents: Tensor
    step_logprobs: Tensor | None
    model_calls: int


def draw_noise(policy: UnifiedPolicy, batch: int, steps: int, noise_level: float,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """(x at sigma = 1, (K, B, *latent_shape) step noise or None for ODE), fp32 on the policy's device."""
    shape = (batch, *policy.latent_shape)
    x1 = torch.randn(shape, generator=generator, device=policy.device)
    eps = torch.randn((steps, *shape), generator=generator, device=policy.device) if noise_level > 0 else None
    return x1, eps


def guided_velocity(policy: UnifiedPolicy, x: Tensor, sigma: Tensor, ctx: ImageContext,
                    uncond: ImageContext | None, guidance_scale: float) -> Tensor:
    """One conditional velocity; with CFG (ablation) v_u + w (v_c - v_u), two calls."""
    v = policy.velocity(x, sigma, ctx)
    if uncond is None or guidance_scale == 1.0:
        return v
    v_u = policy.velocity(x, sigma, uncond)
    return v_u + guidance_scale * (v - v_u)


def denoise(policy: UnifiedPolicy, ctx: ImageContext, sigmas: Tensor, noise_level: float, x1: Tensor,
            step_noise: Tensor | None, *, uncond: ImageContext | None = None, guidance_scale: float = 1.0,
            record: bool = True, graph: "GraphedStep | None" = None, sde_steps: int | None = None,
            ode_graph: "GraphedStep | None" = None) -> Trajectory:
    """Run K = len(sigmas) - 1 steps from x1. noise_level 0 is the ODE (Euler) sampler.

    ``sde_steps``: only the first ``sde_steps`` steps are stochastic, the rest
    deterministic (their log-prob is recorded as 0: they are not trained).
    ``graph``: a :class:`GraphedStep` at ``noise_level`` to replay instead of
    running eagerly (CUDA); ``ode_graph``: one at noise level 0 for the
    deterministic steps of an SDE rollout."""
    k_steps = sigmas.numel() - 1
    if noise_level > 0 and (step_noise is None or step_noise.shape[0] != k_steps):
        raise ValueError(f"step_noise must hold {k_steps} steps of noise for an SDE rollout")
    b = x1.shape[0]
    sig = sigmas.to(device=x1.device, dtype=torch.float32)
    x = x1
    latents = [x] if record else None
    logps = []
    for k in range(k_steps):
        stochastic = noise_level > 0 and (sde_steps is None or k < sde_steps)
        noise = step_noise[k] if stochastic else None
        step_graph = graph if stochastic or noise_level == 0 else ode_graph
        if step_graph is not None:
            x, logp = step_graph(x, sig[k], sig[k + 1], noise)
        else:
            x, logp = sde_transition(policy, x, sig[k].expand(b), sig[k + 1].expand(b),
                                     noise_level if stochastic else 0.0, noise, ctx, uncond, guidance_scale)
        if logp is None and noise_level > 0:
            logp = x.new_zeros(b, dtype=torch.float32)  # a deterministic step of an SDE rollout: not trained
        if record:
            latents.append(x)
        if logp is not None:
            logps.append(logp)
    calls = k_steps * (2 if uncond is not None and guidance_scale != 1.0 else 1)
    return Trajectory(torch.stack(latents, 1) if record else x[:, None],
                      torch.stack(logps, 1) if logps else None, calls)


def sde_transition(policy, x, sigma, sigma_next, noise_level, noise, ctx, uncond, guidance_scale):
    """x_k -> (x_{k+1}, logp fp32 (B,) or None): one velocity (two with CFG), one fused SDE step."""
    v = guided_velocity(policy, x, sigma, ctx, uncond, guidance_scale)
    x_next, _, _, logp = ops.sde_step(x, v, sigma, sigma_next, noise_level, noise=noise)
    return x_next, logp


class GraphedStep:
    """One denoising step captured in a CUDA graph with static buffers.

    Built for a fixed batch, context and noise level (:class:`CapturedGraph`);
    each call copies the step's inputs into the static buffers and replays. The noise is an input
    (drawn up front), so replay equals eager for the same seed."""

    def __init__(self, policy, ctx, uncond, guidance_scale, noise_level, x_like: Tensor, warmup: int = 2):
        if not x_like.is_cuda:
            raise ValueError("CUDA graphs need CUDA tensors")
        b = x_like.shape[0]
        self.x = x_like.clone()
        self.sigma = torch.full((b,), 0.5, device=x_like.device)
        self.sigma_next = torch.full((b,), 0.4, device=x_like.device)
        self.noise = torch.zeros_like(x_like) if noise_level > 0 else None
        self.captured = CapturedGraph(lambda: sde_transition(policy, self.x, self.sigma, self.sigma_next,
                                                             noise_level, self.noise, ctx, uncond, guidance_scale),
                                      warmup_iters=warmup)

    def __call__(self, x, sigma, sigma_next, noise):
        self.x.copy_(x)
        self.sigma.fill_(0).add_(sigma)
        self.sigma_next.fill_(0).add_(sigma_next)
        if noise is not None:
            self.noise.copy_(noise)
        out_x, out_logp = self.captured.replay()
        return out_x.clone(), None if out_logp is None else out_logp.clone()

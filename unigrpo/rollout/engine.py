"""Group rollouts: prompt -> sampled reasoning -> SDE-denoised image -> reward.

Without CFG each round is one linear branch: one velocity per denoising step,
with the text context's KV cache computed once per round and reused at every
step. On CUDA the denoising step replays a captured CUDA graph.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..policy import UnifiedPolicy, concat_tokens
from ..rewards import WeightedRewards
from ..sampling import generate_reasoning
from .batch import RolloutBatch
from .config import RolloutConfig
from .denoise import GraphedStep, denoise, draw_noise


def trained_steps_per_round(k: int, cfg: RolloutConfig) -> int:
    """How many of the K steps each round trains (FlowGRPO's timestep fraction), at least one."""
    return max(1, round(cfg.timestep_fraction * k))


def train_step_mask(b: int, k: int, cfg: RolloutConfig, generator: torch.Generator | None) -> torch.Tensor:
    """bool (B, K): which denoising steps each round trains (FlowGRPO's timestep fraction)."""
    n = trained_steps_per_round(k, cfg)
    if cfg.timestep_window == "early":  # also the stochastic window when sde_window_only
        mask = torch.zeros(b, k, dtype=torch.bool)
        mask[:, :n] = True
        return mask
    order = torch.rand(b, k, generator=generator).argsort(1)
    return order < n


def _sde_steps(cfg: RolloutConfig) -> int | None:
    """How many leading steps are stochastic (None: all): with ``sde_window_only``, the trained window."""
    return trained_steps_per_round(cfg.num_inference_steps, cfg) if cfg.sde_window_only else None


@torch.no_grad()
def generate_rounds(policy: UnifiedPolicy, prompts: Sequence[str], metadata: Sequence[Any],
                    rewards: WeightedRewards, cfg: RolloutConfig,
                    generator: torch.Generator | None = None, *, keep_noise: bool = False) -> RolloutBatch:
    """G = cfg.num_generations rounds for each prompt, batched, rewards included.

    prompts: P strings; metadata: P objects handed to the rewards (e.g. the
    task's Prompt). ``generator`` (on the policy's device) seeds everything.
    ``keep_noise``: keep the SDE steps' noise in the batch (``step_noise``)."""
    cfg.validate()
    if len(prompts) != len(metadata):
        raise ValueError(f"{len(prompts)} prompts but {len(metadata)} metadata entries")
    if not prompts:
        raise ValueError("prompts is empty")
    g = cfg.num_generations
    texts = [p for p in prompts for _ in range(g)]
    meta = [m for m in metadata for _ in range(g)]
    b = len(texts)

    batch = policy.encode_prompts(texts, reasoning=True)
    r = generate_reasoning(policy, batch.ids, batch.mask, max_new_tokens=cfg.max_reasoning_tokens,
                           cuda_graph=cfg.use_cuda_graph, temperature=cfg.temperature, top_p=cfg.top_p,
                           top_k=cfg.top_k, generator=generator)
    ids, mask = concat_tokens(batch.ids, batch.mask, r.ids, r.mask)
    ctx = policy.image_context(ids, mask)
    uncond = None
    if cfg.guidance_scale != 1.0:
        empty = policy.encode_prompts([""] * b, reasoning=False)
        uncond = policy.image_context(empty.ids, empty.mask)

    sigmas = policy.sigma_schedule(cfg.num_inference_steps, cfg.timestep_shift)
    x1, eps = draw_noise(policy, b, cfg.num_inference_steps, cfg.noise_level, generator)
    if cfg.share_initial_noise:  # a group differs only by its reasoning and its trained steps' noise
        x1 = x1[::g].repeat_interleave(g, 0)
    sde_steps = _sde_steps(cfg)
    graph = ode_graph = None
    if cfg.use_cuda_graph and x1.is_cuda:
        graph = GraphedStep(policy, ctx, uncond, cfg.guidance_scale, cfg.noise_level, x1)
        if sde_steps is not None and sde_steps < cfg.num_inference_steps and cfg.noise_level > 0:
            ode_graph = GraphedStep(policy, ctx, uncond, cfg.guidance_scale, 0.0, x1)
    traj = denoise(policy, ctx, sigmas, cfg.noise_level, x1, eps, uncond=uncond,
                   guidance_scale=cfg.guidance_scale, graph=graph, sde_steps=sde_steps, ode_graph=ode_graph)
    images = policy.latents_to_images(traj.latents[:, -1])
    reward = rewards(images.cpu(), texts, meta)
    cpu_gen = generator if generator is None or generator.device.type == "cpu" else None
    return RolloutBatch(
        ids=ids, mask=mask, reasoning_start=batch.ids.shape[1], reasoning_logprobs=r.logprobs,
        truncated=r.truncated, sigmas=sigmas, latents=traj.latents,
        step_logprobs=traj.step_logprobs, train_steps=train_step_mask(b, cfg.num_inference_steps, cfg, cpu_gen),
        images=images, rewards=reward.total, reward_components=reward.components,
        group_ids=torch.arange(len(prompts)).repeat_interleave(g), prompts=texts, metadata=meta,
        temperature=r.temperature, noise_level=cfg.noise_level, guidance_scale=cfg.guidance_scale,
        step_noise=eps.transpose(0, 1) if keep_noise and eps is not None else None)

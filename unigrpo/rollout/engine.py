"""Group rollouts: prompt -> sampled reasoning -> SDE-denoised image -> reward, and
with ``rollout.max_rounds`` > 1 the multi-round episode: after each image the model
looks at it (its clean latents enter the sequence) and writes a reflection that
ends either on a stop token that asks for another image or on the end-of-episode
token; the reward is on the final image.

Without CFG each episode is one linear chain: one velocity per denoising step,
with the image's context (the KV cache of everything before it) computed once
per image and reused at every step. On CUDA the denoising step replays a
captured CUDA graph.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..policy import UnifiedPolicy
from ..rewards import EpisodeImages, WeightedRewards
from ..sampling import generate_reasoning
from .batch import RolloutBatch
from .config import RolloutConfig
from .denoise import GraphedStep, denoise, draw_noise
from .episodes import play_episodes


def trained_steps_per_image(k: int, cfg: RolloutConfig) -> int:
    """How many of an image's K steps are trained (FlowGRPO's timestep fraction), at least one."""
    return max(1, round(cfg.timestep_fraction * k))


def train_step_mask(b: int, k: int, cfg: RolloutConfig, generator: torch.Generator | None) -> torch.Tensor:
    """bool (B, K): which denoising steps each of B images trains (FlowGRPO's timestep fraction)."""
    n = trained_steps_per_image(k, cfg)
    if cfg.timestep_window == "early":  # also the stochastic window when sde_window_only
        mask = torch.zeros(b, k, dtype=torch.bool)
        mask[:, :n] = True
        return mask
    order = torch.rand(b, k, generator=generator).argsort(1)
    return order < n


def _sde_steps(cfg: RolloutConfig) -> int | None:
    """How many leading steps are stochastic (None: all): with ``sde_window_only``, the trained window."""
    return trained_steps_per_image(cfg.num_inference_steps, cfg) if cfg.sde_window_only else None


@torch.no_grad()
def generate_episodes(policy: UnifiedPolicy, prompts: Sequence[str], metadata: Sequence[Any],
                    rewards: WeightedRewards, cfg: RolloutConfig,
                    generator: torch.Generator | None = None, *, keep_noise: bool = False) -> RolloutBatch:
    """G = cfg.num_generations episodes for each prompt, batched, rewards included.

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
    b, k_steps, rounds = len(texts), cfg.num_inference_steps, cfg.max_rounds

    prompt = policy.encode_prompts(texts, reasoning=True)
    uncond = None
    if cfg.guidance_scale != 1.0:
        empty = policy.encode_prompts([""] * b, reasoning=False)
        uncond = policy.image_context(empty.ids, empty.mask)
    sigmas = policy.sigma_schedule(k_steps, cfg.timestep_shift)
    noises = []

    def write(ids, mask, images):
        return generate_reasoning(policy, ids, mask, max_new_tokens=cfg.max_reasoning_tokens,
                                  cuda_graph=cfg.use_cuda_graph, temperature=cfg.temperature, top_p=cfg.top_p,
                                  top_k=cfg.top_k, generator=generator, images=images)

    def draw(r, rows, ctx):
        x1, eps = draw_noise(policy, b, k_steps, cfg.noise_level, generator)
        if cfg.share_initial_noise:  # a group differs only by its reasoning and its trained steps' noise
            x1 = x1[::g].repeat_interleave(g, 0)
        un = uncond
        if rows.numel() < b:
            x1, eps, un = x1[rows], None if eps is None else eps[:, rows], None if un is None else un.select(rows)
        noises.append(eps)
        return _denoise_image(policy, ctx, un, sigmas, x1, eps, cfg)

    ep = play_episodes(policy, prompt, rounds, write, draw)
    dev = prompt.ids.device
    latents = torch.zeros((b, rounds, k_steps + 1, *policy.latent_shape), device=dev)
    step_logprobs = torch.zeros((b, rounds, k_steps), device=dev)
    step_noise = torch.zeros((b, rounds, k_steps, *policy.latent_shape), device=dev) if keep_noise else None
    for r, ((rows, traj), eps) in enumerate(zip(ep.trajectories, noises)):
        latents[rows, r] = traj.latents
        if traj.step_logprobs is not None:  # None: an ODE rollout (noise level 0), nothing to train on
            step_logprobs[rows, r] = traj.step_logprobs
        if step_noise is not None and eps is not None:
            step_noise[rows, r] = eps.transpose(0, 1)
    present = ep.images.present
    episode = None
    if rewards.wants_episode and rounds > 1:  # every drawn image, for rewards that judge more than the last
        each = _decode_rounds(policy, ep.images)
        images = each[torch.arange(b, device=each.device), ep.rounds_used.to(each.device) - 1]
        episode = EpisodeImages(each.cpu(), present.cpu())
    else:
        images = policy.latents_to_images(ep.final_latents())
    reward = rewards(images.cpu(), texts, meta, episode)
    total = reward.total
    if cfg.extra_round_cost:
        total = total - cfg.extra_round_cost * (ep.rounds_used - 1).to(total)
    cpu_gen = generator if generator is None or generator.device.type == "cpu" else None
    text = ep.text
    return RolloutBatch(
        ids=text.ids, mask=text.mask, reasoning_start=text.start, reasoning_logprobs=text.logprobs,
        truncated=text.truncated, sigmas=sigmas, latents=latents, step_logprobs=step_logprobs,
        train_steps=train_step_mask(b * rounds, k_steps, cfg, cpu_gen).view(b, rounds, k_steps).to(dev)
        & present[:, :, None], image_slots=ep.images.slots, image_present=present,
        images=images, rewards=total, reward_components=reward.components,
        group_ids=torch.arange(len(prompts)).repeat_interleave(g), prompts=texts, metadata=meta,
        temperature=text.temperature, noise_level=cfg.noise_level, guidance_scale=cfg.guidance_scale,
        step_noise=step_noise if keep_noise and cfg.noise_level > 0 else None)


def _decode_rounds(policy: UnifiedPolicy, seen) -> torch.Tensor:
    """uint8 (B, R, H, W, 3): every image the episodes drew, each decoded once (zeros where an
    episode had ended), on the device the policy decodes to."""
    first = policy.latents_to_images(seen.latents[:, 0])
    each = first.new_zeros((first.shape[0], seen.rounds, *first.shape[1:]))
    each[:, 0] = first
    for r in range(1, seen.rounds):
        rows = seen.present[:, r]
        if bool(rows.any()):
            each[rows.to(each.device), r] = policy.latents_to_images(seen.latents[rows, r]).to(each.device)
    return each


def _denoise_image(policy: UnifiedPolicy, ctx, uncond, sigmas, x1, eps, cfg: RolloutConfig):
    """One image's SDE trajectory from x1 (CUDA graphs on CUDA)."""
    sde_steps = _sde_steps(cfg)
    graph = ode_graph = None
    if cfg.use_cuda_graph and x1.is_cuda:
        graph = GraphedStep(policy, ctx, uncond, cfg.guidance_scale, cfg.noise_level, x1)
        if sde_steps is not None and sde_steps < cfg.num_inference_steps and cfg.noise_level > 0:
            ode_graph = GraphedStep(policy, ctx, uncond, cfg.guidance_scale, 0.0, x1)
    return denoise(policy, ctx, sigmas, cfg.noise_level, x1, eps, uncond=uncond, guidance_scale=cfg.guidance_scale,
                   graph=graph, sde_steps=sde_steps, ode_graph=ode_graph)

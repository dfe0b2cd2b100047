"""Deterministic generation for evaluation: reason (optionally), then draw with the
ODE (Euler) sampler, the rollouts' denoising loop at noise level 0."""

from __future__ import annotations

from typing import Sequence

import torch

from ..policy import UnifiedPolicy, concat_tokens
from ..sampling import generate_reasoning
from .denoise import denoise

__all__ = ["sample_images"]


@torch.no_grad()
def sample_images(policy: UnifiedPolicy, texts: Sequence[str], *, reasoning: bool = True, steps: int = 40,
                  temperature: float = 1.0, max_new_tokens: int = 48, seed: int = 0,
                  batch_size: int = 128, guidance_scale: float = 1.0) -> tuple[torch.Tensor, list[str], list[bool]]:
    """Reason (optionally) then draw, deterministically for a seed.

    ``guidance_scale`` > 1: classifier-free guidance against the empty prompt (evaluation
    only: the trainer never samples with it unless ``rollout.guidance_scale`` says so).

    Returns (uint8 images (N, H, W, 3), N generated reasoning strings ("" when
    ``reasoning`` is False), N truncation flags).  The initial noise of image
    i depends only on ``seed`` and i, so modes are paired sample by sample."""
    n = len(texts)
    gen_noise = torch.Generator().manual_seed(seed)
    noise_all = torch.randn((n, *policy.latent_shape), generator=gen_noise)
    gen_text = torch.Generator(device=policy.device).manual_seed(seed + 1)
    sigmas = policy.sigma_schedule(steps)
    images, reasonings, truncated = [], [], []
    for start in range(0, n, batch_size):
        chunk = list(texts[start:start + batch_size])
        batch = policy.encode_prompts(chunk, reasoning=reasoning)
        ids, mask = batch.ids, batch.mask
        if reasoning:
            r = generate_reasoning(policy, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                                   generator=gen_text)
            ids, mask = concat_tokens(ids, mask, r.ids, r.mask)
            reasonings += policy.decode(r.ids, r.mask)
            truncated += r.truncated.tolist()
        else:
            reasonings += [""] * len(chunk)
            truncated += [False] * len(chunk)
        x1 = noise_all[start:start + len(chunk)].to(policy.device)
        uncond = None
        if guidance_scale != 1.0:
            empty = policy.encode_prompts([""] * len(chunk), reasoning=False)
            uncond = policy.image_context(empty.ids, empty.mask)
        traj = denoise(policy, policy.image_context(ids, mask), sigmas, 0.0, x1, None, record=False,
                       uncond=uncond, guidance_scale=guidance_scale)
        images.append(policy.latents_to_images(traj.latents[:, -1]))
    return torch.cat(images), reasonings, truncated

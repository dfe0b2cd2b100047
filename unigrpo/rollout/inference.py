"""Deterministic generation for evaluation: reason (optionally), then draw with the
ODE (Euler) sampler, the rollouts' denoising loop at noise level 0.

Images are drawn in chunks of ``batch_size`` whose randomness depends only on the seed and
the chunk's index, so :func:`sharded_sampling` can split the chunks between the ranks of a
job and every rank still gets the images one process would draw."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from ..policy import UnifiedPolicy, concat_tokens
from ..sampling import generate_reasoning
from .denoise import denoise

__all__ = ["sample_images", "sharded_sampling"]

_SHARD: ContextVar[tuple[int, int]] = ContextVar("unigrpo_sample_shard", default=(0, 1))


@contextmanager
def sharded_sampling(rank: int, ranks: int) -> Iterator[None]:
    """Within, :func:`sample_images` draws chunks ``rank, rank + ranks, ...`` and gathers the
    rest from the other ranks of the default process group: every rank must make the
    same calls (a task's ``evaluate`` run on all of them)."""
    token = _SHARD.set((rank, ranks))
    try:
        yield
    finally:
        _SHARD.reset(token)


@torch.no_grad()
def sample_images(policy: UnifiedPolicy, texts: Sequence[str], *, reasoning: bool = True, steps: int = 40,
                  temperature: float = 1.0, max_new_tokens: int = 48, seed: int = 0,
                  batch_size: int = 128, guidance_scale: float = 1.0) -> tuple[torch.Tensor, list[str], list[bool]]:
    """Reason (optionally) then draw, deterministically for a seed.

    ``guidance_scale`` > 1: classifier-free guidance against the empty prompt (evaluation
    only: the trainer never samples with it unless ``rollout.guidance_scale`` says so).

    Returns (uint8 images (N, H, W, 3), N generated reasoning strings ("" when
    ``reasoning`` is False), N truncation flags).  The initial noise of image
    i depends only on ``seed`` and i, so modes are paired sample by sample; the reasoning
    of chunk k (images ``k * batch_size ...``) is sampled from ``seed + 1 + k``."""
    n = len(texts)
    gen_noise = torch.Generator().manual_seed(seed)
    noise_all = torch.randn((n, *policy.latent_shape), generator=gen_noise)
    rank, ranks = _SHARD.get()
    starts = list(range(0, n, batch_size))
    mine = [_sample_chunk(policy, texts[s:s + batch_size], noise_all[s:s + batch_size], reasoning, steps,
                          temperature, max_new_tokens, seed + 1 + k, guidance_scale)
            for k, s in enumerate(starts) if k % ranks == rank]
    if ranks > 1:
        device = mine[0][0].device if mine else policy.device
        everyone = [None] * ranks
        dist.all_gather_object(everyone, [(im.cpu(), r, t) for im, r, t in mine])
        mine = [everyone[k % ranks][k // ranks] for k in range(len(starts))]
        mine = [(im.to(device), r, t) for im, r, t in mine]
    images = [im for im, _, _ in mine]
    return torch.cat(images), [r for _, rs, _ in mine for r in rs], [t for _, _, ts in mine for t in ts]


def _sample_chunk(policy: UnifiedPolicy, chunk: Sequence[str], x1: torch.Tensor, reasoning: bool, steps: int,
                  temperature: float, max_new_tokens: int, text_seed: int, guidance_scale: float):
    batch = policy.encode_prompts(list(chunk), reasoning=reasoning)
    ids, mask = batch.ids, batch.mask
    if reasoning:
        gen_text = torch.Generator(device=policy.device).manual_seed(text_seed)
        r = generate_reasoning(policy, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                               generator=gen_text)
        ids, mask = concat_tokens(ids, mask, r.ids, r.mask)
        reasonings, truncated = policy.decode(r.ids, r.mask), r.truncated.tolist()
    else:
        reasonings, truncated = [""] * len(chunk), [False] * len(chunk)
    uncond = None
    if guidance_scale != 1.0:
        empty = policy.encode_prompts([""] * len(chunk), reasoning=False)
        uncond = policy.image_context(empty.ids, empty.mask)
    traj = denoise(policy, policy.image_context(ids, mask), policy.sigma_schedule(steps), 0.0, x1.to(policy.device),
                   None, record=False, uncond=uncond, guidance_scale=guidance_scale)
    return policy.latents_to_images(traj.latents[:, -1]), reasonings, truncated

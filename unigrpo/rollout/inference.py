"""Deterministic generation for evaluation: reason (optionally), then draw with the
ODE (Euler) sampler, the rollouts' denoising loop at noise level 0.

Images are drawn in chunks of ``batch_size`` whose randomness depends only on the seed and
the chunk's index, so :func:`sharded_sampling` can split the chunks between the ranks of a
job and every rank still gets the images one process would draw."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from contextvars import ContextVar
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from ..policy import Reasoning, UnifiedPolicy
from ..sampling import generate_reasoning
from .denoise import denoise
from .episodes import play_episodes

__all__ = ["EpisodeSamples", "sample_episodes", "sample_images", "sharded_sampling"]

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


@dataclass
class EpisodeSamples:
    """What :func:`sample_episodes` drew for N prompts: ``images`` uint8 (N, H, W, 3), each
    episode's final image; ``round_images`` uint8 (N, R, H, W, 3), image r of each episode
    (zeros where the episode ended before it); ``rounds_used`` int64 (N,); ``texts``: the
    generated text of every turn ("" without reasoning); ``truncated``: a turn hit the limit."""

    images: torch.Tensor
    round_images: torch.Tensor
    rounds_used: torch.Tensor
    texts: list[str]
    truncated: list[bool]


@torch.no_grad()
def sample_images(policy: UnifiedPolicy, texts: Sequence[str], *, reasoning: bool = True, steps: int = 40,
                  temperature: float = 1.0, max_new_tokens: int = 48, seed: int = 0,
                  batch_size: int = 128, guidance_scale: float = 1.0) -> tuple[torch.Tensor, list[str], list[bool]]:
    """Reason (optionally) then draw, deterministically for a seed: one round of
    :func:`sample_episodes`, as (images, reasoning strings, truncation flags)."""
    out = sample_episodes(policy, texts, reasoning=reasoning, steps=steps, temperature=temperature,
                          max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                          guidance_scale=guidance_scale)
    return out.images, out.texts, out.truncated


@torch.no_grad()
def sample_episodes(policy: UnifiedPolicy, texts: Sequence[str], *, max_rounds: int = 1, reasoning: bool = True,
                    steps: int = 40, temperature: float = 1.0, max_new_tokens: int = 48, seed: int = 0,
                    batch_size: int = 128, guidance_scale: float = 1.0) -> EpisodeSamples:
    """Reason (optionally) then draw, and with ``max_rounds`` > 1 look, reflect and redraw,
    deterministically for a seed (the rollouts' episode loop with the ODE sampler).

    ``guidance_scale`` > 1: classifier-free guidance against the empty prompt (evaluation
    only: the trainer never samples with it unless ``rollout.guidance_scale`` says so).
    The initial noise of image r of episode i depends only on ``seed``, r and i, so modes
    are paired sample by sample; the text of chunk k (episodes ``k * batch_size ...``) is
    sampled from ``seed + 1 + k``."""
    if max_rounds > 1 and not reasoning:
        raise ValueError("max_rounds > 1 needs reasoning (the later rounds are written turns)")
    n = len(texts)
    gen_noise = torch.Generator().manual_seed(seed)
    noise_all = torch.randn((n, *policy.latent_shape), generator=gen_noise)
    later = torch.randn((max_rounds - 1, n, *policy.latent_shape), generator=gen_noise)
    noise_all = torch.cat([noise_all[None], later])  # (R, N, ...): round 0 as a single-round sample
    rank, ranks = _SHARD.get()
    starts = list(range(0, n, batch_size))
    mine = [_sample_chunk(policy, texts[s:s + batch_size], noise_all[:, s:s + batch_size], reasoning, steps,
                          temperature, max_new_tokens, seed + 1 + k, guidance_scale)
            for k, s in enumerate(starts) if k % ranks == rank]
    if ranks > 1:
        everyone = [None] * ranks
        dist.all_gather_object(everyone, [dataclasses.replace(m, images=m.images.cpu(),
                                                              round_images=m.round_images.cpu(),
                                                              rounds_used=m.rounds_used.cpu()) for m in mine])
        mine = [everyone[k % ranks][k // ranks] for k in range(len(starts))]
    return EpisodeSamples(torch.cat([m.images for m in mine]), torch.cat([m.round_images for m in mine]),
                          torch.cat([m.rounds_used.cpu() for m in mine]), [t for m in mine for t in m.texts],
                          [t for m in mine for t in m.truncated])


def _sample_chunk(policy: UnifiedPolicy, chunk: Sequence[str], x1: torch.Tensor, reasoning: bool, steps: int,
                  temperature: float, max_new_tokens: int, text_seed: int, guidance_scale: float) -> EpisodeSamples:
    batch = policy.encode_prompts(list(chunk), reasoning=reasoning)
    b = len(chunk)
    gen_text = torch.Generator(device=policy.device).manual_seed(text_seed)

    def write(ids, mask, images):
        if not reasoning:
            none = ids.new_zeros((b, 0))
            return Reasoning(none, none.float(), none.bool(), torch.zeros(b, dtype=torch.bool, device=ids.device), 1.0)
        return generate_reasoning(policy, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                                  generator=gen_text, images=images)

    uncond = None
    if guidance_scale != 1.0:
        empty = policy.encode_prompts([""] * b, reasoning=False)
        uncond = policy.image_context(empty.ids, empty.mask)
    sigmas = policy.sigma_schedule(steps)

    def draw(r, rows, ctx):
        un = uncond if uncond is None or rows.numel() == b else uncond.select(rows)
        return denoise(policy, ctx, sigmas, 0.0, x1[r].to(policy.device)[rows], None, record=False, uncond=un,
                       guidance_scale=guidance_scale)

    ep = play_episodes(policy, batch, x1.shape[0], write, draw)
    text = ep.text
    texts = (policy.decode(text.ids[:, text.start:], text.mask[:, text.start:]) if reasoning else [""] * b)
    rounds = [policy.latents_to_images(ep.images.latents[:, r]) for r in range(ep.images.rounds)]
    round_images = torch.stack(rounds, 1) * ep.images.present.cpu()[:, :, None, None, None]
    return EpisodeSamples(policy.latents_to_images(ep.final_latents()), round_images, ep.rounds_used, texts,
                          text.truncated.tolist())

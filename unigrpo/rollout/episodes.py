"""The episode loop shared by rollouts (SDE, recorded) and evaluation (ODE): reason,
draw; then, for up to ``max_rounds`` images, look at the last image, write the next
turn, and draw again unless the turn ended the episode.

Round 1 is the single-round path unchanged (``prefill`` and ``image_context``, every
row); later rounds run only the episodes still going, through the policy's
interleaved primitives (the images it has drawn sit inside its text). Each row's
turns are kept contiguous, so every generated token is scored from the state
before it, whichever turn it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..policy import ImageContext, Reasoning, SeenImages, TokenBatch, UnifiedPolicy
from .denoise import Trajectory

__all__ = ["Turns", "Episodes", "play_episodes"]


class Turns:
    """The episodes' text as it grows turn by turn: the left-padded prompt, then every
    turn's generated tokens appended to each row's own, kept contiguous (a row's later
    turn starts right after its earlier one ends, whatever the other rows did).
    ``logprobs`` fp32 (B, N) and ``truncated`` bool (B,) (some turn hit the length
    limit) as in :class:`unigrpo.policy.Reasoning`."""

    def __init__(self, prompt: TokenBatch, pad_token_id: int) -> None:
        b = prompt.ids.shape[0]
        self.ids, self.mask, self.pad = prompt.ids, prompt.mask.bool(), pad_token_id
        self.start = prompt.ids.shape[1]
        self.logprobs = torch.zeros((b, 0), device=prompt.ids.device)
        self.truncated = torch.zeros(b, dtype=torch.bool, device=prompt.ids.device)
        self.temperature = 1.0

    def rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        if rows.numel() == self.ids.shape[0]:
            return self.ids, self.mask
        return self.ids[rows], self.mask[rows]

    def length(self) -> Tensor:
        """int64 (B,): each row's text length, prompt padding included (where its next image sits)."""
        return self.start + self.mask[:, self.start:].long().sum(1)

    def append(self, rows: Tensor, turn: Reasoning) -> None:
        b, n = self.ids.shape[0], turn.ids.shape[1]
        dev = self.ids.device
        ids = torch.full((b, n), self.pad, dtype=self.ids.dtype, device=dev)
        mask = torch.zeros((b, n), dtype=torch.bool, device=dev)
        logp = torch.zeros((b, n), device=dev)
        ids[rows], mask[rows], logp[rows] = turn.ids, turn.mask, turn.logprobs
        self.truncated[rows] |= turn.truncated
        self.temperature = turn.temperature
        gen_ids = torch.cat([self.ids[:, self.start:], ids], 1)
        gen_mask = torch.cat([self.mask[:, self.start:], mask], 1)
        # each row's generated tokens to the front of its generated part, in order
        width = int(gen_mask.sum(1).max())
        order = (~gen_mask).long().argsort(dim=1, stable=True)[:, :width]
        self.ids = torch.cat([self.ids[:, :self.start], gen_ids.gather(1, order)], 1)
        self.mask = torch.cat([self.mask[:, :self.start], gen_mask.gather(1, order)], 1)
        self.logprobs = torch.cat([self.logprobs, logp], 1).gather(1, order)


@dataclass
class Episodes:
    """What :func:`play_episodes` produced: the text, every drawn image as the policy
    sees it (clean latents, slots, which are present), and per round the rows drawn
    (int64) with their trajectories."""

    text: Turns
    images: SeenImages
    trajectories: list[tuple[Tensor, Trajectory]]

    @property
    def rounds_used(self) -> Tensor:
        return self.images.present.long().sum(1)

    def final_latents(self) -> Tensor:
        """(B, *latent_shape): each episode's last image."""
        b = self.images.present.shape[0]
        return self.images.latents[torch.arange(b, device=self.images.latents.device), self.rounds_used - 1]


def play_episodes(policy: UnifiedPolicy, prompt: TokenBatch, max_rounds: int,
                  write: Callable[[Tensor, Tensor, SeenImages | None], Reasoning],
                  draw: Callable[[int, Tensor, ImageContext], Trajectory]) -> Episodes:
    """Run B episodes from ``prompt`` (left-padded, ready for reasoning).

    ``write(ids, mask, images)``: the next turn of those rows (``images`` None in round 1),
    e.g. :func:`unigrpo.sampling.generate_reasoning`; ``draw(r, rows, ctx)``: the
    trajectory of image r (0-based) for ``rows`` (int64, all B in round 0) in context ``ctx``."""
    if max_rounds > 1 and not policy.supports_interleaved:
        raise ValueError(f"rollout.max_rounds = {max_rounds} needs a policy that supports interleaved "
                         f"generation; {type(policy).__name__} does not (set rollout.max_rounds to 1)")
    b = prompt.ids.shape[0]
    dev = prompt.ids.device
    text = Turns(prompt, policy.pad_token_id)
    seen = SeenImages.empty(b, policy.latent_shape, dev)
    trajectories = []
    live = torch.ones(b, dtype=torch.bool, device=dev)  # episodes that go on to another turn
    end_ids = torch.tensor(policy.end_of_episode_token_ids, dtype=torch.long, device=dev)
    for r in range(max_rounds):
        rows = live.nonzero()[:, 0]
        looked = None if r == 0 else _rows_of(seen, rows)
        turn = write(*text.rows(rows), looked)
        text.append(rows, turn)
        if r > 0:  # after looking, a turn that ends on an end-of-episode token draws nothing
            last = turn.ids.gather(1, (turn.mask.long().sum(1) - 1).clamp_min(0)[:, None])[:, 0]
            ends = torch.isin(last, end_ids) & ~turn.truncated
            rows = rows[~ends]
            if rows.numel() == 0:  # every episode has ended: the remaining image slots stay empty
                break
        ids, mask = text.rows(rows)
        ctx = (policy.image_context(ids, mask) if r == 0 else
               policy.interleaved_image_context(ids, mask, _rows_of(seen, rows)))
        traj = draw(r, rows, ctx)
        trajectories.append((rows, traj))
        live = torch.zeros(b, dtype=torch.bool, device=dev)
        live[rows] = True
        clean = torch.zeros((b, *policy.latent_shape), device=dev)
        clean[rows] = traj.latents[:, -1].float()
        seen = seen.append(clean, text.length(), live)
    while seen.rounds < max_rounds:
        seen = seen.append(torch.zeros((b, *policy.latent_shape), device=dev), text.length(),
                           torch.zeros(b, dtype=torch.bool, device=dev))
    return Episodes(text, seen, trajectories)


def _rows_of(seen: SeenImages, rows: Tensor) -> SeenImages:
    """``rows`` of ``seen``; no copy when they are all of them, in order (the rows of a round)."""
    return seen if rows.numel() == seen.present.shape[0] else seen.select(rows)

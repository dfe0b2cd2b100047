"""The batch of episodes that rollouts produce and the trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from ..policy import SeenImages


@dataclass
class RolloutBatch:
    """B = P prompts x G episodes, grouped: rows [g * G, (g + 1) * G) share prompt g.
    An episode is R >= 1 rounds (``rollout.max_rounds``): reason -> draw, then look at
    the image -> reflect -> draw again, until the policy ends it or R rounds are drawn.

    Text — the full sequence ``ids`` int64 (B, Lp + N), ``mask`` bool (B, Lp + N):
    the left-padded prompt, then every turn's generated tokens, contiguous and
    right-padded, from column ``reasoning_start`` = Lp on (views: ``prompt_ids`` /
    ``reasoning_ids`` and their masks); reasoning_logprobs fp32 (B, N) (old log-probs
    at ``temperature``, 0 where masked; the mask includes each turn's stop token),
    truncated bool (B,) (a turn hit the length limit).
    Image — sigmas fp32 (K + 1,) from 1 to 0; for image r of each row:
    latents (B, R, K + 1, *latent_shape) (latents[:, r, k] at sigmas[k]); step_logprobs
    fp32 (B, R, K) (old log-probs of the SDE transitions); train_steps bool (B, R, K)
    (the steps to train); image_slots int64 (B, R) (the text column image r sits
    before: it was drawn after ``ids[:, :slot]``); image_present bool (B, R) (which
    images the episode drew: a prefix); step_noise fp32 (B, R, K, *latent_shape) or
    None: the noise each SDE step drew (kept on request, for GRPO-Guard's ratio).
    images uint8 (B, H, W, 3): each episode's final image, the one rewarded.
    Reward — rewards fp32 (B,) (weighted total), reward_components name -> fp32 (B,).
    Bookkeeping — group_ids int64 (B,), prompts (B strings), metadata (B objects),
    and the sampling settings the training path must reuse.
    """

    ids: Tensor
    mask: Tensor
    reasoning_start: int
    reasoning_logprobs: Tensor
    truncated: Tensor
    sigmas: Tensor
    latents: Tensor
    step_logprobs: Tensor
    train_steps: Tensor
    image_slots: Tensor
    image_present: Tensor
    images: Tensor
    rewards: Tensor
    reward_components: dict[str, Tensor]
    group_ids: Tensor
    prompts: list[str]
    metadata: list[Any]
    temperature: float
    noise_level: float
    guidance_scale: float = 1.0
    step_noise: Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def prompt_ids(self) -> Tensor:
        return self.ids[:, :self.reasoning_start]

    @property
    def prompt_mask(self) -> Tensor:
        return self.mask[:, :self.reasoning_start]

    @property
    def reasoning_ids(self) -> Tensor:
        return self.ids[:, self.reasoning_start:]

    @property
    def reasoning_mask(self) -> Tensor:
        return self.mask[:, self.reasoning_start:]

    @property
    def num_steps(self) -> int:
        return self.sigmas.numel() - 1

    @property
    def max_rounds(self) -> int:
        """R: the image slots per episode (1: single-round generation)."""
        return int(self.image_present.shape[1])

    @property
    def rounds_used(self) -> Tensor:
        """int64 (B,): images each episode drew."""
        return self.image_present.long().sum(1)

    def seen_images(self) -> SeenImages:
        """Every drawn image as the policy sees it in the text (its final, clean latents)."""
        return SeenImages(self.latents[:, :, -1], self.image_slots, self.image_present)

    def to(self, device) -> RolloutBatch:
        """A copy with every tensor on ``device`` (sigmas, group ids included)."""
        def move(v):
            if isinstance(v, Tensor):
                return v.to(device)
            if isinstance(v, dict):
                return {k: move(t) for k, t in v.items()}
            return v
        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def select(self, index) -> RolloutBatch:
        """Episodes ``index`` (int64 tensor, list or slice), e.g. one minibatch."""
        n = len(self)
        idx = torch.arange(n)[index] if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"episode index out of range for a batch of {n}")
        cpu = idx.tolist()

        def take(name, v):
            if name == "sigmas" or not isinstance(v, (Tensor, dict, list)):
                return v
            if isinstance(v, dict):
                return {k: t[idx.to(t.device)] for k, t in v.items()}
            if isinstance(v, list):
                return [v[i] for i in cpu]
            return v[idx.to(v.device)]
        return replace(self, **{f.name: take(f.name, getattr(self, f.name)) for f in fields(self)})

    def minibatch_indices(self, size: int, generator: torch.Generator | None = None, shuffle: bool = True):
        """Yield int64 index tensors of ``size`` episodes (the last may be smaller), shuffled with ``generator``."""
        if size < 1:
            raise ValueError(f"minibatch size must be >= 1, got {size}")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), size):
            yield order[start:start + size]

    def minibatches(self, size: int, generator: torch.Generator | None = None, shuffle: bool = True):
        """Yield sub-batches of ``size`` episodes, as :meth:`minibatch_indices` picks them."""
        for idx in self.minibatch_indices(size, generator, shuffle):
            yield self.select(idx)

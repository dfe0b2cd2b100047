"""The batch of rounds that rollouts produce and the trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    """B = P prompts x G rounds, grouped: rows [g * G, (g + 1) * G) share prompt g.

    Text — the full sequence ``ids`` int64 (B, Lp + N), ``mask`` bool (B, Lp + N):
    the left-padded prompt, then the right-padded reasoning from column
    ``reasoning_start`` = Lp on (views: ``prompt_ids`` / ``reasoning_ids`` and
    their masks); reasoning_logprobs fp32 (B, N) (old log-probs at
    ``temperature``, 0 where masked; the reasoning mask includes the stop
    token), truncated bool (B,) (hit the length limit).
    Image — sigmas fp32 (K + 1,) from 1 to 0; latents (B, K + 1, *latent_shape)
    (latents[:, k] at sigmas[k]); step_logprobs fp32 (B, K) (old log-probs of the
    SDE transitions); train_steps bool (B, K) (the steps to train); images uint8
    (B, H, W, 3); step_noise fp32 (B, K, *latent_shape) or None: the noise each SDE
    step drew (kept on request, for GRPO-Guard's ratio).
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
        """Rounds ``index`` (int64 tensor, list or slice), e.g. one minibatch."""
        n = len(self)
        idx = torch.arange(n)[index] if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"round index out of range for a batch of {n}")
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
        """Yield int64 index tensors of ``size`` rounds (the last may be smaller), shuffled with ``generator``."""
        if size < 1:
            raise ValueError(f"minibatch size must be >= 1, got {size}")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), size):
            yield order[start:start + size]

    def minibatches(self, size: int, generator: torch.Generator | None = None, shuffle: bool = True):
        """Yield sub-batches of ``size`` rounds, as :meth:`minibatch_indices` picks them."""
        for idx in self.minibatch_indices(size, generator, shuffle):
            yield self.select(idx)

"""Terminal rewards: any callable ``(images, prompts, metadata) -> scores``.

images: uint8 (B, H, W, 3) tensor of the final images; prompts: B prompt strings;
metadata: B per-episode objects (whatever the task attached, e.g. the prompt's
constraints). A reward that judges more than the final image (an edit against the
scene it edits) takes a keyword argument ``episode`` and gets every image of each
episode as :class:`EpisodeImages`.
Several rewards combine with weights; each component is kept for logging. A
reward that raises, or returns NaN or the wrong shape, is reported with the
prompt that caused it, never swallowed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .registry import Registry

RewardFn = Callable[[Tensor, Sequence[str], Sequence[Any]], Any]

__all__ = ["RewardFn", "EpisodeImages", "RewardError", "NonFiniteRewardError", "WeightedRewards", "RewardResult",
           "REWARDS", "rewards_from_spec"]


class RewardError(RuntimeError):
    """A reward function failed; names the reward and the prompt."""


class NonFiniteRewardError(RewardError):
    """A reward returned NaN or inf (the trainer skips such an iteration and counts it)."""


@dataclass
class EpisodeImages:
    """Every image of each episode: ``images`` uint8 (B, R, H, W, 3), image r of episode b at
    ``[b, r]`` (zeros where ``present[b, r]`` is False: the episode ended before it);
    ``present`` bool (B, R). Each row's present images come first, its final image last."""

    images: Tensor
    present: Tensor

    @classmethod
    def single(cls, images: Tensor) -> EpisodeImages:
        """One image per episode."""
        return cls(images[:, None], torch.ones(images.shape[0], 1, dtype=torch.bool))


def _takes_episode(fn: Callable) -> bool:
    try:
        return "episode" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a signature takes the plain arguments
        return False


@dataclass
class RewardResult:
    """total: fp32 (B,) weighted sum; components: name -> fp32 (B,) unweighted scores;
    details: name -> whatever the reward attached (e.g. a verifier breakdown) or None."""

    total: Tensor
    components: dict[str, Tensor]
    details: dict[str, Any]


class WeightedRewards:
    """sum_i weight_i * reward_i(images, prompts, metadata).

    ``rewards``: a mapping or sequence of (name, fn, weight). A fn may return a
    tensor / array / list of B scores, or a (scores, details) tuple."""

    def __init__(self, rewards: Sequence[tuple[str, RewardFn, float]]) -> None:
        if not rewards:
            raise ValueError("give at least one reward as (name, fn, weight)")
        names = [name for name, _, _ in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}")
        for name, fn, weight in rewards:
            if not callable(fn):
                raise TypeError(f"reward {name!r} is not callable")
            if not np.isfinite(weight):
                raise ValueError(f"reward {name!r} has a non-finite weight {weight}")
        self.rewards = list(rewards)
        self._episode = {name: _takes_episode(fn) for name, fn, _ in self.rewards}

    @property
    def wants_episode(self) -> bool:
        """Whether any reward judges every image of an episode (so rollouts collect them)."""
        return any(self._episode.values())

    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Any],
                 episode: EpisodeImages | None = None) -> RewardResult:
        """Score B final ``images``; ``episode``: every image of each episode, for the rewards
        that take it (default: the final images as one-image episodes)."""
        b = images.shape[0]
        if len(prompts) != b or len(metadata) != b:
            raise ValueError(f"{b} images but {len(prompts)} prompts and {len(metadata)} metadata entries")
        total = torch.zeros(b, dtype=torch.float32)
        components, details = {}, {}
        for name, fn, weight in self.rewards:
            try:
                if self._episode[name]:
                    out = fn(images, prompts, metadata, episode=EpisodeImages.single(images) if episode is None
                             else episode)
                else:
                    out = fn(images, prompts, metadata)
            except Exception as e:
                raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e} "
                                  f"(batch of {b}; first prompt: {prompts[0]!r})") from e
            scores, detail = out if isinstance(out, tuple) else (out, None)
            scores = torch.as_tensor(np.asarray(scores, dtype=np.float32) if not isinstance(scores, Tensor)
                                     else scores.detach().float().cpu())
            if scores.shape != (b,):
                raise RewardError(f"reward {name!r} returned shape {tuple(scores.shape)}, expected ({b},)")
            bad = ~torch.isfinite(scores)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise NonFiniteRewardError(f"reward {name!r} returned {scores[i].item()} for prompt {prompts[i]!r} "
                                  f"(row {i}; {int(bad.sum())} non-finite in all)")
            components[name], details[name] = scores, detail
            total += weight * scores
        return RewardResult(total, components, details)


REWARDS: Registry = Registry("reward", "unigrpo.rewards")
"""Reward factories by name: ``factory() -> RewardFn``, or ``factory(model_dir) -> RewardFn``
for a reward that loads a model (given ``task.reward_model``); entry points of the group
``unigrpo.rewards``, ``REWARDS.register``, or ``package.module:factory``."""


def _brightness() -> RewardFn:
    def brightness(images, prompts, metadata):
        return images.float().mean(dim=(1, 2, 3)) / 255.0
    return brightness


REWARDS.register("brightness", _brightness)  # mean pixel value in [0, 1]: a smoke-test reward


def rewards_from_spec(spec: str, key: str = "task.reward", model_dir: str = "") -> WeightedRewards:
    """``"name"`` or ``"name:weight,name:weight"`` of :data:`REWARDS` -> :class:`WeightedRewards`
    (a weight defaults to 1; a ``package.module:factory`` name takes its weight after a
    second colon). ``model_dir`` goes to every factory that takes a ``model_dir`` argument.
    Errors name ``key``."""
    items = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, weight = part, 1.0
        head, sep, tail = part.rpartition(":")
        if sep and _is_number(tail):
            name, weight = head, float(tail)
        try:
            factory = REWARDS.get(name)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from e
        takes_model = "model_dir" in inspect.signature(factory).parameters
        fn = factory(model_dir=model_dir) if takes_model else factory()
        items.append((name, fn, weight))
    if not items:
        raise ValueError(f"{key} must name at least one reward, e.g. 'brightness' or 'a:1.0,b:0.5'; "
                         f"registered: {', '.join(REWARDS.names())}")
    return WeightedRewards(items)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

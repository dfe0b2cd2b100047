"""Group-relative advantages (docs/method.md): one scalar per round, shared by every
text token and every denoising step of that round."""

from __future__ import annotations

import torch
from torch import Tensor

SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(rewards: Tensor, group_ids: Tensor, scale_rewards: str = "group",
                     adv_clip_max: float = 5.0, eps: float = 1e-4) -> Tensor:
    """A_i = (R_i - mean_group R) / (std + eps), clipped to [-adv_clip_max, adv_clip_max].

    rewards: fp32 (B,); group_ids: int64 (B,) (rounds of one prompt share an id).
    scale_rewards: "group" (std over the group, GRPO), "batch" (std over the
    batch) or "none" (no std scaling, Dr. GRPO). A group whose rewards are all
    equal gets A = 0 (no NaN, no update from it)."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    rewards = rewards.float()
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), device=rewards.device).index_add_(0, inverse, rewards)
    mean = (sums / counts)[inverse]
    centred = rewards - mean
    # all-equal groups: exactly 0 (sum / count rounding must not become +-1 after scaling)
    lo = torch.full_like(sums, float("inf")).scatter_reduce(0, inverse, rewards, "amin")
    hi = torch.full_like(sums, float("-inf")).scatter_reduce(0, inverse, rewards, "amax")
    centred = torch.where((hi == lo)[inverse], torch.zeros_like(centred), centred)
    if scale_rewards == "group":
        var = torch.zeros_like(sums).index_add_(0, inverse, centred**2) / (counts - 1).clamp_min(1)
        centred = centred / (var.sqrt()[inverse] + eps)
    elif scale_rewards == "batch":
        centred = centred / (rewards.std() + eps) if rewards.numel() > 1 else centred
    return centred.clamp(-adv_clip_max, adv_clip_max)

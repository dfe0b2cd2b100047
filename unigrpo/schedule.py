"""Noise-level (sigma) schedules: shifted sampling schedule and logit-normal
training timesteps (SD3 / Bagel).  sigma = 1 is pure noise, 0 the image;
``x_sigma = (1 - sigma) x_0 + sigma noise`` and the model predicts
``v = noise - x_0``."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["shift_sigma", "sigma_schedule", "sample_training_sigmas"]


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """``shift * s / (1 + (shift - 1) s)``: shift > 1 spends more of the range at high noise."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_schedule(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> Tensor:
    """fp32 (steps + 1,) sigmas from 1 down to 0 for ``steps`` denoising steps:
    uniform in the unshifted time, then :func:`shift_sigma`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32, device=device), shift)


def sample_training_sigmas(n: int, shift: float = 1.0, mean: float = 0.0, std: float = 1.0,
                           generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """fp32 (n,) training noise levels: ``shift_sigma(sigmoid(N(mean, std)), shift)``
    (logit-normal with shift; Bagel trains with shift 3)."""
    u = torch.randn(n, generator=generator, device=device) * std + mean
    return shift_sigma(torch.sigmoid(u), shift)

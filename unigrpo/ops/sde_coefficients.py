"""Per-row coefficients of the FlowGRPO SDE step (docs/method.md), the one place the
sampler's schedule math lives."""

from __future__ import annotations

import torch
from torch import Tensor


def sde_coefficients(sigma: Tensor, sigma_next: Tensor, noise_level: float):
    """sigma, sigma_next: (B,) with 0 < sigma <= 1 and 0 <= sigma_next < sigma.

    Returns fp32 (B,) tensors (cx, cv, std, s) such that the step's mean is
    cx * x + cv * v and its std is std = s * sqrt(-dt), where
    s = a * sqrt(sigma / (1 - sigma)) and, at sigma = 1 (where that diverges),
    the denominator uses sigma_next, the next sigma below 1, as FlowGRPO does.
    """
    sigma = sigma.double()
    sigma_next = sigma_next.double()
    dt = sigma_next - sigma
    s = noise_level * torch.sqrt(sigma / (1 - torch.where(sigma >= 1, sigma_next, sigma)))
    cx = 1 + s**2 / (2 * sigma) * dt
    cv = (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    std = s * torch.sqrt(-dt)
    return cx.float(), cv.float(), std.float(), s.float()

"""Attention masks and rotary positions of the [text][image] sequence.

Rule: text is causal (a text token sees the real text tokens up to itself);
image tokens see every real text token and every image token (full
attention inside the image); no text token ever sees an image token.
Masks are bool (B, 1, L_query, L_key), True = may attend (SDPA's
convention); a padding query always sees itself, so no row is empty.

Rotary positions count real tokens only (``cumsum(mask) - 1``), so left
padding and holes shift nothing; all image tokens of a row share the
position right after its last real text token (their layout comes from
the learned 2D position embedding, as in Bagel).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["text_positions", "causal_mask", "image_mask", "joint_mask"]


def text_positions(mask: Tensor, offset: Tensor | None = None) -> Tensor:
    """Rotary positions (B, L) int64 of a padded text batch ``mask`` bool (B, L),
    continuing from ``offset`` (B,) real tokens already seen (default 0)."""
    pos = mask.long().cumsum(1) - 1
    if offset is not None:
        pos = pos + offset[:, None]
    return pos.clamp_min(0)


def causal_mask(key_mask: Tensor, n_query: int) -> Tensor:
    """Mask for the last ``n_query`` of ``key_mask``'s (B, L_key) positions as
    queries, attending causally to the real keys."""
    b, lk = key_mask.shape
    q_idx = torch.arange(lk - n_query, lk, device=key_mask.device)
    k_idx = torch.arange(lk, device=key_mask.device)
    causal = k_idx[None, :] <= q_idx[:, None]
    allowed = (causal[None] & key_mask.bool()[:, None, :]) | (k_idx[None, :] == q_idx[:, None])[None]
    return allowed[:, None]


def image_mask(context_mask: Tensor, n_image: int) -> Tensor:
    """Mask for ``n_image`` image queries over [context (B, T) keys][image keys]."""
    b = context_mask.shape[0]
    keys = torch.cat([context_mask.bool(), context_mask.new_ones((b, n_image), dtype=torch.bool)], 1)
    return keys[:, None, None, :].expand(b, 1, n_image, keys.shape[1])


def joint_mask(text_mask: Tensor, n_image: int) -> Tensor:
    """Mask of the packed sequence [text (B, T)][n_image image tokens]: (B, 1, T + N, T + N)."""
    b, t = text_mask.shape
    top = torch.cat([causal_mask(text_mask, t),
                     text_mask.new_zeros((b, 1, t, n_image), dtype=torch.bool)], 3)
    return torch.cat([top, image_mask(text_mask, n_image)], 2)

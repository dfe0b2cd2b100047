"""The built-in model's interleaved sequence: text with the images the model has
looked at inside it, for multi-round generation.

Each present image r of a row becomes a block ``<image> [64 image tokens of its
clean latents at sigma = 0] <think>`` inserted before text column ``slots[b, r]``
(:class:`unigrpo.policy.SeenImages`). The single-round rules extend unchanged:
text is causal and sees every earlier block; image tokens see everything before
their block and their whole block; nothing sees later positions. Rotary
positions count real tokens, and an image block counts as one position (its
tokens share the position after ``<image>``, as the image being drawn does), so
the built-in model's position arithmetic is the single-round one.

Rows are packed left-aligned as their text is (left padding stays where it is,
blocks shift the text after them right), then right-padded to one length P.
Everything is built by one gather from a table of sources, so the pass stays
differentiable in the text embeddings and the image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...policy import SeenImages

__all__ = ["PackedSequence", "pack_interleaved"]


@dataclass
class PackedSequence:
    """embeds (B, P, H); is_image / real bool (B, P); positions int64 (B, P);
    attend bool (B, 1, P, P) (True = may attend); pred_index int64 (B, L): the packed
    position the token at text column c + 1 is predicted from; marker_index int64
    (B, R): image r's ``<image>`` marker (the last position its context holds);
    last_index int64 (B,): each row's last real position."""

    embeds: Tensor
    is_image: Tensor
    real: Tensor
    positions: Tensor
    attend: Tensor
    pred_index: Tensor
    marker_index: Tensor
    last_index: Tensor

    @property
    def seen(self) -> Tensor:
        """Rotary positions consumed per row (B,): where decoding continues."""
        return self.positions.gather(1, self.last_index[:, None])[:, 0] + 1


def _check_images(images: SeenImages, b: int, length: int, latent_shape) -> None:
    if not isinstance(images, SeenImages):
        raise TypeError(f"images must be a SeenImages, got {type(images).__name__}")
    r = images.rounds
    if images.latents.shape != (b, r, *latent_shape) or images.slots.shape != (b, r):
        raise ValueError(f"images: latents must be ({b}, R, {', '.join(map(str, latent_shape))}) and slots / present "
                         f"({b}, R), got {tuple(images.latents.shape)}, {tuple(images.slots.shape)}, "
                         f"{tuple(images.present.shape)}")
    if images.present.shape != (b, r) or images.present.dtype != torch.bool:
        raise ValueError(f"images.present must be bool ({b}, {r}), got {images.present.dtype} "
                         f"{tuple(images.present.shape)}")
    if r and ((images.slots < 1) | (images.slots > length)).any():
        raise ValueError(f"images.slots must lie in [1, {length}] (text columns), got {images.slots.tolist()}")
    if r > 1:
        if (images.present[:, 1:] & ~images.present[:, :-1]).any():
            raise ValueError("images.present must be a prefix of each row's images")
        both = images.present[:, 1:] & images.present[:, :-1]
        if (both & (images.slots[:, 1:] < images.slots[:, :-1])).any():
            raise ValueError("images.slots must be non-decreasing along each row")


def pack_interleaved(model, ids: Tensor, mask: Tensor, images: SeenImages) -> PackedSequence:
    """The packed sequence of a text batch (ids int64 (B, L), mask bool (B, L)) with
    ``images`` inside it, for ``model`` (a :class:`ShapesModel`)."""
    b, length = ids.shape
    _check_images(images, b, length, model.config.latent_shape)
    dev = ids.device
    r = images.rounds
    n_img = model.config.num_patches
    span = n_img + 2  # <image>, the image tokens, <think>
    present = images.present.to(dev)
    slots = images.slots.to(dev).long()

    # packed position of every text column, and of a virtual column L (what follows the text)
    cols = torch.arange(length + 1, device=dev)
    before = present[:, :, None] & (slots[:, :, None] <= cols[None, None])  # (B, R, L + 1)
    text_at = cols[None] + span * before.sum(1)
    n_before = present.long().cumsum(1) - present.long()  # present blocks ahead of block r
    block_start = slots + span * n_before  # (B, R)
    packed_len = length + span * int(present.sum(1).max()) if r else length

    # one table of sources per row: [text (L)][blocks (R x span)][padding (1)]
    pad_src = length + r * span
    src = torch.full((b, packed_len + 1), pad_src, dtype=torch.long, device=dev)  # column P: a dump slot
    src.scatter_(1, text_at[:, :length], cols[:length].expand(b, -1))
    if r:
        j = torch.arange(span, device=dev)
        target = torch.where(present[:, :, None], block_start[:, :, None] + j, packed_len)  # (B, R, span)
        src.scatter_(1, target.reshape(b, -1), (length + torch.arange(r, device=dev)[:, None] * span + j)
                     .reshape(1, -1).expand(b, -1))
    src = src[:, :packed_len]

    dtype = model.embed_tokens.weight.dtype
    text_emb = model.embed_tokens(ids)
    special = torch.tensor([model.special["image"], model.special["think"]], device=dev)
    marker, look = model.embed_tokens(special)
    parts = [text_emb]
    if r:
        flat = images.latents.to(dev).reshape(b * r, *model.config.latent_shape)
        tokens = model._image_tokens(flat, torch.zeros(b * r, device=dev)).to(dtype).view(b, r, n_img, -1)
        h = text_emb.shape[-1]
        blocks = torch.cat([marker.expand(b, r, 1, h), tokens, look.expand(b, r, 1, h)], 2)
        parts.append(blocks.reshape(b, r * span, h))
    parts.append(text_emb.new_zeros((b, 1, text_emb.shape[-1])))
    table = torch.cat(parts, 1)
    embeds = table.gather(1, src[:, :, None].expand(-1, -1, table.shape[-1]))

    def lay_out(text: Tensor, block: Tensor, pad) -> Tensor:
        """Per-position attribute from its text (B, L) and block (R, span) values."""
        values = [text, block.reshape(1, -1).expand(b, -1), text.new_full((b, 1), pad)]
        return torch.cat(values, 1).gather(1, src)

    j_kind = torch.zeros(span, dtype=torch.long, device=dev)  # 0 marker, 1 first image token, 2 others, 3 look
    j_kind[1], j_kind[2:-1], j_kind[-1] = 1, 2, 3
    block_kind = j_kind.expand(r, span)
    real_block = present.repeat_interleave(span, 1).view(b, r, span) if r else present.new_zeros((b, 0, span))
    real = torch.cat([mask, real_block.reshape(b, -1), mask.new_zeros((b, 1))], 1).gather(1, src)
    is_image = lay_out(torch.zeros_like(mask), (block_kind == 1) | (block_kind == 2), False)
    block_id = lay_out(torch.full_like(ids, -1), torch.where(
        (block_kind == 1) | (block_kind == 2), torch.arange(r, device=dev)[:, None], -1), -1)
    weight = lay_out(mask.long(), (block_kind != 2).long(), 0) * real
    positions = (weight.cumsum(1) - 1).clamp_min(0)

    q = torch.arange(packed_len, device=dev)
    causal = q[None, :] <= q[:, None]
    same_image = (block_id[:, :, None] == block_id[:, None, :]) & (block_id[:, :, None] >= 0)
    attend = ((causal[None] | same_image) & real[:, None, :]) | torch.eye(packed_len, dtype=torch.bool, device=dev)
    last = torch.where(real, q[None], -1).amax(1).clamp_min(0)
    marker_index = torch.where(present, block_start, last[:, None])  # absent images: any real position
    return PackedSequence(embeds, is_image, real, positions, attend[:, None], text_at[:, 1:] - 1, marker_index, last)

"""The built-in unified model: one decoder-only transformer over
``[prompt][reasoning][<image>][image latent patches]``.

Text: token embedding, causal attention, untied LM head.  Image: the 32x32x3
pixels in [-1, 1] are the latents; 4x4 patches (64 tokens) go through a
linear patch projection, plus a learned 2D position embedding and a
timestep embedding; a zero-initialised linear head reads the velocity
``v = noise - x_0`` off the image tokens.  Image tokens see all the text and
each other; text never sees image tokens (:mod:`.masks`).  Blocks are
``transformers`` Qwen2 modules (:mod:`.layers`), attention through SDPA.

Two equivalent ways to run it, tested equal:

* :meth:`ShapesModel.forward` — the packed sequence in one pass with the
  joint mask (SFT);
* :meth:`ShapesModel.image_context` once (the text's KV cache, a
  ``transformers.DynamicCache``'s tensors) then :meth:`ShapesModel.velocity`
  per denoising step, which runs only the 64 image tokens against the
  cached text keys/values (rollouts, evaluation, RL training).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from transformers import DynamicCache, StaticCache
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, Qwen2RotaryEmbedding

from ...policy import ImageContext, SeenImages, TokenBatch, UnifiedPolicy
from . import checkpoint
from .config import ShapesConfig
from .interleaved import PackedSequence, pack_interleaved
from .layers import TimestepEmbedding, UnifiedDecoderLayer, patchify, unpatchify
from .masks import causal_mask, image_mask, joint_mask, text_positions
from .tokenizer import build_tokenizer, encode_strict, special_token_ids

__all__ = ["ShapesModel", "KVImageContext", "DecodeState", "sincos_2d", "latents_to_uint8"]


def latents_to_uint8(latents: Tensor) -> Tensor:
    """The built-in model's latents (B, 3, H, W) in [-1, 1] (the pixels) -> uint8 (B, H, W, 3) on the CPU."""
    x = ((latents.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu()


def sincos_2d(grid: int, dim: int) -> Tensor:
    """(grid * grid, dim) fp32 2D sin-cos position table, raster order: the first
    half of the channels encodes the row, the second half the column."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def enc(p: Tensor) -> Tensor:
        a = p.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], 1)

    return torch.cat([enc(rows), enc(cols)], 1).float()


@dataclass
class KVImageContext(ImageContext):
    """Text context of B images: per-layer ``(keys, values)`` of the text
    (each (B_kv, kv_heads, T, head_dim)), ``key_mask`` bool (B, T), and
    ``image_position`` int64 (B,), the rotary position of the image tokens.
    ``kv_rows`` int64 (B,) or None: row i reads the keys/values of row ``kv_rows[i]``
    (the R images of an interleaved row share one pass); None: B_kv = B."""

    kv: tuple[tuple[Tensor, Tensor], ...]
    key_mask: Tensor
    image_position: Tensor
    kv_rows: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.key_mask.shape[0])

    def select(self, index: Tensor) -> KVImageContext:
        index = torch.as_tensor(index, dtype=torch.long, device=self.key_mask.device)
        kv_index = index if self.kv_rows is None else self.kv_rows[index]
        return KVImageContext(tuple((k[kv_index], v[kv_index]) for k, v in self.kv), self.key_mask[index],
                              self.image_position[index])

    def detach(self) -> KVImageContext:
        return KVImageContext(tuple((k.detach(), v.detach()) for k, v in self.kv), self.key_mask,
                              self.image_position, self.kv_rows)


@dataclass
class DecodeState:
    """Incremental decoding state: the cache, the key mask so far (B, L) and
    the number of real tokens seen per row (B,).

    Static (``next_col`` set): the cache and ``key_mask`` are preallocated to
    the prompt plus ``max_new_tokens`` columns and every update is in place at
    the device-side column ``next_col``, so a decode step has fixed shapes and
    addresses and can be captured in a CUDA graph."""

    cache: Any
    key_mask: Tensor
    seen: Tensor
    next_col: Tensor | None = None


class ShapesModel(UnifiedPolicy):
    """The built-in unified policy (see the module docstring)."""

    _no_split_modules = ["UnifiedDecoderLayer"]  # FSDP's unit (unigrpo.train.sharding)

    def __init__(self, config: ShapesConfig | None = None, tokenizer=None) -> None:
        super().__init__()
        tokenizer = build_tokenizer() if tokenizer is None else tokenizer
        config = ShapesConfig(vocab_size=len(tokenizer)) if config is None else config
        ids = special_token_ids(tokenizer)
        if not config.special_tokens:
            config = dataclasses.replace(config, special_tokens=dict(ids))
        if len(tokenizer) != config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but config.vocab_size is {config.vocab_size}")
        if config.special_tokens != ids:
            raise ValueError(f"config.special_tokens {config.special_tokens} do not match the tokenizer's {ids}")
        self.config, self.tokenizer = config, tokenizer
        self.special = ids
        self.pad_token_id = ids["pad"]
        self.stop_token_ids = (ids["end_think"], ids["eos"])
        self.end_of_episode_token_ids = (ids["eos"],)
        self.latent_shape = config.latent_shape
        self.timestep_shift = float(config.timestep_shift)

        qcfg = config.to_qwen2()
        self.qwen2_config = qcfg
        h = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, h)
        self.layers = nn.ModuleList(UnifiedDecoderLayer(qcfg, i, config.image_expert)
                                    for i in range(config.num_hidden_layers))
        self.norm = Qwen2RMSNorm(h, eps=config.rms_norm_eps)
        self.image_norm = Qwen2RMSNorm(h, eps=config.rms_norm_eps) if config.image_expert else None
        self.rotary_emb = Qwen2RotaryEmbedding(qcfg)
        self.lm_head = nn.Linear(h, config.vocab_size, bias=False)
        self.patch_embed = nn.Linear(config.patch_dim, h)
        self.pos_embed = nn.Parameter(torch.zeros(config.num_patches, h))
        self.time_embed = TimestepEmbedding(config.timestep_embed_dim, h)
        self.velocity_head = nn.Linear(h, config.patch_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
        # learned, but started from the 2D sin-cos table (MAE / DiT): a small random start
        # leaves the patches nearly indistinguishable, and the text -> layout mapping
        # (plan cell -> patches) is then learned several times slower
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.config.grid, self.config.hidden_size))
        # zero-initialised velocity head (Bagel / DiT): the untrained model predicts v = 0
        nn.init.zeros_(self.velocity_head.weight)
        nn.init.zeros_(self.velocity_head.bias)

    # ------------------------------------------------------------------ text
    def encode_prompts(self, texts: Sequence[str], reasoning: bool = True) -> TokenBatch:
        """``<bos> prompt <think>`` (``reasoning``) or ``<bos> prompt``, left-padded."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        tail = [self.special["think"]] if reasoning else []
        rows = [[self.special["bos"], *encode_strict(self.tokenizer, t), *tail] for t in texts]
        return self._left_pad(rows)

    def encode_texts(self, texts: Sequence[str]) -> TokenBatch:
        """Arbitrary word strings (special tokens written out, e.g. a whole
        ``<bos> prompt <think> plan </think>``) -> left-padded batch, no tokens added."""
        return self._left_pad([encode_strict(self.tokenizer, t) for t in texts])

    def _left_pad(self, rows: list[list[int]]) -> TokenBatch:
        if not rows:
            raise ValueError("empty batch")
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            if r:
                ids[i, length - len(r):] = torch.tensor(r)
                mask[i, length - len(r):] = True
        return TokenBatch(ids, mask).to(self.device)

    def _check_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be int64 (B, L), got {ids.dtype} {tuple(ids.shape)}")
        if mask.shape != ids.shape:
            raise ValueError(f"mask must have the ids' shape {tuple(ids.shape)}, got {tuple(mask.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.config.vocab_size})")
        return mask.bool()

    def _run(self, hidden: Tensor, n_text: int, positions: Tensor, mask4d: Tensor, cache) -> Tensor:
        pe = self.rotary_emb(hidden, positions)
        for layer in self.layers:
            hidden = layer(hidden, n_text, pe, mask4d, cache)
        return hidden

    def _text_pass(self, ids: Tensor, mask: Tensor, cache=None, past_mask: Tensor | None = None,
                   seen: Tensor | None = None) -> Tensor:
        """Hidden states (B, L, H) after the final norm; appends to ``cache``."""
        key_mask = mask if past_mask is None else torch.cat([past_mask, mask], 1)
        hidden = self.embed_tokens(ids)
        hidden = self._run(hidden, ids.shape[1], text_positions(mask, seen), causal_mask(key_mask, ids.shape[1]),
                           cache)
        return self.norm(hidden)

    def text_forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self._text_pass(ids, self._check_text(ids, mask))

    @property
    def lm_head_weight(self) -> Tensor:
        return self.lm_head.weight

    supports_static_decode = True

    def prefill(self, ids: Tensor, mask: Tensor, max_new_tokens: int | None = None) -> tuple[Tensor, DecodeState]:
        mask = self._check_text(ids, mask)
        if max_new_tokens is None:
            cache = DynamicCache(config=self.qwen2_config)
            hidden = self._text_pass(ids, mask, cache)
            return self.lm_head(hidden[:, -1]), DecodeState(cache, mask, mask.long().sum(1))
        b, length = mask.shape
        cache = StaticCache(config=self.qwen2_config, max_cache_len=length + max_new_tokens)
        attend = causal_mask(mask, length)  # the prompt, and no key of the (empty) columns after it
        attend = torch.cat([attend, attend.new_zeros((b, 1, length, max_new_tokens))], 3)
        hidden = self.norm(self._run(self.embed_tokens(ids), length, text_positions(mask), attend, cache))
        key_mask = torch.cat([mask, mask.new_zeros((b, max_new_tokens))], 1)
        next_col = torch.tensor(length, device=mask.device)
        return self.lm_head(hidden[:, -1]), DecodeState(cache, key_mask, mask.long().sum(1), next_col)

    def decode_step(self, tokens: Tensor, active: Tensor, state: DecodeState) -> Tensor:
        step_mask = active.bool()[:, None]
        if state.next_col is not None:
            return self._static_decode_step(tokens, step_mask, state)
        hidden = self._text_pass(tokens[:, None], step_mask, state.cache, state.key_mask, state.seen)
        state.key_mask = torch.cat([state.key_mask, step_mask], 1)
        state.seen = state.seen + step_mask[:, 0].long()
        return self.lm_head(hidden[:, -1])

    def _static_decode_step(self, tokens: Tensor, step_mask: Tensor, state: DecodeState) -> Tensor:
        """The same step with in-place updates only (CUDA-graph safe): the query at
        column ``next_col`` sees the real keys so far and always itself."""
        col = state.next_col.view(1)
        state.key_mask.index_copy_(1, col, step_mask)
        k_idx = torch.arange(state.key_mask.shape[1], device=tokens.device)
        allowed = state.key_mask | (k_idx == col)[None]
        hidden = self._run(self.embed_tokens(tokens[:, None]), 1, text_positions(step_mask, state.seen),
                           allowed[:, None, None, :], state.cache)
        state.seen.add_(step_mask[:, 0].long())
        state.next_col.add_(1)
        return self.lm_head(self.norm(hidden)[:, -1])

    # ----------------------------------------------------------------- image
    def _with_image_marker(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b = ids.shape[0]
        marker = torch.full((b, 1), self.special["image"], dtype=ids.dtype, device=ids.device)
        return torch.cat([ids, marker], 1), torch.cat([mask, mask.new_ones((b, 1))], 1)

    def image_context(self, ids: Tensor, mask: Tensor) -> KVImageContext:
        return self.text_and_image_context(ids, mask)[1]

    def text_and_image_context(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, KVImageContext]:
        """One causal pass over ``[ids][<image>]``: the text's hidden states (B, L, H)
        (the marker comes last, so they equal :meth:`text_forward`'s) and the KV cache
        the image tokens attend to."""
        ids, mask = self._with_image_marker(ids, self._check_text(ids, mask))
        cache = DynamicCache(config=self.qwen2_config)
        hidden = self._text_pass(ids, mask, cache)
        kv = tuple((layer.keys, layer.values) for layer in cache.layers)
        return hidden[:, :-1], KVImageContext(kv, mask, mask.long().sum(1))

    # ----------------------------------------------------------- interleaved
    supports_interleaved = True

    def _pack(self, ids: Tensor, mask: Tensor, images: SeenImages) -> PackedSequence:
        return pack_interleaved(self, ids, self._check_text(ids, mask), images)

    def _run_packed(self, packed: PackedSequence, cache, extra_keys: int = 0) -> Tensor:
        attend = packed.attend
        if extra_keys:  # a static cache's empty decode columns: no query sees them yet
            attend = torch.cat([attend, attend.new_zeros((*attend.shape[:3], extra_keys))], 3)
        return self._run(packed.embeds, packed.is_image, packed.positions, attend, cache)

    def interleaved_prefill(self, ids: Tensor, mask: Tensor, images: SeenImages,
                            max_new_tokens: int | None = None) -> tuple[Tensor, DecodeState]:
        packed = self._pack(ids, mask, images)
        b, length = packed.real.shape
        if max_new_tokens is None:
            cache = DynamicCache(config=self.qwen2_config)
            hidden = self._run_packed(packed, cache)
            state = DecodeState(cache, packed.real, packed.seen)
        else:
            cache = StaticCache(config=self.qwen2_config, max_cache_len=length + max_new_tokens)
            hidden = self._run_packed(packed, cache, max_new_tokens)
            key_mask = torch.cat([packed.real, packed.real.new_zeros((b, max_new_tokens))], 1)
            state = DecodeState(cache, key_mask, packed.seen, torch.tensor(length, device=ids.device))
        last = hidden[torch.arange(b, device=ids.device), packed.last_index]
        return self.lm_head(self.norm(last)), state

    def interleaved_contexts(self, ids: Tensor, mask: Tensor, images: SeenImages) -> tuple[Tensor, KVImageContext]:
        """One pass over the packed sequence (:mod:`.interleaved`): the text's hidden
        states and the contexts of every image (keys up to and including its marker)."""
        packed = self._pack(ids, mask, images)
        cache = DynamicCache(config=self.qwen2_config)
        hidden = self._run_packed(packed, cache)
        b, r = packed.marker_index.shape
        hidden = self.norm(hidden).gather(1, packed.pred_index[:, :, None].expand(-1, -1, hidden.shape[-1]))
        key_idx = torch.arange(packed.real.shape[1], device=ids.device)
        key_mask = packed.real[:, None] & (key_idx[None, None] <= packed.marker_index[:, :, None])
        position = packed.positions.gather(1, packed.marker_index) + 1
        kv = tuple((layer.keys, layer.values) for layer in cache.layers)
        rows = torch.arange(b, device=ids.device).repeat_interleave(r)
        return hidden, KVImageContext(kv, key_mask.reshape(b * r, key_idx.numel()), position.reshape(-1), rows)

    def _image_tokens(self, x: Tensor, sigma: Tensor) -> Tensor:
        c = self.config
        if x.dim() != 4 or tuple(x.shape[1:]) != c.latent_shape:
            raise ValueError(f"x must be (B, {', '.join(map(str, c.latent_shape))}), got {tuple(x.shape)}")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.dim() == 0 else sigma
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must be (B,) = ({x.shape[0]},) or a scalar, got {tuple(sigma.shape)}")
        tokens = self.patch_embed(patchify(x.to(self.patch_embed.weight.dtype), c.patch_size))
        return tokens + self.pos_embed[None] + self.time_embed(sigma)[:, None]

    def _velocity_out(self, hidden: Tensor, like: Tensor) -> Tensor:
        norm = self.image_norm if self.image_norm is not None else self.norm
        c = self.config
        return unpatchify(self.velocity_head(norm(hidden)), c.patch_size, c.image_channels, c.image_size).to(like.dtype)

    def velocity(self, x: Tensor, sigma: Tensor, context: KVImageContext) -> Tensor:
        if not isinstance(context, KVImageContext):
            raise TypeError(f"context must come from ShapesModel.image_context, got {type(context).__name__}")
        if context.kv_rows is not None:  # shared interleaved rows: one copy per image
            context = context.select(torch.arange(context.batch_size, device=context.key_mask.device))
        if context.batch_size != x.shape[0]:
            raise ValueError(f"context has {context.batch_size} rows but x has {x.shape[0]}")
        hidden = self._image_tokens(x, sigma)
        n = hidden.shape[1]
        cache = DynamicCache(ddp_cache_data=context.kv)  # fresh per call: the context itself is never mutated
        positions = context.image_position[:, None].expand(-1, n)
        hidden = self._run(hidden, 0, positions, image_mask(context.key_mask, n), cache)
        return self._velocity_out(hidden, x)

    def forward(self, ids: Tensor, mask: Tensor, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The packed sequence ``[ids][<image>][patches of x]`` in one pass.

        ids int64 (B, T), mask bool (B, T), x (B, C, H, W) noisy latents, sigma
        (B,).  Returns (text hidden states (B, T + 1, H) after the final norm,
        the ``<image>`` marker's last; velocity like x)."""
        ids, mask = self._with_image_marker(ids, self._check_text(ids, mask))
        t = ids.shape[1]
        img = self._image_tokens(x, sigma)
        n = img.shape[1]
        hidden = torch.cat([self.embed_tokens(ids), img.to(self.embed_tokens.weight.dtype)], 1)
        positions = torch.cat([text_positions(mask), mask.long().sum(1, keepdim=True).expand(-1, n)], 1)
        hidden = self._run(hidden, t, positions, joint_mask(mask, n), None)
        return self.norm(hidden[:, :t]), self._velocity_out(hidden[:, t:], x)

    def images_to_latents(self, images: Tensor) -> Tensor:
        images = torch.as_tensor(images)
        if images.dim() != 4 or images.shape[-1] != self.config.image_channels or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (B, H, W, {self.config.image_channels}), "
                             f"got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x.to(self.patch_embed.weight.dtype)

    def latents_to_images(self, latents: Tensor) -> Tensor:
        return latents_to_uint8(latents)

    # ------------------------------------------------------------- lifecycle
    def save_pretrained(self, directory: str | Path) -> None:
        checkpoint.save(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> ShapesModel:
        return checkpoint.load(cls, directory, device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

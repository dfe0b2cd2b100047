"""Building blocks of the built-in model: a mixture-of-transformers decoder
layer assembled from ``transformers`` Qwen2 modules, the timestep embedding,
and patchify / unpatchify.

Why image tokens get their own norms and MLP (``image_expert=True``, Bagel's
mixture-of-transformers, with attention shared): text tokens here do
associative recall (riddle -> plan), image tokens do dense pixel regression,
and the two share one small network.  With separate MLPs the flow loss (64
image tokens per example against ~20 text tokens) cannot overwrite the text
path's weights, and in RL the image-side update and its velocity-MSE
penalty act on weights the text policy does not use, so the two policies
interfere only through the shared attention: the structure of the model
UniGRPO trains (Bagel), at no extra compute per token (each token still runs
one MLP), for ~1.6x the parameters.  Attention projections stay shared, so
image tokens read the text's keys/values in the same space they are written.
``image_expert=False`` gives the dense variant (one MLP for all tokens).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2MLP, Qwen2RMSNorm

__all__ = ["UnifiedDecoderLayer", "TimestepEmbedding", "patchify", "unpatchify"]

# the KV-cache keyword of Qwen2Attention.forward changed name across transformers versions
_CACHE_KW = next((k for k in ("cache", "past_key_values", "past_key_value")
                  if k in inspect.signature(Qwen2Attention.forward).parameters), "cache")


def _by_modality(text_fn: nn.Module, image_fn: nn.Module, h: Tensor, n_text: int | Tensor) -> Tensor:
    """Apply ``text_fn`` to the text positions of h (B, L, H) and ``image_fn`` to the image positions:
    ``n_text`` an int (the first ``n_text`` positions are text) or a bool (B, L) tensor, True at
    image positions (an interleaved sequence)."""
    if text_fn is image_fn:
        return text_fn(h)
    if isinstance(n_text, Tensor):
        flat, is_image = h.reshape(-1, h.shape[-1]), n_text.reshape(-1)
        text_rows, image_rows = (~is_image).nonzero()[:, 0], is_image.nonzero()[:, 0]
        out = flat.new_empty(flat.shape).index_copy(0, text_rows, text_fn(flat[text_rows]))
        return out.index_copy(0, image_rows, image_fn(flat[image_rows])).view_as(h)
    if n_text >= h.shape[1]:
        return text_fn(h)
    if n_text == 0:
        return image_fn(h)
    return torch.cat([text_fn(h[:, :n_text]), image_fn(h[:, n_text:])], 1)


class UnifiedDecoderLayer(nn.Module):
    """Pre-norm decoder layer over a [text][image] sequence.

    Shared ``self_attn`` (Qwen2Attention: rotary, GQA, SDPA, KV cache); text
    tokens use ``input_layernorm`` / ``post_attention_layernorm`` / ``mlp`` (the
    Qwen2 names, so a Qwen2 layer's weights load into the text side); image
    tokens use the ``image_*`` copies when ``image_expert``, else the same ones."""

    def __init__(self, qwen2_config, layer_idx: int, image_expert: bool) -> None:
        super().__init__()
        h, eps = qwen2_config.hidden_size, qwen2_config.rms_norm_eps
        self.self_attn = Qwen2Attention(qwen2_config, layer_idx)
        self.input_layernorm = Qwen2RMSNorm(h, eps=eps)
        self.post_attention_layernorm = Qwen2RMSNorm(h, eps=eps)
        self.mlp = Qwen2MLP(qwen2_config)
        self.image_expert = image_expert
        if image_expert:
            self.image_input_layernorm = Qwen2RMSNorm(h, eps=eps)
            self.image_post_attention_layernorm = Qwen2RMSNorm(h, eps=eps)
            self.image_mlp = Qwen2MLP(qwen2_config)

    def _image(self, name: str) -> nn.Module:
        return getattr(self, "image_" + name) if self.image_expert else getattr(self, name)

    def forward(self, hidden: Tensor, n_text: int | Tensor, position_embeddings: tuple[Tensor, Tensor],
                attention_mask: Tensor, cache=None) -> Tensor:
        """hidden (B, L, H): ``n_text`` text positions then image positions (or a bool
        (B, L) tensor, True at image positions);
        position_embeddings: rotary (cos, sin) (B, L, head_dim); attention_mask:
        bool (B, 1, L, L_past + L), True = may attend; cache: a ``transformers``
        Cache holding L_past earlier positions (updated in place), or None."""
        residual = hidden
        x = _by_modality(self.input_layernorm, self._image("input_layernorm"), hidden, n_text)
        x, _ = self.self_attn(hidden_states=x, position_embeddings=position_embeddings,
                              attention_mask=attention_mask, **{_CACHE_KW: cache})
        hidden = residual + x
        x = _by_modality(self.post_attention_layernorm, self._image("post_attention_layernorm"), hidden, n_text)
        return hidden + _by_modality(self.mlp, self._image("mlp"), x, n_text)


class TimestepEmbedding(nn.Module):
    """sigma (B,) in [0, 1] -> (B, H): sinusoidal features of ``1000 sigma``, then an MLP (DiT-style)."""

    def __init__(self, dim: int, hidden_size: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.max_period = dim, max_period
        self.linear_1 = nn.Linear(dim, hidden_size)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, sigma: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=sigma.device,
                                                                   dtype=torch.float32) / half)
        args = (1000.0 * sigma.float())[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], -1).to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(emb)))


def patchify(x: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p) (W/p), C p p), patches in raster order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: Tensor, patch: int, channels: int, size: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, C p p) -> (B, C, size, size)."""
    b = tokens.shape[0]
    g = size // patch
    x = tokens.reshape(b, g, g, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, size, size)

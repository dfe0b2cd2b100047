"""The policy interface: what rollouts and the trainer need from a unified
(reason-then-draw) model, and nothing model-specific beyond it.

A round of generation is ``prompt -> reasoning tokens -> image``::

    batch = policy.encode_prompts(texts)                    # left-padded ids + mask
    r = policy.generate_reasoning(batch.ids, batch.mask, max_new_tokens=64,
                                  temperature=1.0, generator=g)
    ids, mask = concat_tokens(batch.ids, batch.mask, r.ids, r.mask)
    ctx = policy.image_context(ids, mask)                   # text KV cache, computed once
    x = torch.randn(B, *policy.latent_shape, generator=g)   # x_1: noise
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):  # sigma runs 1 -> 0
        v = policy.velocity(x, sigma.expand(B), ctx)        # v = noise - x_0
        x, *_ = ops.sde_step(x, v, sigma, sigma_next, noise_level)
    images = policy.latents_to_images(x)                    # uint8 (B, H, W, 3)

and training recomputes ``policy.token_logprobs(ids, mask, temperature)`` (or
``policy.text_forward`` + ``ops.fused_linear_token_logprobs``) and
``policy.velocity(x_k, sigma_k, ctx)`` on the rollout's states.

Conventions: token ids int64, masks bool (True = a real token); sequences are
left-padded prompts followed by right-padded generations, so a row's real
tokens are contiguous.  Latents are float (B, *latent_shape); sigma is fp32
(B,) in (0, 1]; x at sigma = 1 is pure noise, x at sigma = 0 is the image.

Implementing a new model: subclass :class:`UnifiedPolicy`, implement the
abstract methods (``prefill`` / ``decode_step`` are the two primitives the
shared :meth:`UnifiedPolicy.generate_reasoning` sampler drives), and return an
:class:`ImageContext` subclass from ``image_context``.  docs/adapter.md sketches
an adapter for a Bagel-class model.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from . import ops

__all__ = [
    "TokenBatch",
    "Reasoning",
    "ImageContext",
    "UnifiedPolicy",
    "concat_tokens",
    "filter_logits",
    "sample_tokens",
]


@dataclass
class TokenBatch:
    """A padded batch of token sequences: ``ids`` int64 (B, L), ``mask`` bool (B, L)."""

    ids: Tensor
    mask: Tensor

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.mask.to(device))


@dataclass
class Reasoning:
    """Output of :meth:`UnifiedPolicy.generate_reasoning` for B rows and N steps.

    ``ids``: int64 (B, N) sampled tokens (the pad id after a row stopped);
    ``logprobs``: fp32 (B, N), ``log_softmax(logits / temperature)[id]`` of the
    full (un-truncated) distribution, 0 where ``mask`` is False;
    ``mask``: bool (B, N), True for generated tokens, the stop token included;
    ``truncated``: bool (B,), True where the row hit ``max_new_tokens`` without
    a stop token; ``temperature``: the temperature the log-probs are taken at.
    """

    ids: Tensor
    logprobs: Tensor
    mask: Tensor
    truncated: Tensor
    temperature: float


class GraphedDecode:
    """A policy's ``decode_step`` on a static decode state, captured once in a
    CUDA graph and replayed per token (a small model's decode step is kernel
    launches, not math). Warm-up runs on a throwaway state of the same shapes;
    capture executes nothing, so the real state is untouched until replay."""

    def __init__(self, policy: UnifiedPolicy, ids: Tensor, mask: Tensor, max_new_tokens: int, state: Any) -> None:
        b = ids.shape[0]
        self.tokens = torch.full((b,), policy.pad_token_id, dtype=torch.long, device=ids.device)
        self.active = torch.zeros(b, dtype=torch.bool, device=ids.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _, scratch = policy.prefill(ids, mask, max_new_tokens=max_new_tokens)
            for _ in range(min(2, max_new_tokens)):
                policy.decode_step(self.tokens, self.active, scratch)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = policy.decode_step(self.tokens, self.active, state)

    def __call__(self, tokens: Tensor, active: Tensor, state: Any) -> Tensor:
        self.tokens.copy_(tokens)
        self.active.copy_(active)
        self.graph.replay()
        return self.logits  # overwritten by the next replay: consumed before it


class ImageContext(ABC):
    """The text context of an image, ready for :meth:`UnifiedPolicy.velocity`.

    Holds whatever the model needs to condition denoising on the text (for a
    transformer: the per-layer key/value cache of the text tokens), computed
    once by :meth:`UnifiedPolicy.image_context` and reused at every step.  It
    may carry autograd history (built with grad enabled), so the image loss
    can flow into the text tokens; :meth:`detach` drops it."""

    @property
    @abstractmethod
    def batch_size(self) -> int:
        """Number of rows B."""

    @abstractmethod
    def select(self, index: Tensor) -> ImageContext:
        """Rows ``index`` (int64 (B',), repeats allowed: ``select(arange(B).repeat_interleave(k))``
        gives k images per text)."""

    @abstractmethod
    def detach(self) -> ImageContext:
        """The same context without autograd history."""


def concat_tokens(ids_a: Tensor, mask_a: Tensor, ids_b: Tensor, mask_b: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate two padded batches along the sequence: (B, La) + (B, Lb) -> (B, La + Lb)."""
    if ids_a.shape[0] != ids_b.shape[0]:
        raise ValueError(f"batch sizes differ: {ids_a.shape[0]} vs {ids_b.shape[0]}")
    return torch.cat([ids_a, ids_b], 1), torch.cat([mask_a.bool(), mask_b.bool()], 1)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits with everything outside the top-k / nucleus (top-p) set to -inf.

    logits: (B, V) float (already divided by the temperature).  ``top_k`` 0 and
    ``top_p`` 1.0 disable each filter; the most likely token always survives."""
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    out = logits
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        # drop a token when the mass strictly before it already reaches top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_tokens(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sample one token per row and return ``(ids int64 (B,), logprobs fp32 (B,))``.

    logits: (B, V) float.  ``temperature`` 0 is greedy (argmax) and records
    log-probs at temperature 1.  The recorded log-prob is that of the full
    tempered distribution, ``log_softmax(logits / T)[id]`` via
    :func:`unigrpo.ops.token_logprobs`, the op the training path recomputes it
    with; top-k / top-p only restrict which tokens can be drawn."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if temperature == 0:
        ids = logits.argmax(-1)
        return ids, ops.token_logprobs(logits, ids, 1.0)
    scaled = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(scaled, dim=-1)
    ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return ids, ops.token_logprobs(logits, ids, temperature)


class UnifiedPolicy(nn.Module, ABC):
    """A unified model that writes reasoning tokens and then denoises an image.

    Subclasses set ``tokenizer`` (a ``transformers`` tokenizer), ``latent_shape``
    (one sample's latent shape, e.g. ``(3, 32, 32)``), ``pad_token_id`` and
    ``stop_token_ids`` (ids that end the reasoning, e.g. ``</think>``), and
    implement the abstract methods.  Everything else (sampling, log-probs,
    reference copies) is shared."""

    tokenizer: Any
    latent_shape: tuple[int, ...]
    pad_token_id: int
    stop_token_ids: tuple[int, ...]
    #: shift of the sigma schedule the model was trained with (see unigrpo.models.schedule)
    timestep_shift: float = 1.0

    # ------------------------------------------------------------------ text
    @abstractmethod
    def encode_prompts(self, texts: Sequence[str], reasoning: bool = True) -> TokenBatch:
        """Tokenise user prompts into a left-padded batch on the model's device.

        ``reasoning=True``: the context a reasoning generation continues (think
        mode: e.g. ``<bos> prompt <think>``); ``False``: the bare prompt, ready
        for :meth:`image_context` without reasoning.  Raises ``ValueError``
        naming any word the tokenizer does not know."""

    def decode(self, ids: Tensor, mask: Tensor | None = None) -> list[str]:
        """Token ids (B, L) -> B strings (masked-out tokens skipped)."""
        rows = []
        for i in range(ids.shape[0]):
            keep = ids[i] if mask is None else ids[i][mask[i].bool()]
            rows.append(self.tokenizer.decode(keep.tolist(), skip_special_tokens=False))
        return rows

    #: True when ``prefill(..., max_new_tokens=n)`` gives a static state whose
    #: ``decode_step`` updates only in place (fixed shapes): CUDA-graph capturable
    supports_static_decode: bool = False

    @abstractmethod
    def prefill(self, ids: Tensor, mask: Tensor, max_new_tokens: int | None = None) -> tuple[Tensor, Any]:
        """Run a left-padded batch through the model with a fresh KV cache.

        ids int64 (B, L), mask bool (B, L) -> (next-token logits (B, V) float at
        the last position, opaque decoding state holding the cache).
        ``max_new_tokens`` (only where ``supports_static_decode``): preallocate
        the cache for that many decode steps (a static state)."""

    @abstractmethod
    def decode_step(self, tokens: Tensor, active: Tensor, state: Any) -> Tensor:
        """Append one token per row (int64 (B,)) to ``state``'s cache (in place)
        and return the next-token logits (B, V).  ``active`` bool (B,): False for
        rows that already stopped (their token is the pad id and is masked out)."""

    @abstractmethod
    def text_forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Teacher-forced final hidden states (B, L, H) (after the final norm,
        before the LM head) of a padded batch whose real tokens are contiguous."""

    @property
    @abstractmethod
    def lm_head_weight(self) -> Tensor:
        """LM head weight (V, H); logits = hidden @ weight.T (no bias)."""

    def token_logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, V): position t predicts token t + 1."""
        return self.text_forward(ids, mask) @ self.lm_head_weight.T

    def token_logprobs(self, ids: Tensor, mask: Tensor, temperature: float = 1.0,
                       return_entropy: bool = False):
        """Teacher-forced ``log_softmax(logits / T)`` of each token given its prefix.

        Returns fp32 (B, L): entry t is log p(ids[:, t] | ids[:, :t]) for t >= 1,
        0 at t = 0 and wherever ``mask`` (or the previous token's mask) is False;
        with ``return_entropy`` also the entropy (B, L), same layout.  Uses the
        fused LM-head op, so the (B, L, V) logits never exist whole.  Equals the
        log-probs :meth:`generate_reasoning` records (up to float rounding)."""
        hidden = self.text_forward(ids, mask)
        b, length, h = hidden.shape
        if length < 2:
            zeros = hidden.new_zeros((b, length), dtype=torch.float32)
            return (zeros, zeros.clone()) if return_entropy else zeros
        valid = mask[:, 1:].bool() & mask[:, :-1].bool()
        flat_h = hidden[:, :-1].reshape(-1, h)
        flat_ids = ids[:, 1:].reshape(-1)
        out = ops.fused_linear_token_logprobs(flat_h, self.lm_head_weight, flat_ids, temperature=temperature,
                                              return_entropy=return_entropy)
        logp, ent = (out if return_entropy else (out, None))
        zero = hidden.new_zeros((b, 1), dtype=torch.float32)
        logp = torch.cat([zero, logp.view(b, length - 1).masked_fill(~valid, 0.0)], 1)
        if not return_entropy:
            return logp
        return logp, torch.cat([zero, ent.view(b, length - 1).masked_fill(~valid, 0.0)], 1)

    @torch.no_grad()
    def generate_reasoning(self, ids: Tensor, mask: Tensor, *, max_new_tokens: int = 64,
                           temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                           generator: torch.Generator | None = None, cuda_graph: bool = False) -> Reasoning:
        """Sample reasoning tokens for a left-padded prompt batch, with a KV cache.

        ids int64 (B, L), mask bool (B, L) (from :meth:`encode_prompts`).  Each
        row samples until one of ``stop_token_ids`` (kept, mask True) or
        ``max_new_tokens``; the loop ends when every row stopped.
        ``temperature`` 0 is greedy.  ``generator`` seeds the sampling (same
        generator state + same inputs -> same tokens).  ``cuda_graph``: on CUDA,
        with a policy that ``supports_static_decode``, decode with a static KV
        cache and replay one captured decode step per token.  See :class:`Reasoning`."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        b = ids.shape[0]
        stop = torch.tensor(self.stop_token_ids, device=ids.device)
        if cuda_graph and ids.is_cuda and self.supports_static_decode:
            logits, state = self.prefill(ids, mask.bool(), max_new_tokens=max_new_tokens)
            decode = GraphedDecode(self, ids, mask.bool(), max_new_tokens, state)
        else:
            logits, state = self.prefill(ids, mask.bool())
            decode = self.decode_step
        out_ids, out_lp, out_mask = [], [], []
        done = torch.zeros(b, dtype=torch.bool, device=ids.device)
        for step in range(max_new_tokens):
            tok, lp = sample_tokens(logits, temperature, top_k, top_p, generator)
            active = ~done
            tok = torch.where(active, tok, torch.full_like(tok, self.pad_token_id))
            out_ids.append(tok)
            out_lp.append(torch.where(active, lp, torch.zeros_like(lp)))
            out_mask.append(active)
            done = done | torch.isin(tok, stop)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            logits = decode(tok, active, state)
        return Reasoning(torch.stack(out_ids, 1), torch.stack(out_lp, 1), torch.stack(out_mask, 1), ~done,
                         1.0 if temperature == 0 else float(temperature))

    # ----------------------------------------------------------------- image
    @abstractmethod
    def image_context(self, ids: Tensor, mask: Tensor) -> ImageContext:
        """Encode the text an image is conditioned on (prompt + reasoning, padded
        ids int64 (B, L) and mask bool (B, L)); the policy appends its own
        image-start marker.  Computed once per round; differentiable when grad
        is enabled."""

    @abstractmethod
    def velocity(self, x: Tensor, sigma: Tensor, context: ImageContext) -> Tensor:
        """Predicted velocity ``v = noise - x_0`` at noisy latents ``x`` (B,
        *latent_shape) float and noise levels ``sigma`` fp32 (B,) in (0, 1]
        (a scalar or 0-dim tensor is broadcast), conditioned on ``context``
        (B rows).  Returns v like x."""

    @abstractmethod
    def images_to_latents(self, images: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) images -> latents (B, *latent_shape) (x_0)."""

    @abstractmethod
    def latents_to_images(self, latents: Tensor) -> Tensor:
        """Latents (B, *latent_shape) -> uint8 (B, H, W, 3) images (clamped)."""

    # ------------------------------------------------------------- lifecycle
    def reference_copy(self) -> UnifiedPolicy:
        """A frozen deep copy (eval mode, ``requires_grad`` False), e.g. the
        velocity-MSE / KL reference.  Shares no storage with ``self``."""
        ref = copy.deepcopy(self)
        ref.eval()
        ref.requires_grad_(False)
        return ref

    @abstractmethod
    def save_pretrained(self, directory: str | Path) -> None:
        """Write a self-contained checkpoint directory (config, weights, tokenizer)."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> UnifiedPolicy:
        """Load a checkpoint written by :meth:`save_pretrained`; clear errors for a
        missing or corrupt directory and for a config that does not match the weights."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

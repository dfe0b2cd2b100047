"""The policy interface: what rollouts and the trainer need from a unified
(reason-then-draw) model, and nothing model-specific beyond it.

A round of generation is ``prompt -> reasoning tokens -> image``::

    batch = policy.encode_prompts(texts)                    # left-padded ids + mask
    r = generate_reasoning(policy, batch.ids, batch.mask,   # unigrpo.sampling
                           max_new_tokens=64, temperature=1.0, generator=g)
    ids, mask = concat_tokens(batch.ids, batch.mask, r.ids, r.mask)
    ctx = policy.image_context(ids, mask)                   # text KV cache, computed once
    sigmas = policy.sigma_schedule(num_steps)               # 1 -> 0
    x = torch.randn(B, *policy.latent_shape, generator=g)   # x_1: noise
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        v = policy.velocity(x, sigma.expand(B), ctx)        # v = noise - x_0
        x, *_ = ops.sde_step(x, v, sigma, sigma_next, noise_level)
    images = policy.latents_to_images(x)                    # uint8 (B, H, W, 3)

and training recomputes, from one teacher-forced pass per minibatch,
``hidden, ctx = policy.text_and_image_context(ids, mask)``: the reasoning's
log-probs (:func:`hidden_token_logprobs`) and ``policy.velocity(x_k, sigma_k, ctx)``
on the rollout's states.

Conventions: token ids int64, masks bool (True = a real token); sequences are
left-padded prompts followed by right-padded generations, so a row's real
tokens are contiguous.  Latents are float (B, *latent_shape); sigma is fp32
(B,) in (0, 1]; x at sigma = 1 is pure noise, x at sigma = 0 is the image.

Implementing a new model: subclass :class:`UnifiedPolicy`, implement the
abstract methods (``prefill`` / ``decode_step`` are the two primitives the
shared sampler in :mod:`unigrpo.sampling` drives), return an
:class:`ImageContext` subclass from ``image_context``, and register a loader
``(model_config, device) -> policy`` in :data:`POLICIES` (docs/adapter.md).
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
from .registry import Registry
from .schedule import sigma_schedule

__all__ = ["TokenBatch", "Reasoning", "ImageContext", "SeenImages", "UnifiedPolicy", "concat_tokens",
           "hidden_token_logprobs", "POLICIES"]

#: policy loaders ``(model: ModelConfig, device) -> UnifiedPolicy`` by name (``model.type``);
#: entry points of the group ``unigrpo.policies``, or ``POLICIES.register(name, loader)``
POLICIES: Registry = Registry("policy", "unigrpo.policies")


@dataclass
class TokenBatch:
    """A padded batch of token sequences: ``ids`` int64 (B, L), ``mask`` bool (B, L)."""

    ids: Tensor
    mask: Tensor

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.mask.to(device))


@dataclass
class Reasoning:
    """Output of :func:`unigrpo.sampling.generate_reasoning` for B rows and N steps.

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


@dataclass
class SeenImages:
    """Images interleaved with a batch's text, for multi-round generation.

    ``latents``: (B, R, *latent_shape) clean latents x_0 of up to R images per row;
    ``slots``: int64 (B, R), the text column each image sits before (image r of row b
    comes right after ``ids[b, :slots[b, r]]``; a slot equal to the text length puts it
    at the end); ``present``: bool (B, R), which images a row has: a prefix of its R,
    with non-decreasing slots. The policy wraps each present image in its own tokens
    (for the built-in model: ``<image>``, the image tokens, then ``<think>``), so text
    after an image attends to it and nothing of the text changes."""

    latents: Tensor
    slots: Tensor
    present: Tensor

    @property
    def rounds(self) -> int:
        return int(self.present.shape[1])

    def append(self, latents: Tensor, slots: Tensor, present: Tensor) -> SeenImages:
        """These images plus one more per row: latents (B, *latent_shape), slots int64 (B,), present bool (B,)."""
        return SeenImages(torch.cat([self.latents, latents[:, None].to(self.latents.dtype)], 1),
                          torch.cat([self.slots, slots[:, None]], 1), torch.cat([self.present, present[:, None]], 1))

    def select(self, index: Tensor) -> SeenImages:
        return SeenImages(self.latents[index], self.slots[index], self.present[index])

    @staticmethod
    def empty(batch: int, latent_shape: Sequence[int], device, dtype=torch.float32) -> SeenImages:
        return SeenImages(torch.zeros((batch, 0, *latent_shape), device=device, dtype=dtype),
                          torch.zeros((batch, 0), dtype=torch.long, device=device),
                          torch.zeros((batch, 0), dtype=torch.bool, device=device))


def concat_tokens(ids_a: Tensor, mask_a: Tensor, ids_b: Tensor, mask_b: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate two padded batches along the sequence: (B, La) + (B, Lb) -> (B, La + Lb)."""
    if ids_a.shape[0] != ids_b.shape[0]:
        raise ValueError(f"batch sizes differ: {ids_a.shape[0]} vs {ids_b.shape[0]}")
    return torch.cat([ids_a, ids_b], 1), torch.cat([mask_a.bool(), mask_b.bool()], 1)


class UnifiedPolicy(nn.Module, ABC):
    """A unified model that writes reasoning tokens and then denoises an image.

    Subclasses set ``tokenizer`` (a ``transformers`` tokenizer), ``latent_shape``
    (one sample's latent shape, e.g. ``(3, 32, 32)``), ``pad_token_id`` and
    ``stop_token_ids`` (ids that end the reasoning, e.g. ``</think>``), and
    implement the abstract methods.  Everything else (log-probs, schedules,
    reference copies) is shared; sampling lives in :mod:`unigrpo.sampling`."""

    tokenizer: Any
    latent_shape: tuple[int, ...]
    pad_token_id: int
    stop_token_ids: tuple[int, ...]
    #: shift of the sigma schedule the model was trained with (see :mod:`unigrpo.schedule`)
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

    def token_logprobs(self, ids: Tensor, mask: Tensor, temperature: float = 1.0, start: int = 1,
                       return_entropy: bool = False):
        """Teacher-forced ``log_softmax(logits / T)`` of tokens ``start ..`` given their prefix:
        :func:`hidden_token_logprobs` of :meth:`text_forward`. Equals the log-probs
        :func:`unigrpo.sampling.generate_reasoning` records (up to float rounding)."""
        return hidden_token_logprobs(self.text_forward(ids, mask), self.lm_head_weight, ids, mask, temperature,
                                     start, return_entropy)

    # ----------------------------------------------------------------- image
    def sigma_schedule(self, steps: int, shift: float | None = None) -> Tensor:
        """fp32 (steps + 1,) sigmas from 1 to 0 on the policy's device: the model's
        own shifted schedule (``shift`` None: :attr:`timestep_shift`). A model whose
        scheduler computes its sigmas otherwise overrides this."""
        return sigma_schedule(steps, self.timestep_shift if shift is None else shift, device=self.device)

    def text_and_image_context(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, ImageContext]:
        """:meth:`text_forward` and :meth:`image_context` of the same batch. Training
        needs both for every minibatch; a model whose image context is the text's own
        KV cache gets both from one pass and overrides this (the default runs two)."""
        return self.text_forward(ids, mask), self.image_context(ids, mask)

    @abstractmethod
    def image_context(self, ids: Tensor, mask: Tensor) -> ImageContext:
        """Encode the text an image is conditioned on (prompt + reasoning, padded
        ids int64 (B, L) and mask bool (B, L)); the policy appends its own
        image-start marker.  Computed once per round; differentiable when grad
        is enabled."""

    # ----------------------------------------------------------- interleaved
    #: True when the model implements the two ``interleaved_*`` primitives below:
    #: text after an image that attends to it (multi-round generation, ``rollout.max_rounds`` > 1)
    supports_interleaved: bool = False
    #: stop tokens that, ending a turn written after looking at an image, end the episode
    #: (the other stop tokens ask for another image)
    end_of_episode_token_ids: tuple[int, ...] = ()

    def interleaved_prefill(self, ids: Tensor, mask: Tensor, images: SeenImages,
                            max_new_tokens: int | None = None) -> tuple[Tensor, Any]:
        """:meth:`prefill` of text with ``images`` inside it: the model has looked at
        them, and the next-token logits (B, V) are each row's after its last real
        element (its last text token, or the tokens closing an image at the row's end).
        The state continues with :meth:`decode_step`."""
        raise NotImplementedError(self._no_interleaving())

    def interleaved_contexts(self, ids: Tensor, mask: Tensor, images: SeenImages) -> tuple[Tensor, ImageContext]:
        """One teacher-forced pass over text with ``images`` inside it. Returns hidden
        (B, L, H), where ``hidden[:, c]`` is the state the token at column c + 1 is
        predicted from (the state closing an image when one sits before column c + 1,
        so :func:`hidden_token_logprobs` scores every turn's tokens as generated), and
        the image contexts of all B x R images, row ``b * R + r``: image r of row b
        conditioned on everything before it (rows of absent images hold a finite,
        unused context)."""
        raise NotImplementedError(self._no_interleaving())

    def interleaved_image_context(self, ids: Tensor, mask: Tensor, images: SeenImages) -> ImageContext:
        """The context of a new image after all of ``ids`` and the ``images`` in it
        (B rows): :meth:`interleaved_contexts` with one more image at the end; a model
        with a cheaper way overrides this."""
        b = ids.shape[0]
        length = torch.full((b,), ids.shape[1], dtype=torch.long, device=ids.device)
        latents = torch.zeros((b, *self.latent_shape), device=ids.device, dtype=images.latents.dtype)
        ahead = images.append(latents, length, torch.ones(b, dtype=torch.bool, device=ids.device))
        r = ahead.rounds
        _, ctx = self.interleaved_contexts(ids, mask, ahead)
        return ctx.select(torch.arange(b, device=ids.device) * r + (r - 1))

    def _no_interleaving(self) -> str:
        return (f"{type(self).__name__} does not support interleaved (multi-round) generation: "
                "set rollout.max_rounds to 1, or implement interleaved_prefill and interleaved_contexts "
                "(docs/adapter.md)")

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

    def load_weights(self, directory: str | Path) -> None:
        """Load what :meth:`save_pretrained` wrote into this policy, in place (resuming a
        run). The default loads a whole new policy and copies its state; a model with
        frozen parts it never saves overrides this."""
        from .integrity import check_finite

        loaded = type(self).from_pretrained(directory, device=self.device).state_dict()
        check_finite(loaded, str(directory))
        self.load_state_dict(loaded)

    @classmethod
    @abstractmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> UnifiedPolicy:
        """Load a checkpoint written by :meth:`save_pretrained`; clear errors for a
        missing or corrupt directory and for a config that does not match the weights."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def hidden_token_logprobs(hidden: Tensor, lm_head_weight: Tensor, ids: Tensor, mask: Tensor, temperature: float = 1.0,
                          start: int = 1, return_entropy: bool = False):
    """``log_softmax(hidden @ W.T / T)`` scored at the next token, for tokens ``start ..``.

    hidden: (B, L, H) teacher-forced states of ``ids`` int64 (B, L) (mask bool (B, L));
    ``start`` >= 1. Returns fp32 (B, L - start): entry j is log p(ids[:, start + j] |
    ids[:, :start + j]), 0 where that token or the one before it is masked out; with
    ``return_entropy`` also the entropies, same layout. Uses the fused LM-head op, so
    the (B, L, V) logits never exist whole."""
    b, length, h = hidden.shape
    if not 1 <= start <= length:
        raise ValueError(f"start must be in [1, {length}] for sequences of length {length}, got {start}")
    n = length - start
    if n == 0:
        zeros = hidden.new_zeros((b, 0), dtype=torch.float32)
        return (zeros, zeros.clone()) if return_entropy else zeros
    valid = mask[:, start:].bool() & mask[:, start - 1:-1].bool()
    out = ops.fused_linear_token_logprobs(hidden[:, start - 1:-1].reshape(-1, h), lm_head_weight,
                                          ids[:, start:].reshape(-1), temperature=temperature,
                                          return_entropy=return_entropy)
    logp, ent = out if return_entropy else (out, None)
    logp = logp.view(b, n).masked_fill(~valid, 0.0)
    return (logp, ent.view(b, n).masked_fill(~valid, 0.0)) if return_entropy else logp

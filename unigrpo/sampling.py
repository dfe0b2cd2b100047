"""Sampling beside the model, not inside it (gpt-fast's ``generate.py``):
top-k / nucleus filtering, one sampled token with its log-prob, and the
reasoning sampler that drives a policy's ``prefill`` / ``decode_step``.

The same code samples for every policy, so the log-probs rollouts record and
those the training path recomputes (:func:`unigrpo.policy.hidden_token_logprobs`)
agree by construction: both are ``log_softmax(logits / T)[id]`` of the full
tempered distribution, through :func:`unigrpo.ops.token_logprobs`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from .cuda_graphs import GraphedDecode
from .policy import Reasoning, SeenImages, UnifiedPolicy

__all__ = ["filter_logits", "sample_tokens", "generate_reasoning"]


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


@torch.no_grad()
def generate_reasoning(policy: UnifiedPolicy, ids: Tensor, mask: Tensor, *, max_new_tokens: int = 64,
                       temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                       generator: torch.Generator | None = None, cuda_graph: bool = False,
                       images: SeenImages | None = None) -> Reasoning:
    """Sample reasoning tokens for a left-padded prompt batch, with a KV cache.

    ids int64 (B, L), mask bool (B, L) (from ``policy.encode_prompts``).  Each
    row samples until one of ``policy.stop_token_ids`` (kept, mask True) or
    ``max_new_tokens``; the loop ends when every row stopped.
    ``temperature`` 0 is greedy.  ``generator`` seeds the sampling (same
    generator state + same inputs -> same tokens).  ``cuda_graph``: on CUDA,
    with a policy that ``supports_static_decode``, decode with a static KV
    cache and replay one captured decode step per token.  ``images``: text with the images
    the model has looked at inside it (a later turn of a multi-round episode; the policy
    must support interleaving), continued after each row's last image.  See :class:`Reasoning`."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    b = ids.shape[0]
    stop = torch.tensor(policy.stop_token_ids, device=ids.device)
    if images is None:
        def prefill(n=None):
            return policy.prefill(ids, mask.bool(), max_new_tokens=n)
    else:  # a policy without interleaving raises its own clear error here
        def prefill(n=None):
            return policy.interleaved_prefill(ids, mask.bool(), images, max_new_tokens=n)
    if cuda_graph and ids.is_cuda and policy.supports_static_decode:
        logits, state = prefill(max_new_tokens)
        decode = GraphedDecode(policy, b, max_new_tokens, state, lambda: prefill(max_new_tokens)[1])
    else:
        logits, state = prefill()
        decode = policy.decode_step
    out_ids, out_lp, out_mask = [], [], []
    done = torch.zeros(b, dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        tok, lp = sample_tokens(logits, temperature, top_k, top_p, generator)
        active = ~done
        tok = torch.where(active, tok, torch.full_like(tok, policy.pad_token_id))
        out_ids.append(tok)
        out_lp.append(torch.where(active, lp, torch.zeros_like(lp)))
        out_mask.append(active)
        done = done | torch.isin(tok, stop)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = decode(tok, active, state)
    return Reasoning(torch.stack(out_ids, 1), torch.stack(out_lp, 1), torch.stack(out_mask, 1), ~done,
                     1.0 if temperature == 0 else float(temperature))

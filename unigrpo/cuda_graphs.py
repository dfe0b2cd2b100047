"""CUDA graphs for the two loops a rollout repeats: one reasoning decode step
per token and one denoising step per sigma. A small model's step is kernel
launches, not math, so each is captured once and replayed.

:class:`CapturedGraph` is the one capture recipe both use: warm up on a side
stream (lazy module loading, autotuning, the allocator's first blocks), capture
on the default stream's graph pool, then per call copy the inputs into the
static buffers and replay. Capture runs nothing, so no real state is touched
until the first replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .policy import UnifiedPolicy

__all__ = ["CapturedGraph", "GraphedDecode"]


class CapturedGraph:
    """``fn()`` captured once; :meth:`replay` reruns it on whatever its static
    inputs hold and returns its (static) outputs.

    ``warmup``: what to run before capture, ``warmup_iters`` times, on a side
    stream (default: ``fn`` itself; a caller whose ``fn`` mutates real state
    passes a version on scratch state)."""

    def __init__(self, fn: Callable[[], Any], warmup: Callable[[], Any] | None = None, warmup_iters: int = 2) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup_iters):
                (fn if warmup is None else warmup)()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.outputs = fn()
        # the graph reads whatever fn's closure reads (a context, a decode state) by address:
        # hold them for as long as the graph can be replayed
        self._reads = (fn, warmup)

    def replay(self) -> Any:
        self.graph.replay()
        return self.outputs  # overwritten by the next replay: consume (or clone) before it


class GraphedDecode:
    """A policy's ``decode_step`` on a static decode state (``policy.prefill(...,
    max_new_tokens=n)``), captured once and replayed per token. Warm-up runs on a
    throwaway state of the same shapes, so the real state is untouched until replay."""

    def __init__(self, policy: UnifiedPolicy, batch: int, max_new_tokens: int, state: Any,
                 fresh_state: Callable[[], Any]) -> None:
        """``fresh_state()``: another static state like ``state`` (the same prefill), for the warm-up."""
        device = policy.device
        self.tokens = torch.full((batch,), policy.pad_token_id, dtype=torch.long, device=device)
        self.active = torch.zeros(batch, dtype=torch.bool, device=device)
        scratch: list[Any] = []

        def warmup() -> None:
            if not scratch:
                scratch.append(fresh_state())
            policy.decode_step(self.tokens, self.active, scratch[0])

        self.captured = CapturedGraph(lambda: policy.decode_step(self.tokens, self.active, state), warmup,
                                      warmup_iters=min(2, max_new_tokens))

    def __call__(self, tokens: Tensor, active: Tensor, state: Any) -> Tensor:
        self.tokens.copy_(tokens)
        self.active.copy_(active)
        return self.captured.replay()

"""An exponential moving average of the trained parameters (``train.ema_decay``),
swapped in for evaluation.

Only the parameters the optimizer trains are averaged (a LoRA run's adapters, not the
frozen base), in fp32 whatever the parameters' dtype: a bf16 shadow could not move by
(1 - decay) of a step. The update is torch's own EMA rule
(``torch.optim.swa_utils.get_ema_multi_avg_fn``); the model is never copied.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .sharding import copy_full_


class ParameterEMA:
    def __init__(self, params: Iterable[nn.Parameter], decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"train.ema_decay must be in (0, 1) to keep an average, got {decay}")
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]
        self._average = get_ema_multi_avg_fn(decay)
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * param; call after each optimizer step."""
        self._average(self.shadow, [p.detach().float() for p in self.params], self.updates)
        self.updates += 1

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the duration, the trained ones restored after."""
        trained = [p.detach().clone() for p in self.params]
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)
        try:
            yield
        finally:
            for p, t in zip(self.params, trained):
                p.copy_(t)

    def state_dict(self, shadow: bool = True) -> dict[str, object]:
        """``shadow`` False: without the averages (a sharded run checkpoints them with its weights)."""
        return {"decay": self.decay, "updates": self.updates,
                "shadow": [s.clone() for s in self.shadow] if shadow else None}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Whole averages are copied in (each rank keeps its slice of a sharded parameter's);
        ``shadow`` None: they were loaded with the sharded weights."""
        shadow: list[Tensor] | None = state["shadow"]  # type: ignore[assignment]
        if shadow is not None:
            if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
                raise ValueError("the checkpoint's EMA does not match the policy's trained parameters")
            for mine, saved in zip(self.shadow, shadow):
                copy_full_(mine, saved)
        self.updates = int(state["updates"])  # type: ignore[arg-type]

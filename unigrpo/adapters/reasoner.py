"""The text half of a two-model policy: a Hugging Face causal LM that writes the plan.

The prompt is laid out with the tokenizer's own chat template, as three pieces
tokenised apart so that their boundaries are known from the ids alone::

    [prefix: system message, user turn opening] [the user's prompt] [suffix: turn end,
    assistant opening] [<think>] -> sampled reasoning ... </think> or EOS

:meth:`ChatLayout.split` recovers (prompt, reasoning) text from any row of ids the
rollout produced, which is what the drawing model is conditioned on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["ChatLayout", "KVState", "positions"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_SENTINEL = "\x00unigrpo-prompt\x00"


def positions(mask: Tensor) -> Tensor:
    """Rotary positions of a padded batch whose real tokens are contiguous: 0 at each row's
    first real token (left padding takes 0 too; it is masked out)."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


@dataclass
class KVState:
    """Decoding state of :meth:`ChatLayout`-driven sampling: the LM's cache, the attention
    mask so far and each row's next position."""

    cache: Any
    mask: Tensor
    next_pos: Tensor


class ChatLayout:
    """Where the prompt, the think tag and the reasoning sit in a row of LM token ids."""

    def __init__(self, tokenizer, system_prompt: str = "") -> None:
        self.tokenizer = tokenizer
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
                   [{"role": "user", "content": _SENTINEL}]
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:  # a base LM: a plain layout
            rendered = (f"{system_prompt}\n\n" if system_prompt else "") + f"User: {_SENTINEL}\nAssistant: "
        if rendered.count(_SENTINEL) != 1:
            raise ValueError("model.lm: the tokenizer's chat template does not place the user message verbatim")
        prefix, suffix = rendered.split(_SENTINEL)
        self.prefix = self._encode(prefix)
        self.suffix = self._encode(suffix)
        self.think = self._encode(THINK_OPEN)
        if not self.suffix:
            raise ValueError("model.lm: the chat template adds nothing after the user message; "
                             "cannot tell the prompt from the reasoning")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def stop_token_ids(self, generation_eos: int | Sequence[int] | None) -> tuple[int, ...]:
        """``</think>`` when it is one token, and every end-of-turn / EOS id the model knows."""
        ids = set()
        close = self._encode(THINK_CLOSE)
        if len(close) == 1:
            ids.add(close[0])
        for eos in (generation_eos if isinstance(generation_eos, (list, tuple)) else [generation_eos]):
            if eos is not None:
                ids.add(int(eos))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        if not ids:
            raise ValueError("model.lm: the tokenizer has no EOS token and </think> is not one token: "
                             "the reasoning could never stop")
        return tuple(sorted(ids))

    def encode(self, texts: Sequence[str], reasoning: bool, pad_id: int, device) -> tuple[Tensor, Tensor]:
        """Left-padded ids int64 (B, L) and mask bool (B, L) of each prompt's layout."""
        tail = self.suffix + (self.think if reasoning else [])
        # the user's text as text: a tag it happens to contain is not a control token
        rows = [self.prefix + self.tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                + tail for t in texts]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = True
        return ids.to(device), mask.to(device)

    def split(self, ids: Tensor, mask: Tensor) -> list[tuple[str, str]]:
        """(prompt, reasoning) text of each row of ids laid out by :meth:`encode` (+ any
        generated tokens); the reasoning ends at ``</think>``, think tags and special tokens
        dropped. A row not in this layout is a ValueError."""
        out = []
        n_pre, n_suf = len(self.prefix), len(self.suffix)
        for i in range(ids.shape[0]):
            row = ids[i][mask[i].bool()].tolist()
            if row[:n_pre] != self.prefix:
                raise ValueError(f"row {i} does not start with the chat layout's prefix "
                                 "(ids must come from encode_prompts)")
            end = next((j for j in range(n_pre, len(row) - n_suf + 1) if row[j:j + n_suf] == self.suffix), None)
            if end is None:
                raise ValueError(f"row {i} has no end of the user turn (ids must come from encode_prompts)")
            rest = row[end + n_suf:]
            if rest[:len(self.think)] == self.think:
                rest = rest[len(self.think):]
            prompt = self.tokenizer.decode(row[n_pre:end], skip_special_tokens=True)
            reasoning = self.tokenizer.decode(rest, skip_special_tokens=True).split(THINK_CLOSE)[0]
            out.append((prompt.strip(), reasoning.replace(THINK_OPEN, "").strip()))
        return out

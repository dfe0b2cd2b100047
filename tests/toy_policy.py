"""A toy :class:`unigrpo.policy.UnifiedPolicy` that owes nothing to the built-in world:
byte-level text, a GRU cell for the reasoning, an MLP velocity field on 8x8 RGB
latents conditioned on the text's last hidden state. Small enough for any test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from unigrpo.policy import ImageContext, TokenBatch, UnifiedPolicy

PAD, BOS, STOP, VOCAB = 256, 257, 258, 259


class ByteTokenizer:
    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@dataclass
class ToyContext(ImageContext):
    h: Tensor  # (B, H): the text's last hidden state

    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    def select(self, index: Tensor) -> ToyContext:
        return ToyContext(self.h[index])

    def detach(self) -> ToyContext:
        return ToyContext(self.h.detach())


class ToyPolicy(UnifiedPolicy):
    latent_shape = (3, 8, 8)
    pad_token_id = PAD
    stop_token_ids = (STOP,)

    def __init__(self, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.hidden, self.tokenizer = hidden, ByteTokenizer()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, VOCAB, bias=False)
        d = 3 * 8 * 8
        self.field = nn.Sequential(nn.Linear(d + 1 + hidden, 64), nn.SiLU(), nn.Linear(64, d))

    def encode_prompts(self, texts, reasoning: bool = True) -> TokenBatch:
        rows = [[BOS, *t.encode("utf-8")] for t in texts]
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), PAD, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, n - len(r):], mask[i, n - len(r):] = torch.tensor(r), True
        return TokenBatch(ids, mask).to(self.device)

    def _step(self, h: Tensor, tokens: Tensor, active: Tensor) -> Tensor:
        return torch.where(active[:, None], self.cell(self.embed(tokens), h), h)

    def _states(self, ids: Tensor, mask: Tensor) -> Tensor:
        h = ids.new_zeros((ids.shape[0], self.hidden), dtype=torch.float32)
        out = []
        for t in range(ids.shape[1]):
            h = self._step(h, ids[:, t], mask[:, t].bool())
            out.append(h)
        return torch.stack(out, 1)

    def prefill(self, ids, mask, max_new_tokens=None):
        states = self._states(ids, mask)
        state = {"h": states[:, -1]}
        return self.head(state["h"]), state

    def decode_step(self, tokens, active, state):
        state["h"] = self._step(state["h"], tokens, active.bool())
        return self.head(state["h"])

    def text_forward(self, ids, mask):
        return self._states(ids, mask)

    @property
    def lm_head_weight(self):
        return self.head.weight

    def image_context(self, ids, mask):
        return ToyContext(self._states(ids, mask)[:, -1])

    def velocity(self, x, sigma, context):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        return self.field(torch.cat([x.flatten(1), sigma[:, None], context.h], 1)).view_as(x)

    def images_to_latents(self, images):
        return images.permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1

    def latents_to_images(self, latents):
        x = ((latents.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).contiguous().cpu()

    def save_pretrained(self, directory):
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"hidden": self.hidden}))

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        from safetensors.torch import load_file

        d = Path(directory)
        policy = cls(**json.loads((d / "config.json").read_text()))
        policy.load_state_dict(load_file(str(d / "model.safetensors")))
        return policy.to(device)

    @classmethod
    def load(cls, model, device="cpu") -> ToyPolicy:
        """The policy loader (``model.type=...``): ``model.checkpoint=new`` builds a fresh one."""
        return cls().to(device) if model.checkpoint == "new" else cls.from_pretrained(model.checkpoint, device)

"""Image-text rewards from a local CLIP-family model (transformers ``CLIPModel``):

* ``clip``: the cosine of the prompt's and the image's CLIP embeddings (CLIPScore
  without its 2.5x rescaling), in [-1, 1];
* ``pickscore``: PickScore's preference score, ``exp(logit_scale) x`` that cosine
  (PickScore_v1 is a CLIP-H fine-tune; about 20-23 for typical images).

    python -m unigrpo.train task=prompts task.file=prompts.txt task.reward=clip \\
        task.reward_model=/models/clip-vit-large-patch14 ...

``task.reward_model`` is a local directory with the model and its processor; the
model runs on the GPU when there is one (else the CPU), batched over the round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["CLIPReward", "clip_reward", "pickscore_reward"]


class CLIPReward:
    """A reward callable ``(images uint8 (B, H, W, 3), prompts, metadata) -> (B,)`` scores."""

    def __init__(self, model_dir: str, scaled: bool, key: str = "task.reward_model",
                 device: str | torch.device | None = None) -> None:
        from transformers import CLIPModel, CLIPProcessor

        path = Path(model_dir).expanduser() if model_dir else None
        if path is None or not path.is_dir():
            raise ValueError(f"{key} must be a local directory with a CLIP model and its processor, got {model_dir!r}")
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
            self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{key}: {str(path)!r} is not a CLIP model with its processor "
                             f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.scaled = scaled

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Any]) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        inputs = self.processor(text=list(prompts), images=list(images.cpu().numpy()), return_tensors="pt",
                                padding=True, truncation=True)
        out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        image = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        text = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        cos = (image * text).sum(-1)
        return (self.model.logit_scale.exp().float() * cos if self.scaled else cos).cpu()


def clip_reward(model_dir: str = "") -> CLIPReward:
    return CLIPReward(model_dir, scaled=False)


def pickscore_reward(model_dir: str = "") -> CLIPReward:
    return CLIPReward(model_dir, scaled=True)

"""The built-in unified model (:class:`ShapesModel`): a small decoder-only
transformer on ``transformers`` Qwen2 blocks that writes reasoning tokens and
denoises a 32x32 RGB image in one sequence.

Modules: :mod:`.config` (:class:`ShapesConfig`), :mod:`.tokenizer` (word-level
HF tokenizer), :mod:`.masks` (attention masks, positions), :mod:`.layers`
(mixture-of-transformers decoder layer, timestep embedding, patches),
:mod:`.shapes_model` (the model), :mod:`.checkpoint` (save / load).
"""

from pathlib import Path

import torch

from ...task import ModelConfig
from .checkpoint import CheckpointError
from .config import ShapesConfig
from .shapes_model import KVImageContext, ShapesModel, latents_to_uint8
from .tokenizer import build_tokenizer, load_tokenizer

__all__ = ["ShapesConfig", "ShapesModel", "KVImageContext", "CheckpointError", "build_tokenizer",
           "load_tokenizer", "SFT_CHECKPOINT", "REFLECT_SFT_CHECKPOINT", "latents_to_uint8",
           "load_policy"]

#: the shipped supervised warm start (docs/sft.md), known to ``model.checkpoint`` as builtin:shapes-sft
SFT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "shapes-sft"
#: the multi-round warm start (task=shapes-reflect), builtin:shapes-reflect-sft
REFLECT_SFT_CHECKPOINT = SFT_CHECKPOINT.with_name("shapes-reflect-sft")
BUILTIN_CHECKPOINTS = {"builtin:shapes-sft": SFT_CHECKPOINT, "builtin:shapes-reflect-sft": REFLECT_SFT_CHECKPOINT}


def builtin_checkpoint(name: str, key: str = "model.checkpoint") -> Path:
    """The directory of a built-in checkpoint ``builtin:NAME``; an unknown name is an error naming ``key``."""
    if name not in BUILTIN_CHECKPOINTS:
        raise ValueError(f"{key} {name!r}: unknown; built in: {', '.join(BUILTIN_CHECKPOINTS)}")
    return BUILTIN_CHECKPOINTS[name]


def load_policy(model: ModelConfig, device: torch.device | str = "cpu") -> ShapesModel:
    """The ``shapes`` policy loader (``model.type=shapes``): ``model.checkpoint`` is a model
    directory, a run or ``checkpoint-*`` directory (verified), or a built-in one:
    ``builtin:shapes-sft`` (the default) or ``builtin:shapes-reflect-sft``."""
    checkpoint = model.checkpoint or "builtin:shapes-sft"
    if checkpoint.startswith("builtin:"):
        return ShapesModel.from_pretrained(builtin_checkpoint(checkpoint), device=device)
    from ...train.checkpointing import resolve_policy_dir  # a run or checkpoint directory works too

    return ShapesModel.from_pretrained(resolve_policy_dir(checkpoint)[0], device=device)

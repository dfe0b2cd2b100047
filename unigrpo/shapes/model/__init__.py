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
from .shapes_model import KVImageContext, ShapesModel
from .tokenizer import build_tokenizer, load_tokenizer

__all__ = ["ShapesConfig", "ShapesModel", "KVImageContext", "CheckpointError", "build_tokenizer",
           "load_tokenizer", "SFT_CHECKPOINT",
           "load_policy"]

#: the shipped supervised warm start (docs/sft.md), known to ``model.checkpoint`` as builtin:shapes-sft
SFT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "shapes-sft"
BUILTIN_CHECKPOINTS = {"builtin:shapes-sft": SFT_CHECKPOINT}


def load_policy(model: ModelConfig, device: torch.device | str = "cpu") -> ShapesModel:
    """The ``shapes`` policy loader (``model.type=shapes``): ``model.checkpoint`` is a model
    directory, a run or ``checkpoint-*`` directory (verified), or ``builtin:shapes-sft``
    (the default)."""
    checkpoint = model.checkpoint or "builtin:shapes-sft"
    if checkpoint.startswith("builtin:") and checkpoint not in BUILTIN_CHECKPOINTS:
        raise ValueError(f"model.checkpoint {checkpoint!r}: unknown; built in: {', '.join(BUILTIN_CHECKPOINTS)}")
    if checkpoint in BUILTIN_CHECKPOINTS:
        return ShapesModel.from_pretrained(BUILTIN_CHECKPOINTS[checkpoint], device=device)
    from ...train.checkpointing import resolve_policy_dir  # a run or checkpoint directory works too

    return ShapesModel.from_pretrained(resolve_policy_dir(checkpoint)[0], device=device)

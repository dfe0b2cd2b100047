"""The built-in unified model (:class:`ShapesModel`): a small decoder-only
transformer on ``transformers`` Qwen2 blocks that writes reasoning tokens and
denoises a 32x32 RGB image in one sequence.

Modules: :mod:`.config` (:class:`ShapesConfig`), :mod:`.tokenizer` (word-level
HF tokenizer), :mod:`.masks` (attention masks, positions), :mod:`.layers`
(mixture-of-transformers decoder layer, timestep embedding, patches),
:mod:`.schedule` (sigma schedules), :mod:`.shapes_model` (the model),
:mod:`.checkpoint` (save / load).
"""

from .checkpoint import CheckpointError
from .config import ShapesConfig
from .schedule import sample_training_sigmas, shift_sigma, sigma_schedule
from .shapes_model import KVImageContext, ShapesModel
from .tokenizer import build_tokenizer, load_tokenizer

__all__ = ["ShapesConfig", "ShapesModel", "KVImageContext", "CheckpointError", "build_tokenizer",
           "load_tokenizer", "sigma_schedule", "shift_sigma", "sample_training_sigmas"]

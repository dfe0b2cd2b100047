"""Configuration of the built-in unified model (:class:`ShapesConfig`).

Stored as ``config.json`` in a checkpoint directory.  The transformer part is
a ``transformers`` Qwen2 configuration built by :meth:`ShapesConfig.to_qwen2`;
the fields here are the ones a reader needs to know the model's shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ShapesConfig", "MODEL_TYPE", "FORMAT_VERSION"]

MODEL_TYPE = "unigrpo-shapes"
FORMAT_VERSION = 1


@dataclass
class ShapesConfig:
    """Shape of the built-in model.

    Text: ``vocab_size`` token embedding + untied LM head.  Image: a
    ``image_channels x image_size x image_size`` pixel latent cut into
    ``patch_size x patch_size`` patches (``num_patches`` tokens of
    ``patch_dim`` values).  ``image_expert``: image tokens get their own
    norms and MLP in every layer (mixture-of-transformers; attention shared).
    ``timestep_shift``: shift of the logit-normal training timesteps and of
    the sampling schedule.  ``special_tokens``: name -> id of ``<pad>``,
    ``<bos>``, ``<eos>``, ``<unk>``, ``<think>``, ``</think>``, ``<image>``,
    ``</image>``."""

    vocab_size: int = 75  # len(unigrpo.shapes.vocabulary()): the shipped single-round model has the first 69
    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 512
    image_size: int = 32
    image_channels: int = 3
    patch_size: int = 4
    image_expert: bool = True
    timestep_shift: float = 3.0
    timestep_embed_dim: int = 256
    initializer_range: float = 0.02
    special_tokens: dict[str, int] = field(default_factory=dict)
    model_type: str = MODEL_TYPE
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "image_size", "image_channels", "patch_size",
                     "timestep_embed_dim", "max_position_embeddings"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"config.{name} must be a positive int, got {v!r}")
        if self.hidden_size % 4:
            raise ValueError(f"config.hidden_size must be a multiple of 4 (2D sin-cos positions), got {self.hidden_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"config.hidden_size ({self.hidden_size}) must be a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("config: head dim (hidden_size / num_attention_heads) must be even for rotary")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"config.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.image_size % self.patch_size:
            raise ValueError(f"config.image_size ({self.image_size}) must be a multiple of "
                             f"patch_size ({self.patch_size})")
        if self.timestep_embed_dim % 2:
            raise ValueError(f"config.timestep_embed_dim must be even, got {self.timestep_embed_dim}")
        if not self.timestep_shift > 0:
            raise ValueError(f"config.timestep_shift must be > 0, got {self.timestep_shift}")
        if self.model_type != MODEL_TYPE:
            raise ValueError(f"config.model_type must be {MODEL_TYPE!r}, got {self.model_type!r}")
        for name, i in self.special_tokens.items():
            if not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise ValueError(f"config.special_tokens[{name!r}] = {i!r} is not an id in [0, {self.vocab_size})")

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def patch_dim(self) -> int:
        return self.image_channels * self.patch_size * self.patch_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.image_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapesConfig:
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}; known: {sorted(known)}")
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"config format_version {d['format_version']} is newer than this library "
                             f"supports ({FORMAT_VERSION})")
        return cls(**d)

    def to_qwen2(self):
        """The ``transformers.Qwen2Config`` of the decoder blocks (SDPA attention)."""
        from transformers import Qwen2Config

        from ...precision import SDPA_FP32_ON_CPU  # registers it with transformers

        cfg = Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            attention_dropout=0.0,
            use_sliding_window=False,
            tie_word_embeddings=False,
        )
        cfg._attn_implementation = SDPA_FP32_ON_CPU  # SDPA; fp32 on CPU, where its bf16 backward is slow
        return cfg

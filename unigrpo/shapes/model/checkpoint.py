"""Checkpoint directories of the built-in model: ``config.json``,
``model.safetensors`` (fp32 weights, bit-exact), tokenizer files
(``tokenizer.json``, ``tokenizer_config.json``) and ``manifest.json`` (each
file's size and sha256, written last; verified on load where present: the
shipped asset predates it).  Every way a directory can be wrong raises
:class:`CheckpointError` naming the file and the problem; non-finite weights
are never written and never loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ...integrity import CheckpointError, check_finite, read_safetensors, verify_manifest, write_manifest

__all__ = ["CheckpointError", "CONFIG_NAME", "WEIGHTS_NAME", "TOKENIZER_NAME", "save", "load"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"


def save(model, directory: str | Path) -> None:
    """Write ``model`` (a :class:`~unigrpo.shapes.model.ShapesModel`) to ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    check_finite(state, f"refusing to save {d}")
    save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt", "model_type": model.config.model_type})
    os.chmod(d / WEIGHTS_NAME, 0o644)  # safetensors creates it 0600; checkpoints ship as package data
    (d / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    saved = model.tokenizer.save_pretrained(str(d))
    write_manifest(d, [CONFIG_NAME, WEIGHTS_NAME, *(Path(f).name for f in saved)])


def _read_config(d: Path):
    from .config import ShapesConfig

    path = d / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{d} is not a checkpoint: no {CONFIG_NAME}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: not valid JSON ({e})") from e
    try:
        return ShapesConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid model config: {e}") from e


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    path = d / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{d} is not a checkpoint: no {WEIGHTS_NAME}")
    return read_safetensors(path)


def _read_tokenizer(d: Path):
    from .tokenizer import load_tokenizer

    if not (d / TOKENIZER_NAME).is_file():
        raise CheckpointError(f"{d} is not a checkpoint: no {TOKENIZER_NAME}")
    try:
        return load_tokenizer(d)
    except Exception as e:  # tokenizers raises its own exception types for bad JSON
        raise CheckpointError(f"{d / TOKENIZER_NAME} is corrupt: {e}") from e


def load(cls, directory: str | Path, device: str | torch.device = "cpu"):
    """Build ``cls(config, tokenizer)`` from ``directory`` and load its weights strictly."""
    d = Path(directory)
    if not d.exists():
        raise CheckpointError(f"checkpoint directory {d} does not exist")
    if not d.is_dir():
        raise CheckpointError(f"checkpoint path {d} is not a directory")
    verify_manifest(d, required=False)
    config = _read_config(d)
    tokenizer = _read_tokenizer(d)
    state = _read_weights(d)
    check_finite(state, str(d / WEIGHTS_NAME))
    try:
        model = cls(config, tokenizer)
    except ValueError as e:
        raise CheckpointError(f"{d}: config and tokenizer disagree: {e}") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[:3]}")
        if missing:
            parts.append(f"{len(missing)} weight(s) missing from the file, e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weight(s), e.g. {unexpected[:3]}")
        raise CheckpointError(f"{d / WEIGHTS_NAME} does not match {d / CONFIG_NAME}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model.to(device)

"""Atomic training checkpoints that resume exactly.

A checkpoint is a directory ``checkpoint-<iteration>`` holding the policy
(``save_pretrained``: config.json, model.safetensors, tokenizer), the optimizer
and scheduler states, every RNG state, the iteration and the resolved config.
It is written under a temporary name and renamed into place, and ``latest``
(a one-line file) is replaced atomically after it, so a run killed at any
moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write_text

LATEST = "latest"


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {k: g.get_state() for k, g in generators.items()}}


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def save_checkpoint(run_dir: Path, iteration: int, policy, trainer_state: dict[str, Any], config_yaml: str,
                    keep: int = 2) -> Path:
    """Write ``run_dir/checkpoint-<iteration>`` atomically and point ``latest`` at it."""
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{iteration:06d}"
    tmp = run_dir / f".checkpoint-{iteration:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp / "policy")
    torch.save({"iteration": iteration, **trainer_state}, tmp / "trainer_state.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(run_dir / LATEST, final.name + "\n")
    old = sorted(p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p != final)
    for p in old[:-keep + 1] if keep > 1 else old:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / LATEST
    if not pointer.exists():
        return None
    path = Path(run_dir) / pointer.read_text().strip()
    if not (path / "trainer_state.pt").exists():
        raise FileNotFoundError(f"{pointer} points to {path}, which is not a complete checkpoint")
    return path


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / "trainer_state.pt", weights_only=False)

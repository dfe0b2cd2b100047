"""Atomic, verified training checkpoints that resume exactly.

A checkpoint is a directory ``checkpoint-<iteration>`` holding the policy
(``save_pretrained``), the optimizer and scheduler states, every RNG state, the
iteration and the resolved config, and last a ``manifest.json`` of every file's
size and sha256. An FSDP run writes its trained weights, optimizer and EMA as a
``torch.distributed.checkpoint`` directory ``state/`` instead (every rank its shards). It is written under a temporary name and renamed into place,
and ``latest`` (a one-line file) is replaced atomically after it, so a run
killed at any moment leaves the previous checkpoint intact and pointed to.
Loading verifies the manifest and names the file that differs; a policy with
non-finite weights is never written.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..integrity import CheckpointError, check_finite, verify_manifest, write_manifest
from ..io import atomic_write_text

LATEST = "latest"
POLICY = "policy"  # the policy's save_pretrained (one process, DDP)
STATE = "state"  # trained weights, optimizer and EMA as a DCP directory (FSDP)


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
    check_finite(policy.state_dict(), f"iteration {iteration}: refusing to checkpoint the policy")
    tmp = begin_checkpoint(run_dir, iteration)
    policy.save_pretrained(tmp / POLICY)
    return finish_checkpoint(run_dir, iteration, trainer_state, config_yaml, keep)


def begin_checkpoint(run_dir: Path, iteration: int) -> Path:
    """The empty temporary directory checkpoint ``iteration`` is written into."""
    tmp = _temporary(run_dir, iteration)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _temporary(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / f".{checkpoint_name(iteration)}.tmp"


def finish_checkpoint(run_dir: Path, iteration: int, trainer_state: dict[str, Any], config_yaml: str,
                      keep: int = 2) -> Path:
    """Complete the temporary directory (weights already in it): the trainer state, the
    config and last the manifest; then rename it into place and point ``latest`` at it."""
    run_dir = Path(run_dir)
    final, tmp = run_dir / checkpoint_name(iteration), _temporary(run_dir, iteration)
    torch.save({"iteration": iteration, **trainer_state}, tmp / "trainer_state.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    write_manifest(tmp)  # last: a checkpoint whose manifest verifies is complete
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


def is_sharded(path: Path) -> bool:
    """True for a checkpoint of an FSDP run: its weights and optimizer are a
    ``torch.distributed.checkpoint`` directory ``state/`` instead of ``policy/``."""
    return (Path(path) / STATE).is_dir()


_NAME = re.compile(r"checkpoint-(\d{6,})")


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint-{iteration:06d}"


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete-looking checkpoint directories, oldest first."""
    return sorted(p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and _NAME.fullmatch(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``run_dir/latest`` points to (None without ``latest``), verified."""
    pointer = Path(run_dir) / LATEST
    if not pointer.exists():
        return None
    raw = pointer.read_bytes()
    name = raw.decode("ascii", errors="replace").strip()
    if not _NAME.fullmatch(name):
        found = checkpoints(run_dir)
        hint = (f"checkpoints present: {', '.join(p.name for p in found)}; name one directly, e.g. {found[-1]}"
                if found else "no checkpoint is present")
        raise CheckpointError(f"{pointer} is corrupt: expected one line like checkpoint-000100, got {raw[:40]!r} "
                              f"({hint})")
    path = Path(run_dir) / name
    if not path.is_dir():
        raise CheckpointError(f"{pointer} points to {path}, which does not exist")
    verify_checkpoint(path)
    return path


def verify_checkpoint(path: Path) -> None:
    """Raise :class:`CheckpointError` naming the file of ``path`` that is missing or corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    verify_manifest(path, required=True)
    if not (path / "trainer_state.pt").exists():
        raise CheckpointError(f"{path} is not a training checkpoint: no trainer_state.pt")
    if not (path / POLICY).exists() and not is_sharded(path):
        raise CheckpointError(f"{path} is not a training checkpoint: no {POLICY} (or {STATE})")


def load_trainer_state(path: Path) -> dict[str, Any]:
    f = Path(path) / "trainer_state.pt"
    try:
        return torch.load(f, weights_only=False)
    except Exception as e:  # torch raises RuntimeError / pickle errors / EOFError for a damaged file
        raise CheckpointError(f"{f} is corrupt: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / "trainer_state.pt").exists() or bool(_NAME.fullmatch(Path(path).name))


def find_checkpoint(path: Path) -> Path | None:
    """The verified checkpoint ``path`` names: itself if it is one, else the run's
    ``latest``, else (killed between a checkpoint's rename and ``latest``) its newest
    checkpoint; None for a directory that holds none."""
    path = Path(path)
    if is_checkpoint(path):
        verify_checkpoint(path)
        return path
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    found = checkpoints(path)
    if found:
        verify_checkpoint(found[-1])
        return found[-1]
    return None


def resolve_policy_dir(path: str | Path) -> tuple[Path, str]:
    """A run directory, one of its ``checkpoint-*`` directories or the ``policy/`` in one
    -> (the verified policy directory, a phrase saying which was used). Any other
    directory is taken as a model directory as it is."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist")
    if p.name == "policy" and is_checkpoint(p.parent):
        verify_checkpoint(p.parent)
        return p, f"the policy of checkpoint {p.parent}"
    ckpt = find_checkpoint(p)
    if ckpt is not None and is_sharded(ckpt):
        raise CheckpointError(f"{ckpt} was written by an FSDP run (its weights are sharded in {STATE}/): export "
                              f"them first with: python -m unigrpo.export {ckpt} OUT_DIR, then use OUT_DIR")
    if ckpt == p:
        return p / POLICY, f"checkpoint {p}"
    if ckpt is not None:
        return ckpt / POLICY, f"the latest checkpoint of run {p} ({ckpt.name})"
    if (p / "metrics.jsonl").exists() or (p / "config.yaml").exists():
        raise CheckpointError(f"run {p} holds no checkpoint yet (no {LATEST})")
    return p, f"model directory {p}"

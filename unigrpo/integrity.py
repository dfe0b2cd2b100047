"""Checkpoint integrity: a manifest of every file's size and sha256, and finite weights.

A directory's ``manifest.json`` is written last, after every other file of it is
complete, so a directory whose manifest verifies is whole and unchanged; any
difference is reported naming the file. Weights are checked for NaN/inf by
name, on save and on load, so a diverged model is never written or trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .io import atomic_write_text

__all__ = ["CheckpointError", "MANIFEST", "write_manifest", "verify_manifest", "nonfinite_tensors",
           "check_finite"]

MANIFEST = "manifest.json"
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint or model directory is missing, incomplete, corrupt or inconsistent."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | Path, files: Iterable[str | Path] | None = None) -> None:
    """Record ``files`` (paths in ``directory``; default: every file under it, recursively,
    the manifest itself excepted)."""
    d = Path(directory)
    paths = sorted(d.rglob("*") if files is None else (d / f for f in files))
    files = {p.relative_to(d).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in paths if p.is_file() and p != d / MANIFEST}
    atomic_write_text(d / MANIFEST, json.dumps({"format": _FORMAT, "files": files}, indent=1, sort_keys=True) + "\n")


def verify_manifest(directory: str | Path, required: bool = True) -> bool:
    """Check every file the manifest lists: present, same size, same sha256. Raises
    :class:`CheckpointError` naming the first file that differs; returns whether a
    manifest was there (``required`` False: a directory without one passes)."""
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path} is missing: {d} is incomplete, or was written before checkpoints "
                                  "carried manifests")
        return False
    try:
        files = json.loads(path.read_text())["files"]
        entries = [(rel, int(e["size"]), str(e["sha256"])) for rel, e in files.items()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is corrupt: {type(e).__name__}: {e}") from None
    for rel, size, digest in entries:
        f = d / rel
        if not f.is_file():
            raise CheckpointError(f"{f} is missing (listed in {path})")
        actual = f.stat().st_size
        if actual != size:
            raise CheckpointError(f"{f} is truncated or corrupt: {actual} bytes, {MANIFEST} says {size}")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f} is corrupt: its sha256 does not match {path}")
    return True


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a torn or foreign file is a CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from e


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise :class:`CheckpointError` naming the non-finite tensors of ``state`` (from ``where``)."""
    bad = nonfinite_tensors(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{where}: non-finite weights (NaN or inf) in {', '.join(bad[:3])}{more}")

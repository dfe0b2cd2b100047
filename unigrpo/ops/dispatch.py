"""Picks the kernel backend for a tensor's device.

Order: the ``backend=`` argument, else the ``UNIGRPO_BACKEND`` environment
variable, else the fastest available: on CUDA native > triton > torch, on CPU
native > torch (Triton runs on CPU only under ``TRITON_INTERPRET=1``, when forced).
A native extension that is missing or broken costs one warning and a fallback,
never an import error.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch

BACKENDS = ("native", "triton", "torch")
_AUTO_ORDER = {"cuda": ("native", "triton", "torch"), "cpu": ("native", "torch")}
# "torch_backend", not "torch": a module named torch inside the package confuses readers and tools
_MODULE_FILES = {"native": "native", "triton": "triton", "torch": "torch_backend"}
_modules: dict[str, ModuleType] = {}
_warned: set[str] = set()


def _module(name: str) -> ModuleType:
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"unigrpo.ops.backends.{_MODULE_FILES[name]}")
        except Exception as e:  # a backend module must never break `import unigrpo`
            stub = ModuleType(name)
            stub.load_error = f"{type(e).__name__}: {e}"
            stub.available_for = lambda device: False
            _modules[name] = stub
    return _modules[name]


def _available(name: str, device: torch.device) -> bool:
    mod = _module(name)
    return name == "torch" or mod.available_for(device)


def _why_unavailable(name: str, device: torch.device) -> str:
    mod = _module(name)
    if hasattr(mod, "why_unavailable"):
        return mod.why_unavailable(device)
    err = getattr(mod, "load_error", None)
    return err or f"it does not support {device.type} tensors in this environment"


def check_backend_name(backend) -> None:
    """``backend``: None (the environment's or the fastest) or one of :data:`BACKENDS`."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    env = os.environ.get("UNIGRPO_BACKEND")
    if backend is None and env and env not in BACKENDS:
        raise ValueError(f"UNIGRPO_BACKEND must be one of {BACKENDS}, got {env!r}")


def get_backend(device: torch.device, backend: str | None = None) -> ModuleType:
    """The backend module to run on ``device``; ``backend`` forces one by name."""
    check_backend_name(backend)
    forced = backend or os.environ.get("UNIGRPO_BACKEND") or None
    if forced is not None:
        if not _available(forced, device):
            raise RuntimeError(f"backend {forced!r} was requested but is unavailable on "
                               f"{device.type}: {_why_unavailable(forced, device)}")
        return _module(forced)
    for name in _AUTO_ORDER.get(device.type, ("torch",)):
        if _available(name, device):
            return _module(name)
        if name == "native" and name not in _warned:
            _warned.add(name)
            warnings.warn(f"unigrpo native kernels unavailable ({_why_unavailable(name, device)}); "
                          "falling back to a slower backend", RuntimeWarning, stacklevel=3)
    return _module("torch")


def describe(device: torch.device) -> str:
    """Which backend the ops run on ``device`` and, when it is not the fastest, why: the
    line a training run starts with, so that a slower fallback is never silent."""
    device = torch.device(device)
    chosen = get_backend(device)
    name = chosen.name
    detail = chosen.describe(device) if hasattr(chosen, "describe") else ""
    text = f"{name}" + (f" ({detail})" if detail else "")
    forced = os.environ.get("UNIGRPO_BACKEND")
    if forced:
        return f"{text}, forced by UNIGRPO_BACKEND"
    best = _AUTO_ORDER.get(device.type, ("torch",))[0]
    if name != best:
        text += f": {best} is unavailable ({_why_unavailable(best, device)})"
    return text


def available_backends(device: torch.device) -> list[str]:
    return [name for name in BACKENDS if _available(name, device)]

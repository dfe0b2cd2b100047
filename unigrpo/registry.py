"""Name -> factory registries for tasks, policies and rewards.

A world (a task with its model and rewards) makes itself known in one of two
ways, and the library never imports it until a user asks for it by name:

* a Python entry point in its package metadata, e.g. in ``pyproject.toml``::

      [project.entry-points."unigrpo.tasks"]
      shapes = "unigrpo.shapes.task:ShapesTask"

* or a call, ``TASKS.register("mine", MyTask)``, in code the user runs first.

A name of the form ``package.module:attribute`` is imported directly, so a
one-off task, policy loader or reward needs no registration at all.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "import_object"]


def import_object(path: str, what: str) -> Any:
    """``"package.module:attribute"`` -> the attribute; errors name ``what``."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"{what} {path!r}: expected a registered name or 'package.module:attribute'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{what} {path!r}: cannot import {module!r} ({e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Factories by name: registered in code, or found in the ``group`` entry points."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind, self.group = kind, group
        self._items: dict[str, T] = {}

    def register(self, name: str, factory: T | None = None) -> Any:
        """``register(name, factory)``, or ``@register(name)`` as a decorator."""
        if factory is None:
            return lambda f: self.register(name, f)
        if not name or ":" in name:
            raise ValueError(f"{self.kind} name must be non-empty and contain no ':', got {name!r}")
        self._items[name] = factory
        return factory

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every name that resolves: registered in code or by an entry point."""
        return sorted(set(self._items) | set(self._entry_points()))

    def get(self, name: str) -> T:
        """The factory for ``name`` (a registered name or ``package.module:attribute``)."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return import_object(name, self.kind)
        ep = self._entry_points().get(name)
        if ep is None:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or 'none'} "
                             f"(or give 'package.module:attribute')")
        try:
            factory = ep.load()
        except ImportError as e:
            raise ValueError(f"{self.kind} {name!r} is registered by {ep.value!r}, which cannot be imported: {e}") from e
        self._items[name] = factory
        return factory

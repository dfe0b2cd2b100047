"""The allowed range of every numeric config field, declared beside the field and
checked in one place.

    lr: float = bounded(1e-4, gt=0, help="peak learning rate")

``check_bounds(cfg, "optim")`` rejects a value outside its range, or NaN/inf, with
one message naming the key (``optim.lr must be > 0, got 0.0``); ``describe``
lists each key with its default and range for ``--help``. A field whose default
is None may be None ("unset"); any other value is checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

__all__ = ["Bound", "bounded", "check_bounds", "describe", "flag", "add_flags"]


@dataclass(frozen=True)
class Bound:
    """lo / hi: the limits (None: unbounded on that side); ``*_open``: the limit itself is excluded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return "finite"

    def holds(self, value: float) -> bool:
        # written so that NaN fails every comparison
        if not math.isfinite(value):
            return False
        if self.lo is not None and not (value > self.lo if self.lo_open else value >= self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def check(self, key: str, value: Any) -> None:
        items = value if isinstance(value, (tuple, list)) else (value,)
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not self.holds(float(v)):
                what = "each value " if isinstance(value, (tuple, list)) else ""
                raise ValueError(f"{key} must be {what}{self.text()}, got {value!r}")


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, help: str = "") -> Any:
    """A dataclass field with a range (``ge``/``gt`` below, ``le``/``lt`` above) and a help text."""
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("give one lower (ge | gt) and one upper (le | lt) limit at most")
    bound = Bound(lo=gt if gt is not None else ge, hi=lt if lt is not None else le,
                  lo_open=gt is not None, hi_open=lt is not None)
    meta = {"bound": bound, "help": help}
    if isinstance(default, (list, dict, set)):
        raise TypeError("bounded() takes immutable defaults (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    """A field's command-line flag: ``images_per_category`` -> ``--images-per-category``."""
    return "--" + name.replace("_", "-")


def check_bounds(obj: Any, section: str | Callable[[str], str]) -> None:
    """Raise ValueError naming the key (``section.field``, or ``section(field)`` when
    ``section`` is a function, e.g. :func:`flag`) of the first value out of its range."""
    for f in dataclasses.fields(obj):
        bound = f.metadata.get("bound")
        value = getattr(obj, f.name)
        if bound is None or (value is None and f.default is None):
            continue
        bound.check(section(f.name) if callable(section) else f"{section}.{f.name}", value)


def describe(obj: Any, section: str) -> list[str]:
    """One line per field: ``section.key = default  (range; help)``."""
    lines = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            continue
        notes = [n for n in (f.metadata["bound"].text() if "bound" in f.metadata else "",
                             f.metadata.get("help", "")) if n]
        lines.append(f"  {section}.{f.name} = {v!r}" + (f"  ({'; '.join(notes)})" if notes else ""))
    return lines


def add_flags(parser: argparse.ArgumentParser, obj: Any, names: Sequence[str],
              helps: Mapping[str, str] | None = None) -> None:
    """One ``--flag`` per named field of the dataclass instance ``obj``: its type and
    default, its help (``helps`` or the field's own) and its range; booleans get
    ``--flag / --no-flag``."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name in names:
        f, default = fields[name], getattr(obj, name)
        bound = f.metadata.get("bound")
        text = " ".join(filter(None, ((helps or {}).get(name) or f.metadata.get("help"),
                                      f"({bound.text()})" if bound else None))) or " "
        if isinstance(default, bool):
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            parser.add_argument(flag(name), type=type(default), default=default, help=text)

"""Structured prompt metadata: what an image must contain.

A :class:`Prompt` pairs its text with resolved :class:`Constraints`; the
verifier checks images against the constraints only (never the text, never
any reasoning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .vocab import COLOR_NAMES, GRID, MAX_COUNT, RELATIONS, SHAPES

__all__ = ["ObjectSpec", "Relation", "Constraints", "Prompt"]


@dataclass(frozen=True)
class ObjectSpec:
    """``count`` objects of ``shape``, all of colour ``color`` (``None``: any colour each)."""

    shape: str
    color: str | None
    count: int = 1

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.color is not None and self.color not in COLOR_NAMES:
            raise ValueError(f"unknown color {self.color!r}")
        if not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"count {self.count} outside 1..{MAX_COUNT}")

    def matches(self, shape: str, color: str) -> bool:
        """Whether a detected ``(shape, color)`` object is one of these."""
        return shape == self.shape and (self.color is None or color == self.color)

    def overlaps(self, other: ObjectSpec) -> bool:
        """Whether one object could match both specs."""
        return self.shape == other.shape and (
            self.color is None or other.color is None or self.color == other.color
        )


@dataclass(frozen=True)
class Relation:
    """``objects[subject]`` is ``relation`` (one of ``RELATIONS``) ``objects[reference]``,
    judged on object centres in image coordinates (x right, y down)."""

    subject: int
    relation: str
    reference: int

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}")


@dataclass(frozen=True)
class Constraints:
    """Everything an image must satisfy.

    ``objects``: disjoint groups; each must appear exactly ``count`` times.
    ``relations``: pairwise spatial relations between groups of count 1.
    ``exclusive``: no other (classifiable or not) object may appear.
    """

    objects: tuple[ObjectSpec, ...]
    relations: tuple[Relation, ...] = ()
    exclusive: bool = True

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("constraints need at least one object")
        for i, a in enumerate(self.objects):
            for b in self.objects[i + 1:]:
                if a.overlaps(b):
                    raise ValueError(f"object specs overlap: {a} / {b}")
        if sum(o.count for o in self.objects) > GRID * GRID:
            raise ValueError("more objects than grid cells")
        n = len(self.objects)
        for r in self.relations:
            if not (0 <= r.subject < n and 0 <= r.reference < n) or r.subject == r.reference:
                raise ValueError(f"bad relation indices {r}")
            if self.objects[r.subject].count != 1 or self.objects[r.reference].count != 1:
                raise ValueError("relations need count-1 objects")

    @property
    def total(self) -> int:
        """Total number of required objects."""
        return sum(o.count for o in self.objects)

    def compositions(self) -> frozenset[tuple[str, str]]:
        """The (shape, color) pairs the constraints name explicitly (colour given)."""
        return frozenset((o.shape, o.color) for o in self.objects if o.color is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [{"shape": o.shape, "color": o.color, "count": o.count} for o in self.objects],
            "relations": [[r.subject, r.relation, r.reference] for r in self.relations],
            "exclusive": self.exclusive,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Constraints:
        return cls(
            objects=tuple(ObjectSpec(**o) for o in d["objects"]),
            relations=tuple(Relation(int(s), str(r), int(t)) for s, r, t in d.get("relations", ())),
            exclusive=bool(d.get("exclusive", True)),
        )


@dataclass(frozen=True)
class Prompt:
    """A task prompt: ``text`` (lowercase words), its ``category`` and resolved ``constraints``."""

    text: str
    category: str
    constraints: Constraints

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "category": self.category, "constraints": self.constraints.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        return cls(d["text"], d["category"], Constraints.from_dict(d["constraints"]))

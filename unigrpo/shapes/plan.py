"""Structured image plans: what the model writes between ``<think>`` and
``</think>`` before drawing.

Serialised form (words from :func:`.vocab.plan_tokens`)::

    red circle @ 0 1 ; blue square @ 2 1

i.e. ``<color> <shape> @ <x> <y>`` per object, joined by ``;``, where ``x`` is
the grid column (0 = left) and ``y`` the grid row (0 = top).  A plan holds at
most one object per cell and its objects are always in canonical raster order
(row, then column), so equal plans serialise to equal strings.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .spec import Constraints, Prompt
from .vocab import COLOR_NAMES, END_THINK, GRID, PLAN_AT, PLAN_SEP, SHAPES, THINK, tokenize

__all__ = [
    "PlanObject",
    "Plan",
    "PlanParseError",
    "parse_plan",
    "try_parse_plan",
    "canonical_plan",
    "default_plan",
    "plan_satisfies",
    "format_reasoning",
    "extract_plan",
]


@dataclass(frozen=True)
class PlanObject:
    """One object in grid cell (``x`` column, ``y`` row)."""

    shape: str
    color: str
    x: int
    y: int

    def __str__(self) -> str:
        return f"{self.color} {self.shape} {PLAN_AT} {self.x} {self.y}"


class PlanParseError(ValueError):
    """A plan string (or object list) is malformed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _raster_key(o: PlanObject) -> tuple[int, int]:
    return (o.y, o.x)


@dataclass(frozen=True)
class Plan:
    """A validated set of :class:`PlanObject` in canonical (row, column) order."""

    objects: tuple[PlanObject, ...] = ()

    def __post_init__(self) -> None:
        objs = tuple(sorted(self.objects, key=_raster_key))
        seen = set()
        for o in objs:
            if o.shape not in SHAPES:
                raise PlanParseError(f"unknown shape {o.shape!r}")
            if o.color not in COLOR_NAMES:
                raise PlanParseError(f"unknown color {o.color!r}")
            if not (0 <= o.x < GRID and 0 <= o.y < GRID):
                raise PlanParseError(f"cell ({o.x}, {o.y}) outside the {GRID}x{GRID} grid")
            if (o.x, o.y) in seen:
                raise PlanParseError(f"two objects in cell ({o.x}, {o.y})")
            seen.add((o.x, o.y))
        object.__setattr__(self, "objects", objs)

    def __len__(self) -> int:
        return len(self.objects)

    def __iter__(self):
        return iter(self.objects)

    def to_text(self) -> str:
        """Canonical serialisation (``""`` for the empty plan)."""
        return f" {PLAN_SEP} ".join(str(o) for o in self.objects)

    __str__ = to_text


def parse_plan(text: str) -> Plan:
    """Parse a serialised plan (whitespace-insensitive).  Raises :class:`PlanParseError`.

    The empty string parses to the empty plan.  Objects may come in any order;
    the result is canonical, so ``parse_plan(t).to_text()`` normalises ``t``."""
    words = tokenize(text.replace(PLAN_SEP, f" {PLAN_SEP} ").replace(PLAN_AT, f" {PLAN_AT} "))
    if not words:
        return Plan()
    chunks: list[list[str]] = [[]]
    for w in words:
        if w == PLAN_SEP:
            chunks.append([])
        else:
            chunks[-1].append(w)
    objs = []
    for i, chunk in enumerate(chunks):
        where = f"object {i}"
        if not chunk:
            raise PlanParseError(f"{where}: empty (stray '{PLAN_SEP}')")
        if len(chunk) != 5:
            raise PlanParseError(
                f"{where}: expected '<color> <shape> {PLAN_AT} <x> <y>', got {' '.join(chunk)!r}")
        color, shape, at, xs, ys = chunk
        if color not in COLOR_NAMES:
            raise PlanParseError(f"{where}: unknown color {color!r}")
        if shape not in SHAPES:
            raise PlanParseError(f"{where}: unknown shape {shape!r}")
        if at != PLAN_AT:
            raise PlanParseError(f"{where}: expected {PLAN_AT!r}, got {at!r}")
        if not (xs.isdigit() and ys.isdigit()):
            raise PlanParseError(f"{where}: cell {xs!r} {ys!r} is not two integers")
        objs.append(PlanObject(shape, color, int(xs), int(ys)))
    return Plan(tuple(objs))


def try_parse_plan(text: str) -> tuple[Plan | None, str | None]:
    """``(plan, None)`` on success, ``(None, reason)`` on a malformed plan."""
    try:
        return parse_plan(text), None
    except PlanParseError as e:
        return None, e.reason


def _cells_ok(cells: list[tuple[int, int]], c: Constraints, first: list[int]) -> bool:
    for r in c.relations:
        (xa, ya), (xb, yb) = cells[first[r.subject]], cells[first[r.reference]]
        ok = {"left_of": xa < xb, "right_of": xa > xb, "above": ya < yb, "below": ya > yb}[r.relation]
        if not ok:
            return False
    return True


def _objects(c: Constraints, exclude_pairs: Iterable[tuple[str, str]], pick) -> tuple[list[tuple[str, str]], list[int]]:
    """(shape, colour) of every object the constraints ask for, and the index of each object
    group's first one (what relations refer to). A free colour is ``pick(allowed)`` of the
    colours whose (shape, colour) pair is not excluded (all colours if every one is)."""
    excluded = set(exclude_pairs)
    kinds: list[tuple[str, str]] = []
    first: list[int] = []
    for spec in c.objects:
        color = spec.color
        if color is None:
            color = pick([k for k in COLOR_NAMES if (spec.shape, k) not in excluded] or list(COLOR_NAMES))
        first.append(len(kinds))
        kinds.extend([(spec.shape, color)] * spec.count)
    return kinds, first


def canonical_plan(prompt: Prompt | Constraints, rng: np.random.Generator,
                   exclude_pairs: Iterable[tuple[str, str]] = ()) -> Plan:
    """A random plan satisfying ``prompt``'s constraints exactly.

    Each object group gets its required colour, or (colour unspecified) one
    colour drawn uniformly among those whose (shape, colour) pair is not in
    ``exclude_pairs`` (pass ``Split.heldout_pairs`` to keep held-out
    compositions out of training targets).  Cells are drawn uniformly among
    placements satisfying the relations (strict cell order, e.g. ``left_of``
    means a smaller column).  Deterministic given ``rng``'s state."""
    c = prompt.constraints if isinstance(prompt, Prompt) else prompt
    kinds, first = _objects(c, exclude_pairs, lambda allowed: allowed[rng.integers(len(allowed))])
    all_cells = [(x, y) for y in range(GRID) for x in range(GRID)]
    for _ in range(10_000):
        idx = rng.permutation(len(all_cells))[: len(kinds)]
        cells = [all_cells[i] for i in idx]
        if _cells_ok(cells, c, first):
            return Plan(tuple(PlanObject(s, k, x, y) for (s, k), (x, y) in zip(kinds, cells)))
    raise RuntimeError(f"no placement satisfies {c}")  # unreachable for valid constraints


#: the cells :func:`default_plan` fills, in order: the centre, then its row, its column, the corners
DEFAULT_CELLS = ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2), (0, 0), (2, 0), (0, 2), (2, 2))


def default_plan(prompt: Prompt | Constraints, exclude_pairs: Iterable[tuple[str, str]] = ()) -> Plan:
    """The one plan a rule picks for ``prompt``: a free colour is the first of ``COLOR_NAMES``
    whose (shape, colour) pair is not excluded, and the cells are the first assignment, in
    :data:`DEFAULT_CELLS` order, that satisfies the relations. What the model draws when it
    draws without reasoning: a small flow model cannot commit to one of many random layouts
    from the prompt alone (docs/sft.md)."""
    c = prompt.constraints if isinstance(prompt, Prompt) else prompt
    kinds, first = _objects(c, exclude_pairs, lambda allowed: allowed[0])
    for cells in itertools.permutations(DEFAULT_CELLS, len(kinds)):
        if _cells_ok(list(cells), c, first):
            return Plan(tuple(PlanObject(s, k, x, y) for (s, k), (x, y) in zip(kinds, cells)))
    raise RuntimeError(f"no placement satisfies {c}")  # unreachable for valid constraints


def plan_satisfies(plan: Plan, prompt: Prompt | Constraints) -> bool:
    """Whether a plan meets the constraints at the cell level (exact counts,
    no extra objects if exclusive, relations by strict cell order)."""
    c = prompt.constraints if isinstance(prompt, Prompt) else prompt
    claimed = 0
    where: list[tuple[int, int]] = []
    for spec in c.objects:
        hits = [(o.x, o.y) for o in plan if spec.matches(o.shape, o.color)]
        if len(hits) != spec.count:
            return False
        claimed += len(hits)
        where.append(hits[0])
    if c.exclusive and claimed != len(plan):
        return False
    return _cells_ok(where, c, list(range(len(where))))


def format_reasoning(plan: Plan) -> str:
    """``<think> {plan} </think>``: the reasoning span a policy is trained to write."""
    body = plan.to_text()
    return f"{THINK} {body} {END_THINK}" if body else f"{THINK} {END_THINK}"


def extract_plan(text: str) -> tuple[Plan | None, str | None]:
    """Parse the plan between the first ``<think>`` and the next ``</think>`` in a
    generated text.  Returns ``(plan, None)`` or ``(None, reason)``."""
    words = tokenize(text)
    if THINK not in words:
        return None, f"no {THINK}"
    start = words.index(THINK) + 1
    if END_THINK not in words[start:]:
        return None, f"no {END_THINK} after {THINK}"
    end = words.index(END_THINK, start)
    return try_parse_plan(" ".join(words[start:end]))

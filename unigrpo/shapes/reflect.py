"""Reflection in the built-in world: what the model writes after looking at its image.

After an image the model either ends the episode (``<eos>``: the image is right) or
writes a diagnosis of what it sees against what it planned, then the plan to draw
again::

    <eos>
    missing red circle ; extra blue circle ; red circle @ 1 1 ; green square @ 0 0 </think>

A diagnosis item is ``missing <color> <shape>`` or ``extra <color> <shape>``: the
difference between the (colour, shape) objects drawn and those planned, as the
verifier would find it (``three circles, not two`` is ``extra <color> circle``).

:func:`flawed_plan` makes the first image of a synthetic reflection episode: the plan
with one object recoloured, reshaped, dropped or added, so that the diagnosis is
never empty and its words say exactly what the renderer drew differently. The
model's own drawings fail in other ways (ragged or merged shapes); for those the
diagnosis is what the verifier's detector finds (:func:`seen_objects`).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from .plan import Plan, PlanObject
from .segment import Detections
from .vocab import COLOR_NAMES, END_THINK, EOS, EXTRA, GRID, MISSING, PLAN_SEP, SHAPES

__all__ = ["diagnose", "seen_objects", "flawed_plan", "reflection"]


def diagnose(drawn: Plan | Sequence[tuple[str, str]], wanted: Plan) -> list[str]:
    """The diagnosis items, missing first, each in (shape, colour) order: empty when the
    drawn image has the planned objects (cells are not judged). ``drawn``: a plan, or the
    (shape, colour) of every object found in an image (:func:`seen_objects`)."""
    have = Counter((o.shape, o.color) for o in drawn) if isinstance(drawn, Plan) else Counter(drawn)
    want = Counter((o.shape, o.color) for o in wanted)
    items = [f"{MISSING} {c} {s}" for (s, c) in sorted(want - have) for _ in range((want - have)[(s, c)])]
    return items + [f"{EXTRA} {c} {s}" for (s, c) in sorted(have - want) for _ in range((have - want)[(s, c)])]


def seen_objects(detections: Detections, j: int) -> list[tuple[str, str]]:
    """(shape, colour) of every object the verifier's detector classified in image ``j`` (an
    object of no recognisable shape cannot be named, so it is left out)."""
    rows = range(detections.offsets[j], detections.offsets[j + 1])
    return [(SHAPES[detections.shape[i]], COLOR_NAMES[detections.color[i]]) for i in rows if detections.shape[i] >= 0]


def reflection(drawn: Plan | Sequence[tuple[str, str]], wanted: Plan) -> str:
    """The turn after looking at a drawing of ``drawn`` when ``wanted`` was planned:
    ``<eos>`` when nothing is wrong, else the diagnosis and the plan, closed by ``</think>``."""
    items = diagnose(drawn, wanted)
    if not items:
        return EOS
    return f" {PLAN_SEP} ".join(items + ([wanted.to_text()] if len(wanted) else [])) + f" {END_THINK}"


def flawed_plan(plan: Plan, rng: np.random.Generator) -> Plan:
    """``plan`` with one thing wrong: an object recoloured or reshaped, one dropped, or one
    added in a free cell; always a different (colour, shape) multiset. Deterministic given
    ``rng``'s state."""
    objs = list(plan.objects)
    free = [(x, y) for y in range(GRID) for x in range(GRID) if all((o.x, o.y) != (x, y) for o in objs)]
    kinds = ["recolor", "reshape"] + (["drop"] if objs else []) + (["add"] if free else [])
    if not objs:
        kinds = ["add"]
    kind = kinds[rng.integers(len(kinds))]
    if kind == "add":
        x, y = free[rng.integers(len(free))]
        shape, color = SHAPES[rng.integers(len(SHAPES))], COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
        return Plan(tuple(objs) + (PlanObject(shape, color, x, y),))
    i = int(rng.integers(len(objs)))
    o = objs[i]
    if kind == "drop":
        return Plan(tuple(objs[:i] + objs[i + 1:]))
    if kind == "recolor":
        others = [c for c in COLOR_NAMES if c != o.color]
        objs[i] = PlanObject(o.shape, others[rng.integers(len(others))], o.x, o.y)
    else:
        others = [s for s in SHAPES if s != o.shape]
        objs[i] = PlanObject(others[rng.integers(len(others))], o.color, o.x, o.y)
    return Plan(tuple(objs))

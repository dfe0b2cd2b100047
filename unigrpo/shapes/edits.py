"""Editing prompts: draw a scene, then change one thing in it.

``a red circle and a blue square then make the square green`` asks for two images: the
scene as first described, then the same scene with the one change. Four kinds, one
category each (``edit_<kind>``), each naming its object by shape (a scene's shapes are
distinct, so the name is unambiguous):

* ``recolor``: ``then make the square green``;
* ``reshape``: ``then make the square a triangle`` (a shape the scene does not have);
* ``remove``: ``then remove the square`` (two-object scenes);
* ``add``: ``then add a green triangle`` (a shape the scene does not have).

The scenes are the ``colors``, ``color_attr`` (distinct shapes) and ``position``
prompts. An :class:`EditPrompt` is a :class:`.spec.Prompt` whose ``constraints`` are
the edited scene's, so any code that scores a final image against its prompt scores the
edit's result; :func:`score_edits` judges the episode as a whole: the first image shows
the scene, a second image shows the edited scene, and what the edit did not name is
unchanged between them (every object kept stays within half a grid cell of where it was,
and keeps its colour where the prompt leaves the colour free).

The model writes the change in the reflection's words (:mod:`.reflect`): after looking
at a right first image of the scene, the diagnosis against the edited plan is exactly
the edit (``missing green square ; extra blue square ; <plan> </think>``), and the plan
keeps every other object in its cell (:meth:`Edit.on_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Sequence

import numpy as np

from .plan import Plan, PlanObject
from .prompts import prompts_by_category
from .segment import Detections
from .spec import Constraints, ObjectSpec, Prompt
from .split import Split
from .verifier import score
from .vocab import COLOR_NAMES, GRID, SHAPES

__all__ = ["EDIT_KINDS", "EDIT_CATEGORIES", "Edit", "EditPrompt", "all_edit_prompts", "edit_split",
           "EditScores", "score_edits"]

EDIT_KINDS: tuple[str, ...] = ("recolor", "reshape", "remove", "add")
EDIT_CATEGORIES: tuple[str, ...] = tuple(f"edit_{k}" for k in EDIT_KINDS)
_SCENE_CATEGORIES = ("colors", "color_attr", "position")


@dataclass(frozen=True)
class Edit:
    """One change to a scene: ``kind`` in :data:`EDIT_KINDS`; ``target``: the index of the
    changed object group in the scene's constraints (-1 for ``add``); ``shape`` / ``color``:
    the new shape (reshape, add) and colour (recolor, add)."""

    kind: str
    target: int = -1
    shape: str | None = None
    color: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EDIT_KINDS:
            raise ValueError(f"edit kind must be one of {EDIT_KINDS}, got {self.kind!r}")

    def words(self, scene: Constraints) -> str:
        """The instruction, e.g. ``then make the square green``."""
        if self.kind == "add":
            return f"then add a {self.color} {self.shape}"
        name = scene.objects[self.target].shape
        return {"recolor": f"then make the {name} {self.color}", "reshape": f"then make the {name} a {self.shape}",
                "remove": f"then remove the {name}"}[self.kind]

    def kept(self, i: int) -> int | None:
        """Where the scene's group ``i`` is in the edited constraints (None: removed)."""
        if self.kind != "remove" or i < self.target:
            return i
        return None if i == self.target else i - 1

    def apply(self, scene: Constraints) -> Constraints:
        """The edited scene's constraints (relations kept between the objects kept)."""
        objs = list(scene.objects)
        if self.kind == "add":
            return Constraints(tuple(objs) + (ObjectSpec(self.shape, self.color),), scene.relations)
        if self.kind == "remove":
            rel = tuple(r for r in scene.relations if self.target not in (r.subject, r.reference))
            rel = tuple(replace(r, subject=self.kept(r.subject), reference=self.kept(r.reference)) for r in rel)
            return Constraints(tuple(o for i, o in enumerate(objs) if i != self.target), rel)
        o = objs[self.target]
        objs[self.target] = replace(o, color=self.color) if self.kind == "recolor" else replace(o, shape=self.shape)
        return Constraints(tuple(objs), scene.relations)

    def on_plan(self, plan: Plan, scene: Constraints, rng: np.random.Generator) -> Plan:
        """``plan`` (a plan of ``scene``) edited: the named object changed or removed in place,
        or the new one added in a random free cell; every other object where it was."""
        objs = list(plan.objects)
        if self.kind == "add":
            free = [(x, y) for y in range(GRID) for x in range(GRID) if all((o.x, o.y) != (x, y) for o in objs)]
            x, y = free[rng.integers(len(free))]
            return Plan(tuple(objs) + (PlanObject(self.shape, self.color, x, y),))
        name = scene.objects[self.target].shape
        i = next(j for j, o in enumerate(objs) if o.shape == name)
        if self.kind == "remove":
            return Plan(tuple(objs[:i] + objs[i + 1:]))
        objs[i] = replace(objs[i], color=self.color) if self.kind == "recolor" else replace(objs[i], shape=self.shape)
        return Plan(tuple(objs))


@dataclass(frozen=True)
class EditPrompt(Prompt):
    """A :class:`.spec.Prompt` of the edited scene (``constraints``) that also knows the
    ``scene`` prompt it edits and the ``edit``."""

    scene: Prompt | None = None
    edit: Edit | None = None

    @classmethod
    def of(cls, scene: Prompt, edit: Edit) -> EditPrompt:
        return cls(f"{scene.text} {edit.words(scene.constraints)}", f"edit_{edit.kind}",
                   edit.apply(scene.constraints), scene, edit)


def _edits(scene: Constraints):
    shapes = {o.shape for o in scene.objects}
    new_shapes = [s for s in SHAPES if s not in shapes]
    for i, o in enumerate(scene.objects):
        yield from (Edit("recolor", i, color=c) for c in COLOR_NAMES if c != o.color)
        yield from (Edit("reshape", i, shape=s) for s in new_shapes)
        if len(scene.objects) > 1:
            yield Edit("remove", i)
    yield from (Edit("add", shape=s, color=c) for s in new_shapes for c in COLOR_NAMES)


@lru_cache(maxsize=1)
def all_edit_prompts() -> tuple[EditPrompt, ...]:
    """The editing universe, deterministic: every edit of every scene (scene categories in
    order, the prompts of each in universe order)."""
    out = []
    for cat in _SCENE_CATEGORIES:
        for p in prompts_by_category()[cat]:
            if len({o.shape for o in p.constraints.objects}) == len(p.constraints.objects):
                out.extend(EditPrompt.of(p, e) for e in _edits(p.constraints))
    return tuple(out)


def edit_split(split: Split, heldout_fraction: float = 0.1) -> tuple[tuple[EditPrompt, ...], tuple[EditPrompt, ...]]:
    """(train, held-out) editing prompts for a shapes :class:`.split.Split`: held out when the
    scene is a held-out prompt, when the edited scene names a held-out composition, or in a
    ``heldout_fraction`` drawn with the split's seed; so training never shows a held-out
    scene or composition."""
    rng = np.random.default_rng(split.seed + 1)
    held_scenes = {p.text for p in split.heldout}
    train, held = [], []
    for p in all_edit_prompts():
        named = p.scene.text in held_scenes or bool(p.constraints.compositions() & split.heldout_pairs)
        (held if named or rng.random() < heldout_fraction else train).append(p)
    return tuple(train), tuple(held)


@dataclass
class EditScores:
    """Per-episode results of :func:`score_edits`, float32 / bool (B,): the first image against
    the scene (``before``), the final image against the edited scene (``after``), the
    fraction of the scene's kept objects that stayed put (``kept``: 0 without a second
    image), and ``strict`` / ``shaped``, the episode's scores."""

    before: np.ndarray
    after: np.ndarray
    kept: np.ndarray
    strict: np.ndarray
    shaped: np.ndarray


def _largest(det: Detections, j: int, spec: ObjectSpec) -> int:
    """Index of the largest detection in image ``j`` that ``spec`` matches (-1: none)."""
    best, area = -1, -1
    for i in range(det.offsets[j], det.offsets[j + 1]):
        if det.shape[i] >= 0 and spec.matches(SHAPES[det.shape[i]], COLOR_NAMES[det.color[i]]) and det.area[i] > area:
            best, area = i, det.area[i]
    return best


def _kept_fraction(p: EditPrompt, first: Detections, final: Detections, j: int, cell: tuple[float, float]) -> float:
    ok = []
    for i, spec in enumerate(p.scene.constraints.objects):
        k = p.edit.kept(i)
        if k is None:
            continue
        a, b = _largest(first, j, spec), _largest(final, j, p.constraints.objects[k])
        ok.append(a >= 0 and b >= 0 and abs(first.cx[a] - final.cx[b]) < cell[0] / 2
                  and abs(first.cy[a] - final.cy[b]) < cell[1] / 2
                  and (p.constraints.objects[k].color is not None or first.color[a] == final.color[b]))
    return float(np.mean(ok)) if ok else 1.0


def score_edits(first, final, second: Sequence[bool], prompts: Sequence[EditPrompt],
                mode: str = "strict") -> EditScores:
    """Judge editing episodes: ``first`` / ``final`` images (B, H, W, 3) as
    :func:`.verifier.score` takes them, ``second[i]``: whether episode i drew a second
    image (its final one). ``strict`` is 1 iff the first image shows the scene, a second
    image shows the edited scene and the kept objects stayed put; ``shaped`` is the mean of
    the first image's and the final image's ``mode`` scores and the kept fraction."""
    if not all(isinstance(p, EditPrompt) for p in prompts):
        raise TypeError("score_edits needs EditPrompt prompts")
    second = np.asarray(second, bool)
    before_s, before = score(first, [p.scene for p in prompts], mode)
    after_s, after = score(final, list(prompts), mode)
    h, w = before.detections.size
    cell = (w / GRID, h / GRID)
    kept = np.array([_kept_fraction(p, before.detections, after.detections, j, cell) if second[j] else 0.0
                     for j, p in enumerate(prompts)], np.float32)
    strict = (before.strict > 0) & (after.strict > 0) & (kept == 1.0) & second
    shaped = (before.shaped + after.shaped + kept) / 3
    return EditScores(before.strict, after.strict, kept, strict.astype(np.float32), shaped.astype(np.float32))

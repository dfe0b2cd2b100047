"""Verifiable reward: does an image satisfy a prompt's constraints?

GenEval-style clauses per prompt, checked on detections from :mod:`.segment`:

* ``count``: for each required group, the number of detected objects with its
  shape (and colour, when given) equals ``count``;
* ``relation``: for each relation, the centres of the two groups' objects
  (largest detection of each) differ along the axis by more than
  ``position_margin * W`` (or ``* H``) in the required direction;
* ``exclusive`` (when the constraints say so): every detected object (area >=
  ``min_area``; unclassifiable blobs included) belongs to some required group.

``strict`` is 1 iff every clause holds.  ``shaped`` (FlowGRPO-style partial
credit) is the mean of the count and relation clause scores
(``max(0, 1 - |found - count| / count)`` per count clause, 0/1 per
relation) times the ``exclusive`` score, the fraction of detections that are
wanted (1 with no detections), so clutter and noise cannot earn credit.
``dense`` is ``shaped`` plus near-miss credit (:func:`.segment.near_miss_credit`)
for detections no group claims: each such object adds its credit (at most
0.5) to the count of the colour-compatible group still short of its count that
it most nearly matches (never past the count), and to the ``exclusive`` score.
A square drawn a little round, which ``shaped`` scores as a missing square
plus an extra circle, thus earns more the squarer it gets; ``dense >= shaped``,
with equality where no near miss fills a gap.  The verifier sees only pixels and constraints,
never the prompt text or any reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .segment import COLOR_TOL, MIN_AREA, Detections, detect, near_miss_credit
from .spec import Constraints, Prompt
from .vocab import COLOR_NAMES, SHAPES

__all__ = ["Clause", "ScoreBreakdown", "score", "MODES"]

MODES = ("strict", "shaped", "dense")


@dataclass(frozen=True)
class Clause:
    """One checked requirement: ``kind`` in {count, relation, exclusive}."""

    name: str
    kind: str
    passed: bool
    score: float
    detail: str


@dataclass
class ScoreBreakdown:
    """Per-image results of :func:`score`.

    ``strict``, ``shaped``: float32 (B,) (``shaped``: the partial credit of the
    mode scored, i.e. ``dense`` in that mode); ``clauses[i]``: image ``i``'s clauses;
    ``categories[i]``: prompt category (``""`` for bare constraints);
    ``detections``: everything detected in the batch."""

    strict: np.ndarray
    shaped: np.ndarray
    clauses: list[list[Clause]]
    categories: list[str]
    detections: Detections

    def summary(self) -> dict[str, float]:
        """Scalar metrics for logging: mean strict/shaped, pass rate per clause
        kind, and mean strict per category (``strict/<category>``)."""
        out = {"strict": float(self.strict.mean()) if self.strict.size else 0.0,
               "shaped": float(self.shaped.mean()) if self.shaped.size else 0.0}
        for kind in ("count", "relation", "exclusive"):
            vals = [c.passed for cl in self.clauses for c in cl if c.kind == kind]
            if vals:
                out[f"{kind}_pass"] = float(np.mean(vals))
        cats = np.asarray(self.categories)
        for cat in sorted(set(self.categories)):
            if cat:
                out[f"strict/{cat}"] = float(self.strict[cats == cat].mean())
        return out

    def describe(self, i: int) -> str:
        """Multi-line report for image ``i``: clauses then detected objects."""
        lines = [f"strict={self.strict[i]:.0f} shaped={self.shaped[i]:.3f}"]
        lines += [f"  [{'x' if c.passed else ' '}] {c.name}: {c.detail}" for c in self.clauses[i]]
        lines += [f"  - {d}" for d in self.detections.describe(i)]
        return "\n".join(lines)


_REL_AXIS = {"left_of": (0, -1), "right_of": (0, 1), "above": (1, -1), "below": (1, 1)}


def _near_misses(c: Constraints, hits: list[np.ndarray], colour_ok: list[np.ndarray], claimed: np.ndarray,
                 near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Near-miss credit of the unclaimed detections, each given to the colour-compatible
    group it most nearly matches among those still short of their count, and never
    past that count (so ``dense >= shaped``).  Returns (credit per group (G,),
    credit per detection (N,))."""
    short = np.array([g.count - h.sum() for g, h in zip(c.objects, hits)], np.float64)
    per_group, per_det = np.zeros(len(c.objects)), np.zeros(claimed.shape)
    fits = np.zeros((claimed.size, len(c.objects)))
    for gi, (g, ok) in enumerate(zip(c.objects, colour_ok)):
        fits[:, gi] = np.where(ok & ~claimed, near[:, SHAPES.index(g.shape)], 0.0)
    for i in np.argsort(-fits.max(1), kind="stable"):
        open_fits = np.where(short > 0, fits[i], 0.0)
        gi = int(open_fits.argmax())
        give = min(open_fits[gi], short[gi])
        if give > 0:
            short[gi] -= give
            per_group[gi] += give
            per_det[i] = give
    return per_group, per_det


def _score_one(c: Constraints, shp, col, cx, cy, area, margins, near=None) -> list[Clause]:
    clauses = []
    claimed = np.zeros(shp.shape, bool)
    reps: list[int] = []
    colour_ok = [col == COLOR_NAMES.index(g.color) if g.color is not None else np.ones(shp.shape, bool)
                 for g in c.objects]
    hits = [(shp == SHAPES.index(g.shape)) & ok for g, ok in zip(c.objects, colour_ok)]
    for hit in hits:
        claimed |= hit
    extra_found, extra_claim = (_near_misses(c, hits, colour_ok, claimed, near) if near is not None
                                else (np.zeros(len(c.objects)), np.zeros(shp.shape)))
    for g, hit, extra in zip(c.objects, hits, extra_found):
        found = int(hit.sum())
        reps.append(int(np.flatnonzero(hit)[area[hit].argmax()]) if found else -1)
        label = f"{g.color} {g.shape}" if g.color else f"any-color {g.shape}"
        detail = f"found {found}" + (f" (+{extra:.2f} near misses)" if extra else "")
        clauses.append(Clause(f"count({label})={g.count}", "count", found == g.count,
                              max(0.0, 1.0 - abs(found + extra - g.count) / g.count), detail))
    for r in c.relations:
        a, b = reps[r.subject], reps[r.reference]
        name = f"{r.relation}({c.objects[r.subject].shape}, {c.objects[r.reference].shape})"
        if a < 0 or b < 0:
            clauses.append(Clause(name, "relation", False, 0.0, "object missing"))
            continue
        axis, sign = _REL_AXIS[r.relation]
        pos = cx if axis == 0 else cy
        delta = float(pos[a] - pos[b])
        ok = sign * delta > margins[axis]
        clauses.append(Clause(name, "relation", ok, float(ok),
                              f"{'dx' if axis == 0 else 'dy'}={delta:+.1f} (margin {margins[axis]:.1f})"))
    if c.exclusive:
        n, extra = claimed.size, int((~claimed).sum())
        clauses.append(Clause("exclusive", "exclusive", extra == 0,
                              1.0 if n == 0 else (n - extra + extra_claim.sum()) / n, f"{extra} extra of {n}"))
    return clauses


def score(images, prompts: Sequence[Prompt | Constraints], mode: str = "strict", *,
          color_tol: float = COLOR_TOL, min_area: int = MIN_AREA,
          position_margin: float = 0.1) -> tuple[np.ndarray, ScoreBreakdown]:
    """Reward a batch of images against their prompts.

    ``images``: (B, H, W, 3) uint8 in [0, 255] or float in [0, 1] (numpy or a
    CPU torch tensor, channels last); ``prompts``: B prompts (or bare
    constraints).  ``mode``: ``"strict"`` (GenEval: 1 iff every clause
    holds), ``"shaped"`` (mean clause score) or ``"dense"`` (shaped plus
    near-miss shape credit).  ``color_tol``/``min_area``: see
    :func:`.segment.detect`; ``position_margin``: relation margin as a fraction
    of the image side.  Returns ``(scores float32 (B,) in [0, 1], breakdown)``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    det = detect(images, color_tol=color_tol, min_area=min_area)
    b = det.offsets.size - 1
    if len(prompts) != b:
        raise ValueError(f"{b} images but {len(prompts)} prompts")
    h, w = det.size
    margins = (position_margin * w, position_margin * h)
    near = near_miss_credit(det) if mode == "dense" else None
    strict = np.zeros(b, np.float32)
    shaped = np.zeros(b, np.float32)
    all_clauses, cats = [], []
    for i, p in enumerate(prompts):
        c = p.constraints if isinstance(p, Prompt) else p
        cats.append(p.category if isinstance(p, Prompt) else "")
        s = slice(det.offsets[i], det.offsets[i + 1])
        clauses = _score_one(c, det.shape[s], det.color[s], det.cx[s], det.cy[s], det.area[s], margins,
                             None if near is None else near[s])
        strict[i] = float(all(cl.passed for cl in clauses))
        shaped[i] = float(np.mean([cl.score for cl in clauses if cl.kind != "exclusive"]))
        shaped[i] *= float(np.prod([cl.score for cl in clauses if cl.kind == "exclusive"]))
        all_clauses.append(clauses)
    bd = ScoreBreakdown(strict, shaped, all_clauses, cats, det)
    return (strict if mode == "strict" else shaped).copy(), bd

"""Seeded train / held-out split of the prompt universe.

Held-out = (a) every prompt that names one of the held-out (shape, colour)
compositions — one pair per shape, with distinct colours that all have colour
riddle clues — in any category, so those compositions never occur in
training prompts; plus (b) a random ``heldout_fraction`` of the remaining
prompts of each category (rounded; 0 for tiny categories).  Pass
``split.heldout_pairs`` as ``exclude_pairs`` to :func:`.plan.canonical_plan`
to also keep them out of training targets where a colour is free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .knowledge import COLOR_CLUES
from .prompts import CATEGORIES, prompts_by_category
from .spec import Prompt
from .vocab import SHAPES

__all__ = ["Split", "make_split", "DEFAULT_SPLIT_SEED"]

DEFAULT_SPLIT_SEED = 0


@dataclass(frozen=True)
class Split:
    """``train`` / ``heldout`` prompt tuples (disjoint, universe order) and the
    held-out (shape, colour) compositions."""

    seed: int
    train: tuple[Prompt, ...]
    heldout: tuple[Prompt, ...]
    heldout_pairs: frozenset[tuple[str, str]]

    def by_category(self, part: str = "train") -> dict[str, tuple[Prompt, ...]]:
        """``part`` ("train" or "heldout") grouped by category (all categories present as keys)."""
        prompts = getattr(self, part)
        return {c: tuple(p for p in prompts if p.category == c) for c in CATEGORIES}


def make_split(seed: int = DEFAULT_SPLIT_SEED, heldout_fraction: float = 0.1) -> Split:
    """Deterministic split of :func:`.prompts.all_prompts` for ``seed``."""
    rng = np.random.default_rng(seed)
    colors = list(COLOR_CLUES)
    chosen = rng.permutation(len(colors))[: len(SHAPES)]
    pairs = frozenset((s, colors[i]) for s, i in zip(SHAPES, chosen))
    train: list[Prompt] = []
    held: list[Prompt] = []
    for cat in CATEGORIES:
        prompts = prompts_by_category()[cat]
        named = [bool(p.constraints.compositions() & pairs) for p in prompts]
        rest = [i for i, n in enumerate(named) if not n]
        k = int(round(heldout_fraction * len(rest)))
        pick = set(rng.choice(rest, size=k, replace=False).tolist()) if k else set()
        for i, p in enumerate(prompts):
            (held if named[i] or i in pick else train).append(p)
    return Split(seed, tuple(train), tuple(held), pairs)

"""Prompt categories and the fixed universe of prompts.

GenEval-like categories (attributes named directly) plus reasoning categories
(an attribute is named indirectly; resolving it needs world knowledge or
arithmetic from :mod:`.knowledge`).  The universe is deterministic: every
category is fully enumerated except ``mixed_riddle``, which is a fixed-seed
sample of its (large) product space.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import permutations, product

import numpy as np

from .knowledge import COLOR_CLUES, CORNER_WORDS, CORNERS, COUNT_RIDDLES, SHAPE_CLUES
from .spec import Constraints, ObjectSpec, Prompt, Relation
from .vocab import COLOR_NAMES, NUMBER_WORDS, PLURALS, RELATION_WORDS, RELATIONS, SHAPES, tokenize

__all__ = [
    "GENEVAL_CATEGORIES",
    "REASONING_CATEGORIES",
    "CATEGORIES",
    "MIXED_RIDDLE_SAMPLES",
    "all_prompts",
    "prompts_by_category",
    "prompt_words",
]

GENEVAL_CATEGORIES: tuple[str, ...] = (
    "single_object", "two_objects", "counting", "colors", "position", "color_attr",
)
REASONING_CATEGORIES: tuple[str, ...] = ("color_riddle", "count_riddle", "shape_riddle", "mixed_riddle")
CATEGORIES: tuple[str, ...] = GENEVAL_CATEGORIES + REASONING_CATEGORIES

#: size of the fixed ``mixed_riddle`` sample, and its (constant) seed.
MIXED_RIDDLE_SAMPLES = 240
_MIXED_SEED = 20240531


def _noun(count: int, shape: str, color: str | None = None, article: str = "a") -> str:
    """``a red circle`` / ``two red circles`` (``article`` is used for count 1)."""
    head = article if count == 1 else NUMBER_WORDS[count]
    noun = shape if count == 1 else PLURALS[shape]
    return " ".join(w for w in (head, color, noun) if w)


def _one(shape: str, color: str | None = None, count: int = 1) -> Constraints:
    return Constraints((ObjectSpec(shape, color, count),))


def _single_object():
    for s in SHAPES:
        yield Prompt(_noun(1, s), "single_object", _one(s))


def _two_objects():
    for a, b in permutations(SHAPES, 2):
        yield Prompt(f"{_noun(1, a)} and {_noun(1, b)}", "two_objects",
                     Constraints((ObjectSpec(a, None), ObjectSpec(b, None))))


def _counting():
    for s, n in product(SHAPES, range(1, 5)):
        yield Prompt(_noun(n, s, article="one"), "counting", _one(s, None, n))


def _colors():
    for s, c in product(SHAPES, COLOR_NAMES):
        yield Prompt(_noun(1, s, c), "colors", _one(s, c))


def _position():
    for (a, b), rel in product(permutations(SHAPES, 2), RELATIONS):
        yield Prompt(f"{_noun(1, a)} {RELATION_WORDS[rel]} {_noun(1, b)}", "position",
                     Constraints((ObjectSpec(a, None), ObjectSpec(b, None)), (Relation(0, rel, 1),)))


def _color_attr():
    items = list(product(SHAPES, COLOR_NAMES))
    for (s1, c1), (s2, c2) in permutations(items, 2):
        if c1 != c2:
            yield Prompt(f"{_noun(1, s1, c1)} and {_noun(1, s2, c2)}", "color_attr",
                         Constraints((ObjectSpec(s1, c1), ObjectSpec(s2, c2))))


def _color_riddle():
    for s, n in product(SHAPES, range(1, 4)):
        for c, clues in COLOR_CLUES.items():
            for clue in clues:
                yield Prompt(f"{_noun(n, s)} the color of {clue}", "color_riddle", _one(s, c, n))


def _count_riddle():
    for template, offset, scale, plural in COUNT_RIDDLES:
        for ref, attr in product(SHAPES, CORNER_WORDS):
            value = CORNERS[ref] * scale + offset
            if value != int(value) or not 1 <= value <= 4:
                continue
            for s, c in product(SHAPES, (None, *COLOR_NAMES)):
                noun = " ".join(w for w in (c, PLURALS[s] if plural else s) if w)
                text = template.format(noun=noun, ref=ref, attr=attr)
                yield Prompt(text, "count_riddle", _one(s, c, int(value)))


def _shape_riddle():
    for s, n, c in product(SHAPES, range(1, 4), (None, *COLOR_NAMES)):
        for singular, plural in SHAPE_CLUES[s]:
            head = "a" if n == 1 else NUMBER_WORDS[n]
            words = (head, c, singular if n == 1 else plural)
            yield Prompt(" ".join(w for w in words if w), "shape_riddle", _one(s, c, n))


def _describe(shape: str, color: str, style: int, rng: np.random.Generator) -> str:
    """One count-1 object phrase: 0 plain, 1 shape riddle, 2 colour riddle, 3 both."""
    if style in (2, 3) and color not in COLOR_CLUES:
        style -= 2
    noun = shape
    if style in (1, 3):
        clues = SHAPE_CLUES[shape]
        noun = clues[rng.integers(len(clues))][0]
    if style in (2, 3):
        clues = COLOR_CLUES[color]
        return f"a {noun} the color of {clues[rng.integers(len(clues))]}"
    return f"a {color} {noun}"


def _mixed_riddle():
    rng = np.random.default_rng(_MIXED_SEED)
    seen: set[str] = set()
    while len(seen) < MIXED_RIDDLE_SAMPLES:
        (s1, s2), (c1, c2) = rng.choice(SHAPES, 2), rng.choice(COLOR_NAMES, 2)
        if s1 == s2 and c1 == c2:
            continue
        st1, st2 = rng.integers(4, size=2)
        if st1 == 0 and st2 == 0:
            continue
        rel = RELATIONS[rng.integers(len(RELATIONS))]
        text = f"{_describe(s1, c1, st1, rng)} {RELATION_WORDS[rel]} {_describe(s2, c2, st2, rng)}"
        if text in seen or ("the color of" not in text and "shape" not in text):
            continue
        seen.add(text)
        yield Prompt(text, "mixed_riddle",
                     Constraints((ObjectSpec(str(s1), str(c1)), ObjectSpec(str(s2), str(c2))),
                                 (Relation(0, rel, 1),)))


_GENERATORS = {
    "single_object": _single_object, "two_objects": _two_objects, "counting": _counting,
    "colors": _colors, "position": _position, "color_attr": _color_attr,
    "color_riddle": _color_riddle, "count_riddle": _count_riddle,
    "shape_riddle": _shape_riddle, "mixed_riddle": _mixed_riddle,
}


@lru_cache(maxsize=1)
def prompts_by_category() -> dict[str, tuple[Prompt, ...]]:
    """The fixed universe: category -> its prompts (unique texts, deterministic order)."""
    out = {}
    for cat in CATEGORIES:
        prompts = tuple(_GENERATORS[cat]())
        assert len({p.text for p in prompts}) == len(prompts), cat
        out[cat] = prompts
    return out


def all_prompts(category: str | None = None) -> tuple[Prompt, ...]:
    """Every prompt of ``category`` (all categories, in ``CATEGORIES`` order, if None)."""
    table = prompts_by_category()
    if category is not None:
        if category not in table:
            raise KeyError(f"unknown category {category!r}; known: {CATEGORIES}")
        return table[category]
    return tuple(p for cat in CATEGORIES for p in table[cat])


def prompt_words() -> set[str]:
    """Every word that can appear in a prompt (universe texts plus all table words)."""
    words = {w for p in all_prompts() for w in tokenize(p.text)}
    table_text = [*SHAPES, *PLURALS.values(), *COLOR_NAMES, *NUMBER_WORDS.values(),
                  *RELATION_WORDS.values(), *CORNER_WORDS, "a", "and", "the color of",
                  *(c for cs in COLOR_CLUES.values() for c in cs),
                  *(d for ds in SHAPE_CLUES.values() for pair in ds for d in pair),
                  *(t for t, *_ in COUNT_RIDDLES)]
    for t in table_text:
        words.update(w for w in tokenize(t) if not w.startswith("{"))
    return words

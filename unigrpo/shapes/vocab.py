"""Closed word lists of the shapes task: shapes, palette, grid, number words,
special tokens, and the word-level vocabulary.

Everything the task ever writes (prompts, plans, reasoning delimiters) is a
whitespace-separated sequence of words from :func:`vocabulary`, so a
word-level tokenizer built from it never needs ``<unk>`` for task text.

Palette: the six non-black, non-white corners of the RGB cube, so any two
palette colours (and the black background) are at least 255 apart in RGB and
nearest-colour segmentation is unambiguous.  ``purple`` is rendered as pure
magenta ``(255, 0, 255)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = [
    "SHAPES",
    "PLURALS",
    "COLORS",
    "COLOR_NAMES",
    "PALETTE",
    "BACKGROUND",
    "GRID",
    "MAX_COUNT",
    "NUMBER_WORDS",
    "RELATIONS",
    "RELATION_WORDS",
    "SPECIAL_TOKENS",
    "PAD",
    "BOS",
    "EOS",
    "UNK",
    "THINK",
    "END_THINK",
    "IMAGE",
    "END_IMAGE",
    "MISSING",
    "EXTRA",
    "REFLECTION_WORDS",
    "EDIT_WORDS",
    "PLAN_AT",
    "PLAN_SEP",
    "plan_tokens",
    "tokenize",
    "vocabulary",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}

#: colour name -> RGB (uint8 values); insertion order is the palette order.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (255, 0, 255),
    "cyan": (0, 255, 255),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
#: (K, 3) uint8, row k is the colour ``COLOR_NAMES[k]``.
PALETTE: np.ndarray = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.uint8)
BACKGROUND: tuple[int, int, int] = (0, 0, 0)

#: the image is a GRID x GRID array of cells; a plan puts <= 1 object per cell.
GRID: int = 3
#: the largest number of objects of one kind a prompt asks for.
MAX_COUNT: int = 4
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}

RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
RELATION_WORDS: dict[str, str] = {
    "left_of": "left of",
    "right_of": "right of",
    "above": "above",
    "below": "below",
}

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
THINK, END_THINK = "<think>", "</think>"
IMAGE, END_IMAGE = "<image>", "</image>"
#: fixed order: ids 0..7 of the vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, THINK, END_THINK, IMAGE, END_IMAGE)

#: the diagnosis words of a reflection (:mod:`.reflect`)
MISSING, EXTRA = "missing", "extra"
REFLECTION_WORDS: tuple[str, ...] = (MISSING, EXTRA)
#: the words an editing prompt adds to its scene's prompt (:mod:`.edits`)
EDIT_WORDS: tuple[str, ...] = ("then", "make", "remove", "add")
PLAN_AT = "@"
PLAN_SEP = ";"


def plan_tokens() -> tuple[str, ...]:
    """Every word a serialised plan can contain (colours, shapes, ``@``, ``;``, cell digits)."""
    return (*COLOR_NAMES, *SHAPES, PLAN_AT, PLAN_SEP, *(str(i) for i in range(GRID)))


def tokenize(text: str) -> list[str]:
    """Word-level split used for every task string (prompts, plans): ``text.split()``."""
    return text.split()


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The task's word vocabulary: ``SPECIAL_TOKENS`` first (ids 0..7), then every
    word used by any prompt of any category or by a plan, sorted, then the reflection
    words and the editing words (appended, so the ids of a model trained before them are
    unchanged: the shipped single-round checkpoint's vocabulary is the first 69, a
    reflection-only one's the first 71).  Deterministic."""
    from .prompts import prompt_words  # local import: prompts depends on vocab

    words = set(prompt_words()) | set(plan_tokens())
    words -= set(SPECIAL_TOKENS)
    return SPECIAL_TOKENS + tuple(sorted(words)) + tuple(w for w in REFLECTION_WORDS + EDIT_WORDS if w not in words)

"""World knowledge the reasoning categories rely on.

A prompt of a reasoning category names an attribute only indirectly (``the
color of grass``, ``the shape with three sides``, ``one more square than a
triangle has sides``); these tables are the ground truth that resolves them.
They are used to *generate* prompts (with resolved constraints); the verifier
never reads them.
"""

from __future__ import annotations

__all__ = ["COLOR_CLUES", "SHAPE_CLUES", "CORNERS", "CORNER_WORDS", "COUNT_RIDDLES"]

#: colour -> noun phrases with that colour ("... the color of <clue>").
#: ``cyan`` has no everyday referent distinct from blue/green, so it has none.
COLOR_CLUES: dict[str, tuple[str, ...]] = {
    "red": ("blood", "a strawberry", "a cherry"),
    "green": ("grass", "a leaf", "a frog"),
    "blue": ("the sky", "the ocean", "a sapphire"),
    "yellow": ("the sun", "a banana", "a lemon"),
    "purple": ("grapes", "an eggplant", "a plum"),
}

#: shape -> (singular, plural) descriptions that identify it uniquely.
SHAPE_CLUES: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("shape with no corners", "shapes with no corners"), ("round shape", "round shapes")),
    "square": (("shape with four equal sides", "shapes with four equal sides"),
               ("shape with four corners", "shapes with four corners")),
    "triangle": (("shape with three sides", "shapes with three sides"),
                 ("shape with three corners", "shapes with three corners")),
}

#: number of sides == number of corners of each shape.
CORNERS: dict[str, int] = {"circle": 0, "square": 4, "triangle": 3}
CORNER_WORDS: tuple[str, ...] = ("sides", "corners")

#: count riddles: (template, offset, scale, noun_plural).  The count is
#: ``CORNERS[ref] * scale + offset``.  Template fields: ``{noun}`` (the
#: counted object, singular or plural per ``noun_plural``), ``{ref}`` (shape
#: whose corners are counted), ``{attr}`` (``sides`` or ``corners``).
COUNT_RIDDLES: tuple[tuple[str, int, float, bool], ...] = (
    ("as many {noun} as a {ref} has {attr}", 0, 1.0, True),
    ("one more {noun} than a {ref} has {attr}", 1, 1.0, False),
    ("two more {noun} than a {ref} has {attr}", 2, 1.0, True),
    ("one fewer {noun} than a {ref} has {attr}", -1, 1.0, False),
    ("two fewer {noun} than a {ref} has {attr}", -2, 1.0, True),
    ("half as many {noun} as a {ref} has {attr}", 0, 0.5, True),
)

"""The built-in ``shapes`` task: a small GenEval-like text-to-image benchmark
with verifiable rewards, where some prompts need reasoning.

A prompt (e.g. ``two squares the color of grass``) comes with resolved
constraints (2 green squares).  The policy reasons in text, writing a plan
(``green square @ 0 1 ; green square @ 2 2``) between ``<think>`` and
``</think>``, then draws a 32x32 RGB image; :func:`score` checks the image
against the constraints.  Pure numpy, CPU, deterministic given seeds.

Modules: :mod:`.vocab` (words, palette, vocabulary), :mod:`.knowledge`
(riddle facts), :mod:`.spec` (constraint dataclasses), :mod:`.prompts`
(categories, prompt universe), :mod:`.split` (train / held-out),
:mod:`.plan` (plans: serialise, parse, canonical plan), :mod:`.render`
(plan -> image), :mod:`.segment` (detection), :mod:`.verifier` (reward);
multi-round: :mod:`.reflect` (what the model writes after looking), :mod:`.edits`
(editing prompts and their whole-episode verdict).
"""

from .plan import (Plan, PlanObject, PlanParseError, canonical_plan, default_plan, extract_plan,
                   format_reasoning, parse_plan, plan_satisfies, try_parse_plan)
from .prompts import CATEGORIES, GENEVAL_CATEGORIES, REASONING_CATEGORIES, all_prompts, prompts_by_category
from .render import render_plan, render_plans, render_prompts
from .segment import Detections, detect
from .spec import Constraints, ObjectSpec, Prompt, Relation
from .split import DEFAULT_SPLIT_SEED, Split, make_split
from .verifier import Clause, ScoreBreakdown, score
from .vocab import (COLOR_NAMES, COLORS, GRID, MAX_COUNT, RELATIONS, SHAPES, SPECIAL_TOKENS,
                    plan_tokens, tokenize, vocabulary)

__all__ = [
    # vocabulary
    "SHAPES", "COLORS", "COLOR_NAMES", "GRID", "MAX_COUNT", "RELATIONS", "SPECIAL_TOKENS",
    "vocabulary", "tokenize", "plan_tokens",
    # prompts
    "CATEGORIES", "GENEVAL_CATEGORIES", "REASONING_CATEGORIES", "Prompt", "Constraints",
    "ObjectSpec", "Relation", "all_prompts", "prompts_by_category", "Split", "make_split",
    "DEFAULT_SPLIT_SEED",
    # plans
    "Plan", "PlanObject", "PlanParseError", "parse_plan", "try_parse_plan", "canonical_plan", "default_plan",
    "plan_satisfies", "format_reasoning", "extract_plan",
    # images and reward
    "render_plan", "render_plans", "render_prompts", "detect", "Detections", "score",
    "ScoreBreakdown", "Clause",
]

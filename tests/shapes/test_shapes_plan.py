"""Plans: serialisation, parsing, canonical plans."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unigrpo import shapes as S


def test_serialise_example():
    p = S.Plan((S.PlanObject("square", "blue", 2, 1), S.PlanObject("circle", "red", 0, 1)))
    assert p.to_text() == "red circle @ 0 1 ; blue square @ 2 1"
    assert S.parse_plan("blue square @ 2 1 ; red circle @ 0 1") == p
    assert S.parse_plan("blue square @2 1;red circle@0 1") == p
    assert S.parse_plan("") == S.Plan() and S.Plan().to_text() == ""
    assert set(S.tokenize(p.to_text())) <= set(S.plan_tokens())


_objects = st.lists(
    st.tuples(st.sampled_from(S.SHAPES), st.sampled_from(S.COLOR_NAMES),
              st.integers(0, S.GRID - 1), st.integers(0, S.GRID - 1)),
    max_size=S.GRID * S.GRID, unique_by=lambda t: (t[2], t[3]))


@settings(max_examples=200, deadline=None)
@given(_objects, st.randoms())
def test_roundtrip_and_canonical_order(objs, rnd):
    shuffled = list(objs)
    rnd.shuffle(shuffled)
    a = S.Plan(tuple(S.PlanObject(*o) for o in objs))
    b = S.Plan(tuple(S.PlanObject(*o) for o in shuffled))
    assert a == b and a.to_text() == b.to_text()
    assert S.parse_plan(a.to_text()) == a
    assert [(o.y, o.x) for o in a] == sorted((o.y, o.x) for o in a)


@pytest.mark.parametrize("text,needle", [
    ("red circle @ 0 1 ;", "empty"),
    ("red circle 0 1", "expected"),
    ("red circle @ 0", "expected"),
    ("pink circle @ 0 1", "unknown color"),
    ("red hexagon @ 0 1", "unknown shape"),
    ("red circle # 0 1 2", "expected"),
    ("red circle @ x 1", "not two integers"),
    ("red circle @ 3 0", "outside"),
    ("red circle @ 0 0 ; blue square @ 0 0", "two objects"),
    ("red circle @ 0 0 ; ; blue square @ 1 0", "empty"),
])
def test_parse_errors(text, needle):
    with pytest.raises(S.PlanParseError) as e:
        S.parse_plan(text)
    assert needle in e.value.reason
    plan, reason = S.try_parse_plan(text)
    assert plan is None and needle in reason


def test_reasoning_format_and_extract():
    p = S.parse_plan("red circle @ 0 1 ; blue square @ 2 1")
    r = S.format_reasoning(p)
    assert r == "<think> red circle @ 0 1 ; blue square @ 2 1 </think>"
    assert S.extract_plan(f"<bos> a red circle {r} <image> </image>") == (p, None)
    assert S.extract_plan("<think> </think>") == (S.Plan(), None)
    assert S.extract_plan("red circle @ 0 1")[1] == "no <think>"
    assert S.extract_plan("<think> red circle @ 0 1")[1] == "no </think> after <think>"
    assert S.extract_plan("<think> red blob @ 0 1 </think>")[0] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_canonical_plan_satisfies_every_prompt(seed):
    rng = np.random.default_rng(seed)
    for p in S.all_prompts():
        plan = S.canonical_plan(p, rng)
        assert S.plan_satisfies(plan, p), (p.text, plan.to_text())
        assert len(plan) == p.constraints.total


def test_plan_satisfies_rejects():
    p = [q for q in S.all_prompts("position") if q.text == "a circle left of a square"][0]
    assert S.plan_satisfies(S.parse_plan("red circle @ 0 0 ; red square @ 1 2"), p)
    assert not S.plan_satisfies(S.parse_plan("red circle @ 1 0 ; red square @ 0 2"), p)
    assert not S.plan_satisfies(S.parse_plan("red circle @ 0 0"), p)
    assert not S.plan_satisfies(S.parse_plan("red circle @ 0 0 ; red square @ 1 2 ; red square @ 2 2"), p)


def test_canonical_plan_deterministic_and_varied():
    p = S.all_prompts("counting")[-1]
    a = [S.canonical_plan(p, np.random.default_rng(7)).to_text() for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(7)
    assert len({S.canonical_plan(p, rng).to_text() for _ in range(20)}) > 10


def test_default_plan_is_one_rule_that_satisfies_every_prompt():
    sp = S.make_split(0)
    for p in S.all_prompts():
        plan = S.default_plan(p, sp.heldout_pairs)
        assert S.plan_satisfies(plan, p), (p.text, plan.to_text())
        assert plan == S.default_plan(p, sp.heldout_pairs)
    for p in sp.train:  # a free colour avoids the held-out compositions
        assert not {(o.shape, o.color) for o in S.default_plan(p, sp.heldout_pairs)} & sp.heldout_pairs
    by_text = {p.text: p for p in S.all_prompts()}
    # the centre first, then the centre row; a free colour is the first allowed one
    assert S.default_plan(by_text["one circle"]).to_text() == "red circle @ 1 1"
    assert S.default_plan(by_text["a circle left of a square"]).to_text() == "red circle @ 1 1 ; red square @ 2 1"
    assert S.default_plan(by_text["a circle right of a square"]).to_text() == "red square @ 0 1 ; red circle @ 1 1"
    assert S.default_plan(by_text["one circle"], {("circle", "red")}).to_text() == "green circle @ 1 1"


def test_canonical_plan_excludes_heldout_pairs():
    sp = S.make_split(0)
    rng = np.random.default_rng(0)
    for p in sp.train:
        for _ in range(3):
            plan = S.canonical_plan(p, rng, exclude_pairs=sp.heldout_pairs)
            assert not {(o.shape, o.color) for o in plan} & sp.heldout_pairs

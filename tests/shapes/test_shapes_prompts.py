"""Prompt universe, vocabulary, constraints and split of the shapes task."""

import json

import pytest

from unigrpo import shapes as S
from unigrpo.shapes.knowledge import COLOR_CLUES


def _by_text(text):
    matches = [p for p in S.all_prompts() if p.text == text]
    assert len(matches) == 1, text
    return matches[0].constraints


def test_categories_cover_geneval_and_reasoning():
    assert set(S.GENEVAL_CATEGORIES) == {
        "single_object", "two_objects", "counting", "colors", "position", "color_attr"}
    assert set(S.REASONING_CATEGORIES) >= {"color_riddle", "count_riddle", "shape_riddle"}
    for cat in S.CATEGORIES:
        assert len(S.all_prompts(cat)) > 0
        assert all(p.category == cat for p in S.all_prompts(cat))
    with pytest.raises(KeyError):
        S.all_prompts("nope")


def test_universe_unique_and_deterministic():
    texts = [p.text for p in S.all_prompts()]
    assert len(texts) == len(set(texts))
    S.prompts_by_category.cache_clear()
    assert [p.text for p in S.all_prompts()] == texts


def test_vocabulary_covers_prompts_and_plans():
    vocab = S.vocabulary()
    assert vocab[: len(S.SPECIAL_TOKENS)] == S.SPECIAL_TOKENS
    assert S.SPECIAL_TOKENS == ("<pad>", "<bos>", "<eos>", "<unk>", "<think>", "</think>",
                                "<image>", "</image>")
    assert len(vocab) == len(set(vocab))
    words = set(vocab)
    for p in S.all_prompts():
        assert set(S.tokenize(p.text)) <= words, p.text
    assert set(S.plan_tokens()) <= words
    assert all(w == w.strip() and w for w in vocab)


@pytest.mark.parametrize("text,shape,color,count", [
    ("a circle the color of grass", "circle", "green", 1),
    ("two squares the color of the sky", "square", "blue", 2),
    ("three triangles the color of blood", "triangle", "red", 3),
    ("a square the color of the sun", "square", "yellow", 1),
    ("one more square than a triangle has sides", "square", None, 4),
    ("one fewer circle than a square has corners", "circle", None, 3),
    ("as many red circles as a triangle has sides", "circle", "red", 3),
    ("half as many triangles as a square has sides", "triangle", None, 2),
    ("two more circles than a circle has corners", "circle", None, 2),
    ("a shape with no corners", "circle", None, 1),
    ("a red shape with three sides", "triangle", "red", 1),
    ("two blue shapes with four equal sides", "square", "blue", 2),
])
def test_riddles_resolve(text, shape, color, count):
    c = _by_text(text)
    assert c.objects == (S.ObjectSpec(shape, color, count),)
    assert c.relations == ()


def test_direct_categories():
    assert _by_text("three triangles").objects == (S.ObjectSpec("triangle", None, 3),)
    c = _by_text("a red circle and a blue circle")
    assert c.objects == (S.ObjectSpec("circle", "red"), S.ObjectSpec("circle", "blue"))
    c = _by_text("a circle left of a square")
    assert c.relations == (S.Relation(0, "left_of", 1),)


def test_mixed_riddles_need_resolution_and_have_relations():
    for p in S.all_prompts("mixed_riddle"):
        c = p.constraints
        assert len(c.relations) == 1 and all(o.color is not None for o in c.objects)
        assert "the color of" in p.text or "shape" in p.text
        # at least one object is not named directly as "<color> <shape>"
        assert not all(f"{o.color} {o.shape}" in p.text for o in c.objects)


def test_counts_in_range():
    for p in S.all_prompts():
        for o in p.constraints.objects:
            assert 1 <= o.count <= S.MAX_COUNT
    counts = {p.constraints.objects[0].count for p in S.all_prompts("counting")}
    assert counts == {1, 2, 3, 4}


def test_constraints_validation():
    with pytest.raises(ValueError):
        S.Constraints((S.ObjectSpec("circle", None), S.ObjectSpec("circle", "red")))
    with pytest.raises(ValueError):
        S.ObjectSpec("hexagon", None)
    with pytest.raises(ValueError):
        S.ObjectSpec("circle", "red", 5)
    with pytest.raises(ValueError):
        S.Constraints((S.ObjectSpec("circle", None, 2), S.ObjectSpec("square", None)),
                      (S.Relation(0, "left_of", 1),))


def test_prompt_dict_roundtrip():
    for p in S.all_prompts()[::37]:
        d = json.loads(json.dumps(p.to_dict()))
        assert S.Prompt.from_dict(d) == p


def test_split_deterministic_disjoint_complete():
    a, b = S.make_split(0), S.make_split(0)
    assert a == b
    texts_train = {p.text for p in a.train}
    texts_held = {p.text for p in a.heldout}
    assert not texts_train & texts_held
    assert texts_train | texts_held == {p.text for p in S.all_prompts()}
    assert S.make_split(1).heldout != a.heldout


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_holds_out_compositions(seed):
    sp = S.make_split(seed)
    assert len(sp.heldout_pairs) == len(S.SHAPES)
    assert {s for s, _ in sp.heldout_pairs} == set(S.SHAPES)
    assert all(c in COLOR_CLUES for _, c in sp.heldout_pairs)
    for p in sp.train:
        assert not p.constraints.compositions() & sp.heldout_pairs, p.text
    held_comp = set().union(*(p.constraints.compositions() for p in sp.heldout))
    assert sp.heldout_pairs <= held_comp
    for cat in S.CATEGORIES:
        assert sp.by_category("train")[cat], cat
    for cat in ("colors", "color_attr", "color_riddle", "count_riddle", "shape_riddle", "mixed_riddle"):
        assert sp.by_category("heldout")[cat], cat

"""Editing prompts: the universe and its split, the edit on constraints and on plans,
the whole-episode verdict (scene, edited scene, the rest unchanged), the rewards that
see every image of an episode, and the warm start's editing episodes."""

import numpy as np
import pytest
import torch

from unigrpo.rewards import EpisodeImages, WeightedRewards
from unigrpo.shapes import make_split, render_plans
from unigrpo.shapes.edits import (EDIT_CATEGORIES, EDIT_KINDS, Edit, EditPrompt, all_edit_prompts, edit_split,
                                  score_edits)
from unigrpo.shapes.plan import canonical_plan, extract_plan, parse_plan, plan_satisfies
from unigrpo.shapes.prompts import prompts_by_category
from unigrpo.shapes.reflect import reflection
from unigrpo.shapes.spec import Prompt
from unigrpo.shapes.task import verifier_reward
from unigrpo.shapes.vocab import vocabulary

SCENE = next(p for p in prompts_by_category()["color_attr"] if p.text == "a red circle and a blue square")


def test_universe_words_constraints_and_categories():
    words = set(vocabulary())
    prompts = all_edit_prompts()
    assert {p.category for p in prompts} == set(EDIT_CATEGORIES)
    assert len({p.text for p in prompts}) == len(prompts)
    for p in prompts:
        assert set(p.text.split()) <= words and p.text.startswith(p.scene.text + " then ")
        assert p.constraints == p.edit.apply(p.scene.constraints) and p.constraints != p.scene.constraints
    e = EditPrompt.of(SCENE, Edit("recolor", 1, color="green"))
    assert e.text == "a red circle and a blue square then make the square green"
    assert [(o.shape, o.color) for o in e.constraints.objects] == [("circle", "red"), ("square", "green")]
    with pytest.raises(ValueError, match="edit kind"):
        Edit("move", 0)


def test_split_keeps_held_out_scenes_and_compositions_out_of_training():
    split = make_split(0)
    train, held = edit_split(split)
    assert train and held and not {p.text for p in train} & {p.text for p in held}
    held_scenes = {p.text for p in split.heldout}
    for p in train:
        assert p.scene.text not in held_scenes and not p.constraints.compositions() & split.heldout_pairs
    assert {p.category for p in held} == set(EDIT_CATEGORIES)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edit_on_a_plan_satisfies_the_edited_scene_and_keeps_the_rest(kind):
    rng = np.random.default_rng(0)
    prompts = [p for p in all_edit_prompts() if p.edit.kind == kind]
    for i in rng.choice(len(prompts), 40, replace=False):
        p = prompts[i]
        scene = canonical_plan(p.scene, rng)
        edited = p.edit.on_plan(scene, p.scene.constraints, rng)
        assert plan_satisfies(scene, p.scene) and plan_satisfies(edited, p)
        for j, spec in enumerate(p.scene.constraints.objects):  # every object kept stays in its cell
            if p.edit.kept(j) is not None:
                before = next(o for o in scene if o.shape == spec.shape)
                assert any((o.x, o.y) == (before.x, before.y) for o in edited)


def _draw(*plans):
    return render_plans(list(plans), np.random.default_rng(0))


def test_score_edits_judges_scene_edit_and_what_stayed():
    p = EditPrompt.of(SCENE, Edit("recolor", 1, color="green"))
    scene = parse_plan("red circle @ 0 0 ; blue square @ 2 2")
    edited = parse_plan("red circle @ 0 0 ; green square @ 2 2")
    moved = parse_plan("red circle @ 2 0 ; green square @ 2 2")  # the circle was not to move
    wrong_scene = parse_plan("red circle @ 0 0 ; cyan square @ 2 2")
    first = _draw(scene, scene, scene, wrong_scene, edited)
    final = _draw(edited, edited, moved, edited, edited)
    got = score_edits(first, final, [True, False, True, True, False], [p] * 5)
    assert got.strict.tolist() == [1, 0, 0, 0, 0]  # right; one image only; moved; wrong scene; edit not shown
    assert got.kept.tolist() == [1, 0, 0.5, 0.5, 0]  # the square of a wrong scene cannot be followed
    assert got.before.tolist() == [1, 1, 1, 0, 0] and got.after.tolist() == [1, 1, 1, 1, 1]
    assert got.shaped[0] == 1 and (got.shaped[1:] < 1).all()
    with pytest.raises(TypeError, match="EditPrompt"):
        score_edits(first, final, [True] * 5, [SCENE] * 5)


def test_kept_colour_is_checked_where_the_prompt_leaves_it_free():
    scene_prompt = next(p for p in prompts_by_category()["position"] if p.text == "a circle left of a square")
    p = EditPrompt.of(scene_prompt, Edit("reshape", 1, shape="triangle"))
    scene = parse_plan("red circle @ 0 1 ; blue square @ 2 1")
    same = parse_plan("red circle @ 0 1 ; blue triangle @ 2 1")
    recoloured = parse_plan("yellow circle @ 0 1 ; blue triangle @ 2 1")
    got = score_edits(_draw(scene, scene), _draw(same, recoloured), [True, True], [p, p])
    assert got.strict.tolist() == [1, 0] and got.kept.tolist() == [1, 0.5]


def test_rewards_that_take_the_episode_get_every_image():
    seen = {}

    def pair(images, prompts, metadata, episode):
        seen["episode"] = episode
        return episode.present.sum(1).float()

    rewards = WeightedRewards([("pair", pair, 1.0), ("plain", lambda i, p, m: torch.zeros(i.shape[0]), 1.0)])
    assert rewards.wants_episode and not WeightedRewards([("plain", lambda i, p, m: [0.0], 1.0)]).wants_episode
    images = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    assert rewards(images, ["a", "b"], [None, None]).total.tolist() == [1, 1]  # default: one image each
    both = EpisodeImages(torch.zeros(2, 2, 4, 4, 3, dtype=torch.uint8), torch.tensor([[True, True], [True, False]]))
    assert rewards(images, ["a", "b"], [None, None], both).total.tolist() == [2, 1] and seen["episode"] is both


def test_verifier_reward_scores_edit_rows_on_the_episode_and_others_on_the_final_image():
    p = EditPrompt.of(SCENE, Edit("recolor", 1, color="green"))
    plain = Prompt(p.text, "colors", p.constraints)  # the same final scene, asked for directly
    scene = parse_plan("red circle @ 0 0 ; blue square @ 2 2")
    edited = parse_plan("red circle @ 0 0 ; green square @ 2 2")
    first, final = _draw(scene, edited, edited), _draw(edited, edited, edited)
    episode = EpisodeImages(torch.from_numpy(np.stack([first, final], 1)), torch.ones(3, 2, dtype=torch.bool))
    scores, _ = verifier_reward("strict")(torch.from_numpy(final), [p.text] * 3, [p, p, plain], episode=episode)
    assert scores.tolist() == [1, 0, 1]  # row 1 never showed the scene before the edit
    with pytest.raises(ValueError, match="judged on the whole episode: pass episode="):
        verifier_reward("strict")(torch.from_numpy(final), [p.text] * 3, [p, p, plain])


def test_warm_start_editing_episodes_draw_the_scene_then_the_edit():
    from unigrpo.shapes.sft import edit_episode, make_episode_batch

    split = make_split(0)
    train, _ = edit_split(split)
    rng = np.random.default_rng(0)
    for p in train[::97]:
        text, scene, edited = edit_episode(rng, p, split.heldout_pairs)
        assert extract_plan(text)[0] == scene and text.endswith(reflection(scene, edited))
        assert plan_satisfies(edited, p) and set(text.split()) <= set(vocabulary())
    b = make_episode_batch(np.random.default_rng(1), split.train, 64, 0.0, 1.0, 0.5, split.heldout_pairs,
                           edit=1.0, edits=train)
    for text, slots, present, trained in zip(b.texts, b.slots, b.present, b.trained):
        words = text.split()
        assert "then" in words and present.all() and trained.all()
        assert words[slots[0] - 1] == "</think>" and slots[1] == len(words)

"""The built-in world's multi-round pieces: reflections (diagnosis + plan, or <eos>),
flawed first images, the interleaved warm start's examples and losses, the
``shapes-reflect`` task and its evaluation."""

from collections import Counter

import numpy as np
import pytest
import torch

from unigrpo.shapes import make_split
from unigrpo.shapes.edits import EDIT_KINDS, EditPrompt
from unigrpo.shapes.plan import extract_plan, parse_plan
from unigrpo.shapes.reflect import diagnose, flawed_plan, reflection
from unigrpo.shapes.sft import (SFTConfig, build_model, episode_losses, make_batch, make_episode_batch,
                                sft_losses)
from unigrpo.shapes.vocab import vocabulary

PLAN = parse_plan("red circle @ 1 1 ; green square @ 0 0")


def test_reflection_says_what_differs_then_plans_again():
    assert reflection(PLAN, PLAN) == "<eos>"
    recolored = parse_plan("blue circle @ 1 1 ; green square @ 0 0")
    assert diagnose(recolored, PLAN) == ["missing red circle", "extra blue circle"]
    assert reflection(recolored, PLAN) == ("missing red circle ; extra blue circle ; "
                                           "green square @ 0 0 ; red circle @ 1 1 </think>")
    two = parse_plan("red circle @ 1 1 ; red circle @ 2 2 ; green square @ 0 0")
    assert diagnose(two, PLAN) == ["extra red circle"]  # "two circles, not one"
    assert diagnose(parse_plan("green square @ 0 0"), PLAN) == ["missing red circle"]
    words = set(vocabulary())
    assert set(reflection(recolored, PLAN).split()) <= words


def test_flawed_plans_are_always_wrong_and_valid():
    rng = np.random.default_rng(0)
    split = make_split(0)
    for prompt in split.train[:200]:
        from unigrpo.shapes.plan import canonical_plan

        plan = canonical_plan(prompt, rng)
        bad = flawed_plan(plan, rng)
        assert diagnose(bad, plan), (plan, bad)


def test_episode_batch_places_images_and_reflections():
    split = make_split(0)
    rng = np.random.default_rng(1)
    b = make_episode_batch(rng, split.train, 64, 0.2, 0.6, 0.5, split.heldout_pairs)
    words = set(vocabulary())
    kinds = set()
    for text, slots, present, trained in zip(b.texts, b.slots, b.present, b.trained):
        w = text.split()
        assert set(w) <= words
        if not present[1]:
            assert slots[0] in (len(w), len(w) - 1)  # at the end, or before the <eos> that ends the episode
            kinds.add("eos" if w[-1] == "<eos>" else "one")
            continue
        kinds.add("redraw")
        assert not trained[0] and trained[1] and w[slots[0] - 1] == "</think>" and slots[1] == len(w)
        first, _ = extract_plan(" ".join(w[:slots[0]]))
        assert w[slots[1] - 1] == "</think>" and first.to_text() in " ".join(w[slots[0]:])
    assert kinds == {"eos", "one", "redraw"}


def test_episode_losses_equal_the_single_round_losses_without_looking():
    """With no example looking at its image, the interleaved pass is the packed one."""
    from unigrpo.shapes.model import ShapesConfig, ShapesModel

    torch.manual_seed(0)
    model = ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=48, timestep_embed_dim=16))
    torch.nn.init.normal_(model.velocity_head.weight, std=0.2)
    split = make_split(0)
    one = make_batch(np.random.default_rng(2), split.train, 6, 0.3)
    eps = make_episode_batch(np.random.default_rng(2), split.train, 6, 0.3, 0.0, 0.5)
    assert eps.texts == one.texts
    lm, flow = sft_losses(model, one, torch.Generator().manual_seed(0))
    lm_e, flow_e = episode_losses(model, eps, torch.Generator().manual_seed(0))
    torch.testing.assert_close(lm_e, lm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flow_e, flow, rtol=1e-5, atol=1e-6)
    lm_e, flow_e = episode_losses(model, make_episode_batch(np.random.default_rng(3), split.train, 6, 0.2, 1.0, 1.0),
                                  torch.Generator().manual_seed(0))
    (lm_e + flow_e).backward()
    assert torch.isfinite(lm_e) and model.embed_tokens.weight.grad is not None


def test_warm_start_from_a_smaller_vocabulary_keeps_every_old_row(tmp_path):
    from unigrpo.shapes.model import ShapesConfig, ShapesModel, build_tokenizer

    old_words = vocabulary()[:69]
    torch.manual_seed(0)
    old = ShapesModel(ShapesConfig(vocab_size=69, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, timestep_embed_dim=16),
                      build_tokenizer(old_words))
    old.save_pretrained(tmp_path / "old")
    new = build_model(SFTConfig(out=str(tmp_path / "new"), init=str(tmp_path / "old")))
    assert new.config.vocab_size == len(vocabulary())
    assert torch.equal(new.embed_tokens.weight[:69], old.embed_tokens.weight)
    assert torch.equal(new.lm_head.weight[:69], old.lm_head.weight)
    assert torch.equal(new.layers[0].mlp.up_proj.weight, old.layers[0].mlp.up_proj.weight)


def test_reflect_task_brings_its_own_defaults_under_the_users():
    from unigrpo.train import load_config

    cfg = load_config(None, ["task=shapes-reflect"])
    assert cfg.rollout.max_rounds == 2 and cfg.model.checkpoint == "builtin:shapes-reflect-sft"
    assert load_config(None, ["task=shapes-reflect", "rollout.max_rounds=3"]).rollout.max_rounds == 3
    assert load_config(None, []).rollout.max_rounds == 1


@pytest.mark.parametrize("rounds", [2])
def test_reflect_evaluation_reports_first_and_final_images(tmp_path, rounds):
    from unigrpo.shapes.eval import EvalConfig, evaluate, format_table
    from unigrpo.shapes.model import ShapesConfig, ShapesModel

    torch.manual_seed(0)
    model = ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=48, timestep_embed_dim=16)).eval()
    res = evaluate(EvalConfig(out=str(tmp_path), steps=2, images_per_category=1, max_new_tokens=4,
                              max_rounds=rounds, grid_per_category=1, edits_per_kind=2), model)
    table = res["modes"]["reasoning"]
    assert 0 <= table["first_image_overall"] <= 1 and 1 <= table["rounds_used_mean"] <= rounds
    assert (tmp_path / "samples_rounds.png").exists() and "first image" in format_table(res)
    assert sum(table["looking"].values()) == res["num_images"] and "after looking" in format_table(res)
    edits = res["editing"]
    assert set(edits["per_kind"]) == {f"edit_{k}" for k in EDIT_KINDS} and len(edits["samples"]) == 8
    assert 0 <= edits["overall"] <= 1 and 1 <= edits["rounds_used_mean"] <= rounds
    assert (tmp_path / "samples_edits.png").exists() and "editing" in format_table(res)


def test_looking_outcomes_count_each_way_an_episode_ends():
    from unigrpo.shapes.eval import looking_outcomes

    first = [1, 1, 1, 0, 0, 0, 0]
    final = [1, 0, 1, 0, 1, 0, 0]
    redrew = [0, 1, 1, 1, 1, 0, 0]
    assert looking_outcomes(first, final, redrew) == {"right_stopped": 1, "spoiled": 1, "right_redrawn_right": 1,
                                                      "wrong_redrawn_wrong": 1, "fixed": 1, "wrong_stopped": 2}


def test_own_drawings_carry_the_reflection_the_detector_grounds():
    from unigrpo.shapes.model import ShapesConfig, ShapesModel
    from unigrpo.shapes.sft import own_drawings
    from unigrpo.shapes.segment import detect
    from unigrpo.shapes.reflect import seen_objects
    from unigrpo.shapes.verifier import score

    torch.manual_seed(0)
    model = ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=48, timestep_embed_dim=16))
    split = make_split(0)
    pool = own_drawings(model, split.train, 12, np.random.default_rng(0), steps=2, batch_size=5)
    assert 0 < len(pool) <= 12 and model.training  # the model's mode is restored
    for d in pool:
        plan = extract_plan(d.text)[0]
        assert plan == d.plan and d.reflection == reflection(seen_objects(detect(d.image[None]), 0), plan)
    b = make_episode_batch(np.random.default_rng(1), split.train, 32, 0.0, 1.0, 0.5, own=1.0, pool=pool)
    texts = {d.text for d in pool}
    for text, present, trained in zip(b.texts, b.present, b.trained):
        assert any(text.startswith(t) for t in texts) and not trained[0]  # own drawings are never targets
        assert present[1] == (not text.endswith("<eos>"))


def test_reflect_task_evaluates_two_rounds_and_shapes_one():
    from unigrpo.shapes.model import ShapesConfig, ShapesModel
    from unigrpo.shapes.task import ShapesReflectTask, ShapesTask
    from unigrpo.task import TaskConfig

    torch.manual_seed(0)
    model = ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=48, timestep_embed_dim=16)).eval()
    small = dict(eval_size=1, eval_steps=2)
    looked = ShapesReflectTask(TaskConfig(name="shapes-reflect", **small)).evaluate(model, None)
    assert 0 <= looked["first_image_overall"] <= 1 and 1 <= looked["rounds_used"] <= 2
    assert 0 <= looked["editing_overall"] <= 1 and all(f"edit_{k}" in looked for k in EDIT_KINDS)
    assert 0 <= looked["no_reasoning_overall"] <= 1  # the warm start draws from the bare prompt too
    plain = ShapesTask(TaskConfig(name="shapes", **small)).evaluate(model, None)
    assert "first_image_overall" not in plain and "rounds_used" not in plain and "overall" in plain
    assert "no_reasoning_overall" not in plain
    assert "editing_overall" not in plain


def test_reflect_task_trains_on_shapes_and_a_third_as_many_edits():
    from unigrpo.shapes.task import ShapesReflectTask, ShapesTask
    from unigrpo.task import TaskConfig

    shapes = ShapesTask(TaskConfig(name="shapes")).train_prompts()
    task = ShapesReflectTask(TaskConfig(name="shapes-reflect"))
    prompts = task.train_prompts()
    edits = [p.metadata for p in prompts if isinstance(p.metadata, EditPrompt)]
    assert prompts[:len(shapes)] == shapes and len(prompts) == len(shapes) + len(edits)
    counts = Counter(p.edit.kind for p in edits)
    assert set(counts) == set(EDIT_KINDS) and len(set(counts.values())) == 1
    assert sum(counts.values()) == pytest.approx(len(shapes) / 3, abs=4)
    held = {p.text for p in task.heldout_prompts()}
    assert not held & {p.text for p in prompts} and any("then" in t.split() for t in held)
    assert [p.text for p in ShapesReflectTask(TaskConfig(name="shapes-reflect")).train_prompts()] == \
        [p.text for p in prompts]  # seeded


def test_edit_evaluation_needs_two_rounds():
    from unigrpo.shapes.eval import EvalConfig

    with pytest.raises(ValueError, match="--edits-per-kind 2 needs --max-rounds >= 2"):
        EvalConfig(edits_per_kind=2, max_rounds=1).validate()

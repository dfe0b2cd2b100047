import torch

from unigrpo.rewards import WeightedRewards
from unigrpo.shapes.ablate import VARIANTS, run_variant, to_markdown
from unigrpo.shapes.model import ShapesConfig, ShapesModel
from unigrpo.tasks import PromptsTask


def tiny():
    torch.manual_seed(0)
    return ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=48, timestep_embed_dim=16))


def test_every_variant_runs_and_reports(tmp_path):
    base = ["train.iterations=1", "train.prompts_per_iteration=2", "rollout.num_generations=2",
            "rollout.num_inference_steps=2", "rollout.max_reasoning_tokens=4", "train.minibatch_size=4",
            "task.eval_steps=2", "task.eval_size=2"]
    rewards = WeightedRewards([("shaped", lambda im, p, m: im.float().mean(dim=(1, 2, 3)) / 255, 1.0)])
    task = PromptsTask(prompts=["a red circle", "two squares"], heldout=["three triangles"], rewards=rewards)
    rows = [run_variant(name, over, base, tmp_path, ["a red circle", "three triangles"], policy_factory=tiny,
                        task=task, progress=False)
            for name, over in VARIANTS.items()]
    assert all(r["heldout_before"] is not None and r["heldout_after"] is not None for r in rows)
    assert [r["variant"] for r in rows] == list(VARIANTS)
    assert all(r["image_drift"] >= 0 and r["train_reward_last"] is not None for r in rows)
    assert all(r["train_reward_first"] is not None and r["train_reward_final"] is not None for r in rows)
    assert all(r["wall_s"] > 0 for r in rows)
    table = to_markdown(rows, "1 iteration")
    assert table.count("\n|") == len(VARIANTS) + 2 and "text-only" in table and " -> " in table


def test_multi_round_tasks_get_the_first_image_rounds_and_editing_columns():
    row = {"variant": "joint (UniGRPO)", "heldout_before": 0.1, "heldout_after": 0.2, "train_reward_first": 0.1,
           "train_reward_final": 0.3, "image_drift": 1.0, "wall_s": 2.0, "rounds_before": 1.5, "rounds_after": 1.25,
           "first_before": 0.4, "first_after": 0.45, "editing_before": 0.125, "editing_after": 0.25}
    table = to_markdown([row, {**row, "variant": "single-round training"}], "1 iteration")
    assert "images per episode" in table and table.count("1.5 -> 1.25") == 2
    assert table.count("0.4 -> 0.45") == 2 and table.count("0.125 -> 0.25") == 2 and "editing, before" in table
    single = {k: v for k, v in row.items() if not k.startswith(("rounds_", "first_", "editing_"))}
    assert "images per episode" not in to_markdown([single], "b") and "editing" not in to_markdown([single], "b")

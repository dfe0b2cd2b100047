"""Tiny training runs for tests: a small built-in model, four prompts, a brightness reward."""

import torch

from unigrpo.rewards import WeightedRewards
from unigrpo.shapes.model import ShapesConfig, ShapesModel
from unigrpo.tasks import PromptsTask
from unigrpo.train import Trainer, load_config

PROMPTS = ["a red circle", "two squares the color of grass", "a blue triangle left of a yellow circle",
           "three triangles"]
FAST = ["train.prompts_per_iteration=4", "rollout.num_generations=4", "rollout.num_inference_steps=3",
        "rollout.max_reasoning_tokens=6", "train.minibatch_size=8", "optim.warmup_steps=1"]


def tiny(seed=0):
    torch.manual_seed(seed)
    return ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=48, timestep_embed_dim=16))


def brightness(images, prompts, metadata):
    return images.float().mean(dim=(1, 2, 3)) / 255


def toy_task(reward=brightness):
    return PromptsTask(prompts=PROMPTS, heldout=PROMPTS[:2], rewards=WeightedRewards([("bright", reward, 1.0)]))


def trainer(tmp_path, overrides, reward=brightness, seed=0, **kw):
    cfg = load_config(None, FAST + [f"train.output_dir={tmp_path}"] + overrides)
    return Trainer(cfg, task=toy_task(reward), policy=tiny(seed), progress=False, evaluate=False, **kw)


def stop_after(t: Trainer, iteration: int):
    """``t.train_iteration`` replaced by one that raises KeyboardInterrupt (a kill) once
    ``iteration`` iterations are done; assign the result back to ``t.train_iteration``."""
    step = t.train_iteration

    def run():
        if t.iteration == iteration:
            raise KeyboardInterrupt
        return step()
    return run

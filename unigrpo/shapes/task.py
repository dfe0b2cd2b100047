"""The built-in world as a :class:`unigrpo.task.Task` (``task=shapes``, the default).

Prompts: the seeded train / held-out split (:func:`.split.make_split`, seed
``task.split_seed``), each with its :class:`.spec.Prompt` as metadata. Reward:
the verifier in mode ``task.reward`` (strict | shaped | dense, default shaped),
plus the strict score at weight 0, so the accuracy is logged whatever is
trained on. Batch metrics: strict accuracy per category. Evaluation: the
GenEval-style table of :mod:`.eval` (``task.eval_size`` images per category,
``task.eval_steps`` ODE steps), with an image grid.
"""

from __future__ import annotations

from pathlib import Path

from ..policy import UnifiedPolicy
from ..rewards import RewardFn, WeightedRewards
from ..task import Task, TaskConfig, TaskPrompt, category_means
from . import verifier
from .split import make_split

__all__ = ["ShapesTask", "ShapesReflectTask", "verifier_reward"]

DEFAULT_REWARD = "shaped"


def verifier_reward(mode: str = "strict") -> RewardFn:
    """The verifier as a reward; metadata must hold each round's :class:`.spec.Prompt`.
    Details: the verifier's breakdown."""

    def reward(images, prompts, metadata):
        return verifier.score(images.cpu().numpy(), list(metadata), mode=mode)

    reward.__name__ = f"shapes_{mode}"
    return reward


class ShapesTask(Task):
    name = "shapes"
    #: images per held-out episode at most (evaluation's ``max_rounds``)
    eval_rounds = 1

    def __init__(self, cfg: TaskConfig | None = None) -> None:
        super().__init__(cfg)
        self.mode = self.cfg.reward or DEFAULT_REWARD
        if self.mode not in verifier.MODES:
            raise ValueError(f"task.reward must be one of {verifier.MODES} for task shapes, got {self.mode!r}")
        for key in ("file", "heldout_file"):
            if getattr(self.cfg, key):
                raise ValueError(f"task.{key} is not used by task shapes (its prompts are built in); "
                                 f"use task=prompts for prompts from a file")
        self.split = make_split(self.cfg.split_seed)

    def train_prompts(self) -> list[TaskPrompt]:
        return [TaskPrompt(p.text, p) for p in self.split.train]

    def heldout_prompts(self) -> list[TaskPrompt]:
        return [TaskPrompt(p.text, p) for p in self.split.heldout]

    def rewards(self) -> WeightedRewards:
        extra = [("strict", verifier_reward("strict"), 0.0)] if self.mode != "strict" else []
        return WeightedRewards([(self.mode, verifier_reward(self.mode), 1.0), *extra])

    def batch_metrics(self, batch) -> dict[str, float]:
        strict = batch.reward_components["strict"]
        out = category_means(strict, [m.category for m in batch.metadata], "accuracy/")
        out["accuracy/train_overall"] = float(strict.mean())
        return out

    def evaluate(self, policy: UnifiedPolicy, out_dir: str | Path | None) -> dict[str, float]:
        from .eval import EvalConfig, evaluate

        c = self.cfg
        res = evaluate(EvalConfig(out=None if out_dir is None else str(out_dir), steps=c.eval_steps,
                                  images_per_category=c.eval_size, split_seed=c.split_seed, seed=c.eval_seed,
                                  temperature=c.eval_temperature, guidance_scale=c.eval_guidance_scale,
                                  batch_size=c.eval_batch_size, max_rounds=self.eval_rounds,
                                  grid_per_category=2), policy)
        table = res["modes"]["reasoning"]
        looked = {"first_image_overall": table["first_image_overall"],
                  "rounds_used": table["rounds_used_mean"]} if self.eval_rounds > 1 else {}
        return {"overall": table["overall"], **looked, **table["per_category"]}


class ShapesReflectTask(ShapesTask):
    """``task=shapes-reflect``: the shapes prompts, drawn in up to two rounds. After its first
    image the model looks at it and either ends the episode (``<eos>``) or writes what is
    wrong and the plan again (:mod:`.reflect`), and draws a second image; the verifier
    scores the final one. Batch metrics add the first image's accuracy and the rounds
    used; evaluation reports the final and the first image's accuracy of the same episodes
    (does looking help?) beside drawing without reasoning. Starts from the multi-round warm
    start (``builtin:shapes-reflect-sft``, docs/sft.md)."""

    name = "shapes-reflect"
    config_defaults = {"rollout.max_rounds": "2", "model.checkpoint": "builtin:shapes-reflect-sft"}
    eval_rounds = 2

    def batch_metrics(self, batch) -> dict[str, float]:  # the trainer logs rollout/rounds_used itself
        from .model import latents_to_uint8

        out = super().batch_metrics(batch)
        first = verifier.score(latents_to_uint8(batch.latents[:, 0, -1]).numpy(), list(batch.metadata),
                               mode="strict")[0]
        out["accuracy/first_image"] = float(first.mean())
        return out

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

import numpy as np

from ..policy import UnifiedPolicy
from ..rewards import RewardFn, WeightedRewards
from ..task import Task, TaskConfig, TaskPrompt, category_means
from . import verifier
from .edits import EDIT_KINDS, EditPrompt, edit_split, score_edits
from .split import make_split

__all__ = ["ShapesTask", "ShapesReflectTask", "verifier_reward"]

DEFAULT_REWARD = "shaped"


def verifier_reward(mode: str = "strict") -> RewardFn:
    """The verifier as a reward; metadata must hold each episode's :class:`.spec.Prompt`.
    An :class:`.edits.EditPrompt` is judged on the whole episode (:func:`.edits.score_edits`).
    Details: the verifier's breakdown of the final images."""

    def reward(images, prompts, metadata, episode=None):
        scores, details = verifier.score(images.cpu().numpy(), list(metadata), mode=mode)
        rows = [i for i, m in enumerate(metadata) if isinstance(m, EditPrompt)]
        if rows:
            if episode is None:
                raise ValueError(f"editing prompts (e.g. {metadata[rows[0]].text!r}) are judged on the whole "
                                 f"episode: pass episode= (WeightedRewards does)")
            both = episode.images[rows].numpy()
            second = episode.present[rows, 1:].any(1).numpy()
            judged = score_edits(both[:, 0], images[rows].cpu().numpy(), second, [metadata[i] for i in rows], mode)
            scores[rows] = judged.strict if mode == "strict" else judged.shaped
        return scores, details

    reward.__name__ = f"shapes_{mode}"
    return reward


class ShapesTask(Task):
    name = "shapes"
    #: images per held-out episode at most (evaluation's ``max_rounds``)
    eval_rounds = 1
    #: evaluation also draws every held-out prompt without reasoning (``no_reasoning_overall``)
    eval_without_reasoning = False

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
        modes = ("reasoning", "no_reasoning") if self.eval_without_reasoning else ("reasoning",)
        res = evaluate(EvalConfig(out=None if out_dir is None else str(out_dir), steps=c.eval_steps,
                                  images_per_category=c.eval_size, split_seed=c.split_seed, seed=c.eval_seed,
                                  temperature=c.eval_temperature, guidance_scale=c.eval_guidance_scale,
                                  batch_size=c.eval_batch_size, max_rounds=self.eval_rounds,
                                  edits_per_kind=c.eval_size if self.eval_rounds > 1 else 0,
                                  modes=modes,
                                  grid_per_category=2), policy)
        table = res["modes"]["reasoning"]
        looked = {"first_image_overall": table["first_image_overall"],
                  "rounds_used": table["rounds_used_mean"]} if self.eval_rounds > 1 else {}
        bare = res["modes"].get("no_reasoning")
        bare = {"no_reasoning_overall": bare["overall"]} if bare else {}
        edits = res.get("editing")
        edited = {"editing_overall": edits["overall"], **edits["per_kind"]} if edits else {}
        return {"overall": table["overall"], **looked, **bare, **table["per_category"], **edited}


class ShapesReflectTask(ShapesTask):
    """``task=shapes-reflect``: the shapes prompts, drawn in up to two rounds, and editing
    prompts (:mod:`.edits`: draw a scene, then change one thing in it). After its first
    image the model looks at it and either ends the episode (``<eos>``) or writes what is
    wrong, or what the edit changes, and the plan again (:mod:`.reflect`), and draws a
    second image; the verifier scores the final one, and an edit episode as a whole.
    Training prompts: the shapes ones and a third as many editing ones (equal per kind,
    seeded). Batch metrics add the first image's accuracy (shapes prompts) and the
    rounds used; evaluation reports the final and the first image's accuracy of the same
    episodes (does looking help?), drawing without reasoning, and editing accuracy per
    kind. Starts from the multi-round warm start (``builtin:shapes-reflect-sft``,
    docs/sft.md)."""

    name = "shapes-reflect"
    config_defaults = {"rollout.max_rounds": "2", "model.checkpoint": "builtin:shapes-reflect-sft"}
    eval_rounds = 2
    eval_without_reasoning = True
    #: editing prompts per shapes prompt in training
    edit_share = 1 / 3

    def __init__(self, cfg: TaskConfig | None = None) -> None:
        super().__init__(cfg)
        self.edit_train, self.edit_heldout = edit_split(self.split)

    def train_prompts(self) -> list[TaskPrompt]:
        rng = np.random.default_rng(self.cfg.split_seed)
        per_kind = round(len(self.split.train) * self.edit_share / len(EDIT_KINDS))
        edits = []
        for kind in EDIT_KINDS:
            pool = [p for p in self.edit_train if p.edit.kind == kind]
            edits += [pool[i] for i in sorted(rng.choice(len(pool), size=min(per_kind, len(pool)), replace=False))]
        return super().train_prompts() + [TaskPrompt(p.text, p) for p in edits]

    def heldout_prompts(self) -> list[TaskPrompt]:
        return super().heldout_prompts() + [TaskPrompt(p.text, p) for p in self.edit_heldout]

    def batch_metrics(self, batch) -> dict[str, float]:  # the trainer logs rollout/rounds_used itself
        from .model import latents_to_uint8

        out = super().batch_metrics(batch)
        rows = [i for i, m in enumerate(batch.metadata) if not isinstance(m, EditPrompt)]
        if rows:
            first = verifier.score(latents_to_uint8(batch.latents[rows, 0, -1]).numpy(),
                                   [batch.metadata[i] for i in rows], mode="strict")[0]
            out["accuracy/first_image"] = float(first.mean())
        return out

"""``task=prompts``: your prompts, your rewards, any policy.

    python -m unigrpo.train task=prompts task.file=prompts.jsonl task.reward=brightness \
        model.type=shapes model.checkpoint=builtin:shapes-sft

Prompts come from ``task.file``: a ``.txt`` file (one prompt a line; blank
lines and lines starting with ``#`` skipped) or a ``.jsonl`` file (one object a
line: ``"prompt"`` (or ``"text"``) and any other keys, handed to the rewards as
that prompt's metadata dict). The held-out prompts are ``task.heldout_file``, or
a ``task.heldout_fraction`` of the file chosen with ``task.split_seed``.
Rewards: ``task.reward``, registered rewards with weights
(:func:`unigrpo.rewards.rewards_from_spec`). Evaluation: ``task.eval_size``
held-out prompts (0: all) drawn with the ODE sampler; the metrics are the mean
of each reward component and ``overall``, the mean weighted reward; a captioned
grid and ``results.json`` are written. A metadata key ``category`` also gives
per-category reward means, in rollouts and in evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..images import save_image_grid
from ..io import atomic_write_text
from ..policy import UnifiedPolicy
from ..rewards import WeightedRewards, rewards_from_spec
from ..rollout.inference import sample_images
from ..task import Task, TaskConfig, TaskPrompt, category_means

__all__ = ["PromptsTask", "read_prompts"]

GRID_IMAGES = 24


def read_prompts(path: str | Path, key: str = "task.file") -> list[TaskPrompt]:
    """Prompts of a ``.txt`` or ``.jsonl`` file; errors name ``key``, the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{key}: no such file {str(path)!r}")
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"{key}: {str(path)!r} must be a .txt (one prompt a line) or .jsonl file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or (path.suffix == ".txt" and line.startswith("#")):
            continue
        if path.suffix == ".txt":
            out.append(TaskPrompt(line, {}))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{key}: {path}:{n} is not valid JSON ({e.msg})") from None
        text = row.pop("prompt", row.pop("text", None)) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{key}: {path}:{n} needs a non-empty string \"prompt\" (or \"text\")")
        out.append(TaskPrompt(text, row))
    if not out:
        raise ValueError(f"{key}: {path} holds no prompts")
    return out


def _categories(metadata) -> list:
    return [m.get("category") if isinstance(m, dict) else None for m in metadata]


class PromptsTask(Task):
    """See the module docstring. ``prompts`` / ``heldout`` / ``rewards`` build one in
    code (tests, notebooks) without files."""

    name = "prompts"

    def __init__(self, cfg: TaskConfig | None = None, *, prompts: Sequence[TaskPrompt | str] | None = None,
                 heldout: Sequence[TaskPrompt | str] | None = None, rewards: WeightedRewards | None = None) -> None:
        super().__init__(cfg)
        c = self.cfg
        if prompts is None:
            if not c.file:
                raise ValueError("task.file is required for task prompts (a .txt or .jsonl file of prompts)")
            prompts = read_prompts(c.file)
        prompts = [p if isinstance(p, TaskPrompt) else TaskPrompt(p, {}) for p in prompts]
        if heldout is None and c.heldout_file:
            heldout = read_prompts(c.heldout_file, "task.heldout_file")
        if heldout is None:
            prompts, heldout = self._split(prompts)
        self._train = prompts
        self._heldout = [p if isinstance(p, TaskPrompt) else TaskPrompt(p, {}) for p in heldout]
        self._rewards = rewards if rewards is not None else rewards_from_spec(c.reward, model_dir=c.reward_model)

    def _split(self, prompts: list[TaskPrompt]) -> tuple[list[TaskPrompt], list[TaskPrompt]]:
        k = int(round(self.cfg.heldout_fraction * len(prompts)))
        if k == 0:
            return prompts, []
        if k >= len(prompts):
            raise ValueError(f"task.heldout_fraction {self.cfg.heldout_fraction} leaves no training prompts "
                             f"of {len(prompts)}")
        held = set(np.random.default_rng(self.cfg.split_seed).choice(len(prompts), size=k, replace=False).tolist())
        return ([p for i, p in enumerate(prompts) if i not in held], [p for i, p in enumerate(prompts) if i in held])

    def train_prompts(self) -> list[TaskPrompt]:
        return self._train

    def heldout_prompts(self) -> list[TaskPrompt]:
        return self._heldout

    def rewards(self) -> WeightedRewards:
        return self._rewards

    def batch_metrics(self, batch) -> dict[str, float]:
        return category_means(batch.rewards, _categories(batch.metadata), "reward_by_category/")

    def evaluate(self, policy: UnifiedPolicy, out_dir: str | Path | None) -> dict[str, float]:
        c = self.cfg
        prompts = self._heldout[: c.eval_size or None]
        if not prompts:
            raise ValueError("task prompts has no held-out prompts to evaluate: set task.heldout_fraction > 0 or "
                             "task.heldout_file")
        texts, meta = [p.text for p in prompts], [p.metadata for p in prompts]
        images, reasonings, _ = sample_images(policy, texts, steps=c.eval_steps, temperature=c.eval_temperature,
                                              seed=c.eval_seed, guidance_scale=c.eval_guidance_scale,
                                              batch_size=c.eval_batch_size)
        result = self._rewards(images, texts, meta)
        metrics = {"overall": float(result.total.mean()),
                   **{f"reward/{k}": float(v.mean()) for k, v in result.components.items()},
                   **category_means(result.total, _categories(meta), "by_category/")}
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            samples = [{"prompt": t, "reasoning": r, "reward": float(s)}
                       for t, r, s in zip(texts, reasonings, result.total)]
            atomic_write_text(out / "results.json", json.dumps({"metrics": metrics, "samples": samples}, indent=2))
            n = min(GRID_IMAGES, len(texts))
            save_image_grid(out / "samples.png", images[:n],
                            [f"[{float(s):.2f}] {t}" for t, s in zip(texts[:n], result.total[:n])], cols=6)
        return metrics

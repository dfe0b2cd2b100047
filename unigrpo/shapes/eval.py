"""GenEval-style evaluation of a checkpoint on held-out shapes prompts.

Per prompt: reasoning sampled at ``--temperature`` (default 1.0, seeded; 0 is
greedy), then deterministic ODE sampling (Euler steps: :func:`unigrpo.rollout.inference.sample_images`,
with noise level 0 on the shifted sigma schedule), then the verifier's strict
score.  Why T = 1 by default: a plan's cells are free choices the prompt
does not fix, and greedy decoding collapses them onto the single most likely
cells (every plan in the top-left corner, objects in adjacent cells), an
input the image model never saw that often; T = 1 draws plans as training
did and as RL rollouts will, so it measures the policy RL starts from.  Prints a table (accuracy
per category, GenEval overall = mean over categories), writes
``results.json`` and ``samples.png`` (a captioned grid).

``--no-reasoning`` draws from the bare prompt (the reasoning left out);
``--both`` runs both modes on the same prompts and the same initial noise,
the "reasoning helps" comparison::

    python -m unigrpo.eval --both            # the shipped SFT checkpoint

``--max-rounds 2`` lets the model look at its image and redraw (the final image is
scored, and the first image of the same episodes beside it); ``--edits-per-kind N`` adds
N held-out editing episodes of each kind (:mod:`.edits`), judged as a whole::

    python -m unigrpo.eval --checkpoint builtin:shapes-reflect-sft --both --max-rounds 2 --edits-per-kind 24
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..cli import ArgumentParser, RUN_ERRORS, SETUP_ERRORS, attempt
from ..config_bounds import add_flags, bounded, check_bounds, flag
from ..images import save_image_grid
from ..io import atomic_write_text
from ..policy import UnifiedPolicy
from ..rollout.inference import sample_episodes
from ..train.checkpointing import resolve_policy_dir
from . import (CATEGORIES, GENEVAL_CATEGORIES, REASONING_CATEGORIES, Prompt, extract_plan, make_split,
               plan_satisfies, score)
from .edits import EDIT_CATEGORIES, edit_split, score_edits
from .model import SFT_CHECKPOINT, ShapesModel, builtin_checkpoint
from .vocab import END_THINK, THINK

__all__ = ["EvalConfig", "select_prompts", "evaluate", "format_table", "main", "DEFAULT_CHECKPOINT"]

DEFAULT_CHECKPOINT = SFT_CHECKPOINT
MODES = ("reasoning", "no_reasoning")
PROG = "python -m unigrpo.eval"


@dataclass
class EvalConfig:
    """``checkpoint``: a model directory, a training run (its latest checkpoint), a
    ``checkpoint-*`` directory or the ``policy/`` in one."""

    checkpoint: str = str(DEFAULT_CHECKPOINT)
    out: str | None = None
    steps: int = bounded(40, ge=1, help="Euler (ODE) denoising steps")
    modes: tuple[str, ...] = ("reasoning",)
    images_per_category: int = bounded(24, ge=1)
    split: str = "heldout"
    split_seed: int = bounded(0, ge=0)
    seed: int = bounded(0, ge=0)
    temperature: float = bounded(1.0, ge=0, help="reasoning temperature (0: greedy)")
    guidance_scale: float = bounded(1.0, ge=1, help="classifier-free guidance against the empty prompt (1: none)")
    max_new_tokens: int = bounded(48, ge=1)
    batch_size: int = bounded(128, ge=1)
    grid_per_category: int = bounded(3, ge=0)
    max_rounds: int = bounded(1, ge=1, help="images per episode with reasoning: > 1 looks, reflects and redraws")
    edits_per_kind: int = bounded(0, ge=0, help="editing episodes per edit kind (needs --max-rounds >= 2; 0: none)")
    threads: int = bounded(0, ge=0, help="torch threads (0: torch's default)")

    def validate(self) -> None:
        check_bounds(self, flag)
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {m!r}")
        if self.split not in ("heldout", "train"):
            raise ValueError(f"--split must be 'heldout' or 'train', got {self.split!r}")
        if self.edits_per_kind and (self.max_rounds < 2 or "reasoning" not in self.modes):
            raise ValueError(f"--edits-per-kind {self.edits_per_kind} needs --max-rounds >= 2 with reasoning (an "
                             f"edit is drawn in two images), got --max-rounds {self.max_rounds}")


def load_checkpoint(path: str | Path) -> tuple[ShapesModel, str]:
    """The policy a run, checkpoint, ``policy/`` or model directory holds, verified (or a
    built-in one, ``builtin:NAME``), and a phrase saying which directory was used."""
    if str(path).startswith("builtin:"):
        return ShapesModel.from_pretrained(builtin_checkpoint(str(path), "--checkpoint")), str(path)
    policy_dir, which = resolve_policy_dir(path)
    return ShapesModel.from_pretrained(policy_dir), which


def select_prompts(prompts: Sequence[Prompt], per_category: int, seed: int = 0,
                   categories: Sequence[str] = CATEGORIES) -> list[Prompt]:
    """``per_category`` prompts of every category of ``categories`` present, in a seeded order,
    cycling through a category's prompts when it has fewer (so a 1-prompt
    category is judged on ``per_category`` samples, as GenEval samples 4 per
    prompt).  Deterministic."""
    rng = np.random.default_rng(seed)
    out: list[Prompt] = []
    for cat in categories:
        pool = [p for p in prompts if p.category == cat]
        if not pool:
            continue
        order = rng.permutation(len(pool))
        out.extend(pool[order[i % len(pool)]] for i in range(per_category))
    return out


def _accuracy_table(cats: list[str], strict: np.ndarray) -> dict:
    per = {c: float(strict[[i for i, k in enumerate(cats) if k == c]].mean()) for c in CATEGORIES if c in cats}
    geneval = [per[c] for c in GENEVAL_CATEGORIES if c in per]
    reasoning = [per[c] for c in REASONING_CATEGORIES if c in per]
    return {"per_category": per, "overall": float(np.mean(list(per.values()))),
            "geneval_overall": float(np.mean(geneval)) if geneval else None,
            "reasoning_overall": float(np.mean(reasoning)) if reasoning else None,
            "mean_over_images": float(strict.mean())}


def evaluate(cfg: EvalConfig, policy: UnifiedPolicy | None = None) -> dict:
    """Run the evaluation; returns the results dict (also written to ``out``)."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    policy = load_checkpoint(cfg.checkpoint)[0] if policy is None else policy
    policy.eval()
    split = make_split(cfg.split_seed)
    prompts = select_prompts(getattr(split, cfg.split), cfg.images_per_category, cfg.seed)
    texts = [p.text for p in prompts]
    cats = [p.category for p in prompts]
    results: dict = {"config": asdict(cfg), "num_images": len(prompts), "modes": {},
                     "categories_without_prompts": [c for c in CATEGORIES if c not in cats]}
    grids = {}
    for mode in cfg.modes:
        t0 = time.perf_counter()
        episodes = sample_episodes(
            policy, texts, max_rounds=cfg.max_rounds if mode == "reasoning" else 1, reasoning=mode == "reasoning",
            steps=cfg.steps, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
            batch_size=cfg.batch_size, guidance_scale=cfg.guidance_scale)
        images, reasonings, truncated = episodes.images, episodes.texts, episodes.truncated
        strict, breakdown = score(images, prompts, "strict")
        shaped = breakdown.shaped
        plan_ok = []
        for p, r in zip(prompts, reasonings):
            if mode == "reasoning" and THINK not in r.split():
                r = f"{THINK} {r}"  # the think-mode prompt already opened the span
            plan, _ = extract_plan(r) if mode == "reasoning" else (None, None)
            plan_ok.append(bool(plan is not None and plan_satisfies(plan, p)))
        table = _accuracy_table(cats, strict)
        table["shaped_overall"] = float(shaped.mean())
        if mode == "reasoning":
            table["plan_accuracy"] = float(np.mean(plan_ok))
            table["plan_accuracy_per_category"] = {c: float(np.mean([o for o, k in zip(plan_ok, cats) if k == c]))
                                                   for c in table["per_category"]}
            table["truncated"] = int(np.sum(truncated))
            if cfg.max_rounds > 1:  # the same episodes' first images: does looking help?
                first = score(episodes.round_images[:, 0], prompts, "strict")[0]
                table["first_image_overall"] = _accuracy_table(cats, first)["overall"]
                table["rounds_used_mean"] = float(episodes.rounds_used.float().mean())
                table["looking"] = looking_outcomes(first, strict, episodes.rounds_used.numpy() > 1)
                grids["rounds"] = (episodes, strict, texts, cats)
        table["seconds"] = time.perf_counter() - t0
        table["samples"] = [{"prompt": p.text, "category": p.category, "reasoning": r, "strict": float(s),
                             "shaped": float(sh), "plan_ok": ok if mode == "reasoning" else None}
                            for p, r, s, sh, ok in zip(prompts, reasonings, strict, shaped, plan_ok)]
        results["modes"][mode] = table
        grids[mode] = (images, strict)
    if cfg.edits_per_kind:
        results["editing"], grids["edits"] = _evaluate_edits(cfg, policy, split)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
        pick = _grid_indices(cats, cfg.grid_per_category)
        for mode, grid in grids.items():
            if mode in ("rounds", "edits"):  # image 1 beside image 2, captioned with the reflection between them
                ep, strict, shown, shown_cats = grid
                rows = _grid_indices(shown_cats, cfg.grid_per_category,
                                     EDIT_CATEGORIES if mode == "edits" else CATEGORIES)
                caps = [c for i in rows for c in (f"{shown[i]}", f"[{'ok' if strict[i] else 'x'}] "
                                                  f"{_after_looking(ep.texts[i])}")]
                save_image_grid(out / f"samples_{mode}.png", ep.round_images[rows].flatten(0, 1), caps, cols=6)
                continue
            images, strict = grid
            caps = [f"[{'ok' if strict[i] else 'x'}] {texts[i]}" for i in pick]
            save_image_grid(out / f"samples_{mode}.png", images[pick], caps, cols=6)
    return results


def looking_outcomes(first, final, redrew) -> dict[str, int]:
    """How many episodes ended each way, by whether the first image passed, whether the model
    drew again after looking, and whether the final image passed: what looking is worth."""
    first, final, redrew = (np.asarray(a, dtype=bool) for a in (first, final, redrew))
    return {"right_stopped": int((first & ~redrew).sum()), "wrong_stopped": int((~first & ~redrew).sum()),
            "wrong_redrawn_wrong": int((~first & redrew & ~final).sum()), "fixed": int((~first & redrew & final).sum()),
            "spoiled": int((first & redrew & ~final).sum()), "right_redrawn_right": int((first & redrew & final).sum())}


def _evaluate_edits(cfg: EvalConfig, policy: UnifiedPolicy, split) -> tuple[dict, tuple]:
    """Editing episodes (``cfg.edits_per_kind`` of each kind, from the split's part), judged
    whole by :func:`.edits.score_edits`: results and what the grid needs."""
    t0 = time.perf_counter()
    train, held = edit_split(split)
    prompts = select_prompts(held if cfg.split == "heldout" else train, cfg.edits_per_kind, cfg.seed,
                             EDIT_CATEGORIES)
    texts, cats = [p.text for p in prompts], [p.category for p in prompts]
    ep = sample_episodes(policy, texts, max_rounds=cfg.max_rounds, steps=cfg.steps, temperature=cfg.temperature,
                         max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size,
                         guidance_scale=cfg.guidance_scale)
    two = (ep.rounds_used >= 2).numpy()
    judged = score_edits(ep.round_images[:, 0], ep.images, two, prompts)
    per = {c: float(judged.strict[[i for i, k in enumerate(cats) if k == c]].mean()) for c in EDIT_CATEGORIES
           if c in cats}
    table = {"per_kind": per, "overall": float(np.mean(list(per.values()))),
             "scene_right": float(judged.before.mean()), "edited_right": float(judged.after[two].mean()) if two.any()
             else 0.0, "kept": float(judged.kept[two].mean()) if two.any() else 0.0,
             "rounds_used_mean": float(ep.rounds_used.float().mean()), "seconds": time.perf_counter() - t0,
             "samples": [{"prompt": t, "category": c, "reasoning": r, "strict": float(s), "scene": float(b),
                          "edited": float(a), "kept": float(k)}
                         for t, c, r, s, b, a, k in zip(texts, cats, ep.texts, judged.strict, judged.before,
                                                        judged.after, judged.kept)]}
    return table, (ep, judged.strict, texts, cats)


def _after_looking(text: str) -> str:
    """What the model wrote after its first image (the text after the first ``</think>``)."""
    words = text.split()
    return " ".join(words[words.index(END_THINK) + 1:]) if END_THINK in words else ""


def _grid_indices(cats: list[str], per_category: int, categories: Sequence[str] = CATEGORIES) -> list[int]:
    out = []
    for c in categories:
        out += [i for i, k in enumerate(cats) if k == c][:per_category]
    return out


def format_table(results: dict) -> str:
    """GenEval-style text table: one row per category, one column per mode."""
    modes = list(results["modes"])
    cats = list(next(iter(results["modes"].values()))["per_category"])
    counts = {c: sum(1 for s in next(iter(results["modes"].values()))["samples"] if s["category"] == c) for c in cats}
    head = f"{'category':<16}{'n':>5}" + "".join(f"{m:>15}" for m in modes)
    lines = [head, "-" * len(head)]
    for c in cats:
        tag = "*" if c in REASONING_CATEGORIES else " "
        lines.append(f"{c + tag:<16}{counts[c]:>5}" + "".join(f"{results['modes'][m]['per_category'][c]:>15.3f}"
                                                            for m in modes))
    lines.append("-" * len(head))
    for key, name in (("geneval_overall", "geneval cats"), ("reasoning_overall", "reasoning cats*"),
                      ("overall", "overall")):
        vals = [results["modes"][m][key] for m in modes]
        lines.append(f"{name:<16}{'':>5}" + "".join(f"{v:>15.3f}" if v is not None else f"{'-':>15}" for v in vals))
    if results.get("categories_without_prompts"):
        lines.append(f"(no {cfg_split(results)} prompts: {', '.join(results['categories_without_prompts'])})")
    if "reasoning" in results["modes"]:
        lines.append(f"{'plan accuracy':<16}{'':>5}" + "".join(
            f"{results['modes'][m]['plan_accuracy']:>15.3f}" if m == "reasoning" else f"{'-':>15}" for m in modes))
        looked = results["modes"]["reasoning"]
        if "first_image_overall" in looked:
            lines.append(f"{'first image':<16}{'':>5}" + "".join(
                f"{looked['first_image_overall']:>15.3f}" if m == "reasoning" else f"{'-':>15}" for m in modes))
            lines.append(f"{'rounds used':<16}{'':>5}" + "".join(
                f"{looked['rounds_used_mean']:>15.3f}" if m == "reasoning" else f"{'-':>15}" for m in modes))
            o = looked["looking"]
            lines.append("after looking: first image right -> {} stopped, {} redrawn right, {} spoiled; wrong -> "
                         "{} stopped, {} fixed, {} redrawn wrong".format(
                             o["right_stopped"], o["right_redrawn_right"], o["spoiled"], o["wrong_stopped"],
                             o["fixed"], o["wrong_redrawn_wrong"]))
    if "editing" in results:
        ed = results["editing"]
        n = {c: sum(1 for s in ed["samples"] if s["category"] == c) for c in ed["per_kind"]}
        lines.append("-" * len(head))
        lines += [f"{c:<16}{n[c]:>5}{v:>15.3f}" for c, v in ed["per_kind"].items()]
        lines.append(f"{'editing':<16}{'':>5}{ed['overall']:>15.3f}   (scene right {ed['scene_right']:.3f}, "
                     f"edit right {ed['edited_right']:.3f} and rest kept {ed['kept']:.3f} of two-image "
                     f"episodes, {ed['rounds_used_mean']:.2f} images per episode)")
    return "\n".join(lines)


def cfg_split(results: dict) -> str:
    return results.get("config", {}).get("split", "heldout")


def _parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=d.checkpoint,
                   help="a model directory, a training run (its latest checkpoint), a checkpoint-* directory, "
                        "the policy/ in one, or builtin:shapes-sft / builtin:shapes-reflect-sft")
    p.add_argument("--out", default=None, help="directory for results.json and samples_<mode>.png")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-reasoning", action="store_true", help="draw from the bare prompt (reasoning left out)")
    g.add_argument("--both", action="store_true", help="run with and without reasoning, paired")
    p.add_argument("--split", choices=("heldout", "train"), default=d.split)
    add_flags(p, d, ["steps", "images_per_category", "split_seed", "seed", "temperature", "guidance_scale",
                     "max_new_tokens", "batch_size", "threads", "max_rounds", "edits_per_kind"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    modes = ("reasoning", "no_reasoning") if a.both else (("no_reasoning",) if a.no_reasoning else ("reasoning",))
    cfg = EvalConfig(checkpoint=a.checkpoint, out=a.out, steps=a.steps, modes=modes,
                     images_per_category=a.images_per_category, split=a.split, split_seed=a.split_seed, seed=a.seed,
                     temperature=a.temperature, guidance_scale=a.guidance_scale, max_new_tokens=a.max_new_tokens,
                     batch_size=a.batch_size, threads=a.threads, max_rounds=a.max_rounds,
                     edits_per_kind=a.edits_per_kind)
    def setup() -> ShapesModel:
        cfg.validate()
        policy, which = load_checkpoint(cfg.checkpoint)
        print(f"evaluating {which}", file=sys.stderr)
        return policy

    policy, code = attempt(setup, SETUP_ERRORS, PROG)
    if code:
        return code
    t0 = time.perf_counter()
    results, code = attempt(lambda: evaluate(cfg, policy), RUN_ERRORS, PROG)
    if code:
        return code
    print(format_table(results))
    print(f"{results['num_images']} images per mode, {cfg.steps} ODE steps, {time.perf_counter() - t0:.1f} s"
          + (f"; wrote {cfg.out}/results.json and samples_*.png" if cfg.out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The paper's ablations on the built-in task, each run with the same budget:

    python -m unigrpo.ablate --iterations 40 --out runs/ablate

joint vs text-only vs image-only training; velocity-MSE vs latent-KL vs no
penalty; no-CFG vs CFG rollouts; with ``task=shapes-reflect``, two-round vs
single-round training of the same model (and the images per episode before and
after). Writes ``ablations.md`` (and .json): held-out accuracy (ODE, strict), wall time, and a measure of reward hacking the reward
does not see — the drift of the images from the reference policy's, drawn
from the same bare prompts and the same noise (mean absolute pixel difference,
0-255; a policy that games the verifier moves its images far from the
distribution it started from).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from ..cli import ArgumentParser, RUN_ERRORS, SETUP_ERRORS, attempt, fail
from ..config_bounds import flag
from ..io import atomic_write_text

PROG = "python -m unigrpo.ablate"

VARIANTS: dict[str, list[str]] = {
    "joint (UniGRPO)": [],
    "text-only": ["loss.train_image=false"],
    "image-only": ["loss.train_text=false"],
    # FlowGRPO's KL is velocity MSE times cv^2 / (2 s^2): 6e-4 on average over the default trained
    # window (K=10, a=0.7, shift 3), so 1.6 gives it the default 1e-3's mean weight
    "latent KL instead of velocity MSE": ["loss.image_penalty=latent_kl", "loss.beta_v=1.6"],
    "no image penalty": ["loss.image_penalty=none"],
    "CFG rollouts (w=3)": ["rollout.guidance_scale=3.0"],
    # with task=shapes-reflect (two rounds by default): the same model trained on its first round
    # only; evaluation still lets it look and redraw
    "single-round training": ["rollout.max_rounds=1"],
}


def image_drift(policy, ref, texts: list[str], steps: int, seed: int = 0) -> float:
    """Mean |image_policy - image_ref| (0-255) from the same bare prompts and noise."""
    from ..rollout.inference import sample_images

    a, _, _ = sample_images(policy, texts, reasoning=False, steps=steps, seed=seed)
    b, _, _ = sample_images(ref, texts, reasoning=False, steps=steps, seed=seed)
    return float((a.float() - b.float()).abs().mean())


def _reward_trend(history: list[dict], key: str = "reward/mean") -> dict:
    """Mean training reward over the first and the last quarter of the iterations
    (less noisy than any one held-out evaluation at this budget)."""
    r = [h[key] for h in history if key in h]
    q = max(1, len(r) // 4)
    return {"train_reward_first": sum(r[:q]) / q if r else None,
            "train_reward_final": sum(r[-q:]) / q if r else None}


def variant_config(name: str, overrides: list[str], base: list[str], out: Path):
    """The training config of one variant, its run in ``out/<variant slug>``."""
    from ..train import load_config

    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return load_config(None, base + overrides + [f"train.output_dir={out / slug}"])


#: the held-out metrics a multi-round task adds (row key: (eval metric, column header))
MULTI_ROUND_COLUMNS = {"first": ("first_image_overall", "first image"),
                       "rounds": ("rounds_used", "images per episode"),
                       "editing": ("editing_overall", "editing")}


def run_variant(name: str, overrides: list[str], base: list[str], out: Path, drift_texts: list[str],
                policy_factory=None, task=None, progress: bool = True, evaluate: bool = True,
                before: dict | None = None) -> dict:
    """Train one variant; ``before``: the start checkpoint's held-out evaluation when an
    earlier variant already made it (every variant starts from the same weights).
    ``policy_factory`` / ``task``: instead of the config's (tests)."""
    from ..train import Trainer

    cfg = variant_config(name, overrides, base, out)
    shutil.rmtree(cfg.train.output_dir, ignore_errors=True)  # a variant's run is ablate's own output: redone
    trainer = Trainer(cfg, task=task, policy=None if policy_factory is None else policy_factory(),
                      progress=progress, evaluate=evaluate)
    history = trainer.fit(initial_eval=before)
    wall = sum(h.get("train/iteration_s", 0.0) for h in history)  # training alone, not the evaluations
    evals = [h for h in history if "eval/overall" in h]
    return {"variant": name, "overrides": overrides, "wall_s": wall,
            "eval_before": {k: v for k, v in evals[0].items() if k != "iteration"} if evals else None,
            "heldout_before": evals[0]["eval/overall"] if evals else None,
            "heldout_after": evals[-1]["eval/overall"] if evals else None,
            # multi-round tasks: first-image accuracy, images per episode and editing, before and after
            **{f"{key}_{when}": evals[i].get(f"eval/{metric}") if evals else None
               for key, (metric, _) in MULTI_ROUND_COLUMNS.items() for when, i in (("before", 0), ("after", -1))},
            "train_reward_last": next((h["reward/mean"] for h in reversed(history) if "reward/mean" in h), None),
            **_reward_trend(history),
            "image_drift": image_drift(trainer.policy, trainer.ref, drift_texts, cfg.task.eval_steps)}


def to_markdown(rows: list[dict], budget: str) -> str:
    def f(x, pct=False):
        return "-" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:.3g}")

    extra = [k for k in MULTI_ROUND_COLUMNS if any(r.get(f"{k}_before") is not None for r in rows)]
    lines = [f"Budget per variant: {budget}.", "",
             "| variant | held-out acc. before | after | train reward, first -> last quarter "
             "| image drift vs reference (0-255) | training wall time (s) |"
             + "".join(f" {MULTI_ROUND_COLUMNS[k][1]}, before -> after |" for k in extra),
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(extra)]
    for r in rows:
        lines.append(f"| {r['variant']} | {f(r['heldout_before'], True)} | {f(r['heldout_after'], True)} | "
                     f"{f(r.get('train_reward_first'))} -> {f(r.get('train_reward_final'))} | "
                     f"{f(r['image_drift'])} | {r['wall_s']:.1f} |"
                     + "".join(f" {f(r.get(f'{k}_before'))} -> {f(r.get(f'{k}_after'))} |" for k in extra))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=40, help="training iterations per variant (the budget)")
    p.add_argument("--eval-images", type=int, default=24,
                   help="held-out images per category before and after (24: the unigrpo.eval default)")
    p.add_argument("--out", default="runs/ablate")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), help="a subset of: " + "; ".join(VARIANTS))
    p.add_argument("overrides", nargs="*", help="config overrides applied to every variant")
    args = p.parse_intermixed_args(argv)
    for name in ("iterations", "eval_images"):
        if getattr(args, name) < 1:
            return fail(f"{flag(name)} must be >= 1, got {getattr(args, name)}", PROG)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        return fail(f"--variants: unknown {unknown}; valid: {list(VARIANTS)}", PROG)
    from . import make_split

    out = Path(args.out)
    base = [f"train.iterations={args.iterations}", f"train.eval_every={args.iterations}",
            f"train.save_every={args.iterations}", f"task.eval_size={args.eval_images}"]
    base += args.overrides

    def setup() -> None:  # every variant's config is checked before the first one trains
        for name in args.variants:
            variant_config(name, VARIANTS[name], base, out)
        out.mkdir(parents=True, exist_ok=True)

    _, code = attempt(setup, SETUP_ERRORS, PROG)
    if code:
        return code
    drift_texts = [q.text for q in make_split(0).heldout[::10]]
    rows = []

    def run() -> None:
        for name in args.variants:  # the first variant evaluates the start checkpoint, the rest reuse it
            rows.append(run_variant(name, VARIANTS[name], base, out, drift_texts,
                                    before=rows[0]["eval_before"] if rows else None))
            atomic_write_text(out / "ablations.json", json.dumps(rows, indent=2))
            atomic_write_text(out / "ablations.md", to_markdown(rows, f"{args.iterations} iterations, " + " ".join(base)))

    _, code = attempt(run, RUN_ERRORS, PROG)
    if code:
        return code
    print((out / "ablations.md").read_text())
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    sys.exit(main())

"""Supervised warm start of the built-in model on generated shapes data.

Each example is one packed sequence ``<bos> prompt <think> plan </think>
<image> [64 patches]`` where ``plan`` is :func:`canonical_plan` of a training
prompt and the image is the renderer's drawing of that plan.  Loss = LM loss
(mean cross-entropy of the reasoning tokens, ``</think>`` included) +
flow-matching loss (mean squared error of the velocity ``noise - x_0`` at
logit-normal noise levels with the model's timestep shift, 3 as in Bagel).

A fraction ``drop_reasoning`` of examples (default 0.1) leave the reasoning
out (``<bos> prompt <image>``): without it the bare-prompt mode that the
"reasoning helps" ablation compares against would be a context the model
never saw, and would score ~0 for that reason alone rather than for lack of
reasoning.

Deterministic for a seed (data, init, noise) on a fixed number of threads.
The shipped checkpoint (docs/sft.md)::

    python -m unigrpo.sft --out unigrpo/shapes/assets/shapes-sft --steps 3000 --bf16 --threads 1 --seed 0

With ``--reflect`` > 0 the examples are episodes that may look at their image and
reflect (:func:`make_episode_batch`), trained in the interleaved sequence
(:func:`episode_losses`); docs/sft.md has the command of the multi-round warm start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from .. import ops
from ..cli import ArgumentParser, RUN_ERRORS, SETUP_ERRORS, attempt
from ..config_bounds import add_flags, bounded, check_bounds, flag
from ..schedule import sample_training_sigmas
from ..policy import SeenImages
from ..task import ModelConfig, resolve_device
from .model import ShapesConfig, ShapesModel, build_tokenizer, load_policy
from . import CATEGORIES, Prompt, format_reasoning, make_split, render_plans
from .plan import Plan, canonical_plan, default_plan, extract_plan
from ..rollout.denoise import denoise
from .edits import EditPrompt, edit_split
from .reflect import flawed_plan, reflection, seen_objects
from .segment import detect
from .verifier import score
from .vocab import BOS, END_THINK, EOS

PROG = "python -m unigrpo.sft"

__all__ = ["SFTConfig", "SFTBatch", "EpisodeBatch", "OwnDrawing", "make_batch", "make_episode_batch", "edit_episode",
           "own_drawings", "sft_losses", "episode_losses", "build_model", "param_groups", "train", "main"]


@dataclass
class SFTConfig:
    """Everything a run depends on (saved as ``sft_config.json`` in the output)."""

    out: str
    steps: int = bounded(3000, ge=1)
    batch_size: int = bounded(32, ge=1)
    lr: float = bounded(1e-3, gt=0)
    lr_image: float = bounded(0.0, ge=0)
    min_lr: float = bounded(1e-4, ge=0)
    warmup_steps: int = bounded(100, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    grad_clip: float = bounded(1.0, gt=0)
    seed: int = bounded(0, ge=0)
    split_seed: int = bounded(0, ge=0)
    drop_reasoning: float = bounded(0.1, ge=0, le=1)
    default_layout: bool = False
    lm_weight: float = bounded(1.0, ge=0)
    flow_weight: float = bounded(1.0, ge=0)
    balance_categories: bool = True
    # multi-round warm start: a share of the examples look at their image and reflect (docs/sft.md)
    reflect: float = bounded(0.0, ge=0, le=1)
    flawed: float = bounded(0.5, ge=0, le=1)
    own: float = bounded(0.0, ge=0, le=1)
    own_pool: int = bounded(2000, ge=1)
    edit: float = bounded(0.0, ge=0, le=1)
    init: str = ""
    # model shape (ShapesConfig checks how the sizes fit together)
    hidden_size: int = bounded(192, ge=1)
    num_hidden_layers: int = bounded(4, ge=1)
    num_attention_heads: int = bounded(4, ge=1)
    intermediate_size: int = bounded(512, ge=1)
    image_expert: bool = True
    timestep_shift: float = bounded(3.0, gt=0)
    # bookkeeping
    bf16: bool = False
    device: str = "cpu"
    save_every: int = bounded(0, ge=0)
    threads: int = bounded(0, ge=0)
    progress: bool = True

    def __post_init__(self) -> None:
        check_bounds(self, flag)


@dataclass
class SFTBatch:
    """``texts``: B strings ``<bos> prompt [<think> plan </think>]``; ``images``:
    uint8 (B, 32, 32, 3) renders of the plans; ``reasoning``: bool (B,) whether
    the reasoning was kept; ``prompts``: the B prompts."""

    texts: list[str]
    images: np.ndarray
    reasoning: np.ndarray
    prompts: list[Prompt]


def make_batch(rng: np.random.Generator, prompts: Sequence[Prompt], batch_size: int,
               drop_reasoning: float = 0.0, exclude_pairs=(), balance_categories: bool = True,
               image_size: int = 32, default_layout: bool = False) -> SFTBatch:
    """Draw a training batch: a category uniformly (``balance_categories``) then a
    prompt of it uniformly (else a prompt uniformly), a random canonical plan,
    its render (size/offset jitter), and the reasoning kept with probability
    ``1 - drop_reasoning``; with ``default_layout`` an example without reasoning shows
    the prompt's :func:`.plan.default_plan` instead (re-rendered, so that the random
    stream of the other examples is unchanged).  Deterministic given ``rng``'s state."""
    if balance_categories:
        by_cat = {c: [p for p in prompts if p.category == c] for c in CATEGORIES}
        cats = [c for c in CATEGORIES if by_cat[c]]
        picks = []
        for _ in range(batch_size):
            pool = by_cat[cats[rng.integers(len(cats))]]
            picks.append(pool[rng.integers(len(pool))])
    else:
        picks = [prompts[i] for i in rng.integers(len(prompts), size=batch_size)]
    plans = [canonical_plan(p, rng, exclude_pairs) for p in picks]
    images = render_plans(plans, rng, image_size)
    keep = rng.random(batch_size) >= drop_reasoning
    if default_layout and not keep.all():
        drop = np.flatnonzero(~keep)
        images[drop] = render_plans([default_plan(picks[i], exclude_pairs) for i in drop], rng, image_size)
    texts = [f"{BOS} {p.text} {format_reasoning(plan)}" if k else f"{BOS} {p.text}"
             for p, plan, k in zip(picks, plans, keep)]
    return SFTBatch(texts, images, keep, picks)


@dataclass
class EpisodeBatch:
    """Examples with up to two images each, for the interleaved warm start. ``texts``: every
    turn's words; ``images`` uint8 (B, 2, H, W, 3); ``slots`` int (B, 2): how many words
    of the text come before image r; ``present`` / ``trained`` bool (B, 2): which images
    exist, and which are denoising targets (a deliberately flawed first image is not)."""

    texts: list[str]
    images: np.ndarray
    slots: np.ndarray
    present: np.ndarray
    trained: np.ndarray


@dataclass
class OwnDrawing:
    """A first image the model drew itself from a right plan (``text``: ``<bos> prompt <think>
    plan </think>``) and the turn it should write after looking (``<eos>``, or what the
    verifier's detector finds wrong and the plan again); ``plan`` is the right plan."""

    text: str
    plan: Plan
    image: np.ndarray
    reflection: str


@torch.no_grad()
def own_drawings(model: ShapesModel, prompts: Sequence[Prompt], n: int, rng: np.random.Generator,
                 exclude_pairs=(), steps: int = 20, batch_size: int = 128) -> list[OwnDrawing]:
    """``n`` images the model draws (ODE, ``steps``) from right plans of random ``prompts``, each
    with its grounded reflection. Kept: drawings the verifier passes and the detector finds
    exactly planned (``<eos>``), and drawings the detector finds something wrong in (a
    diagnosis); a failed drawing with every planned object found (a wrong cell, say) is left
    out, its diagnosis would be empty."""
    picks = [prompts[i] for i in rng.integers(len(prompts), size=n)]
    plans = [canonical_plan(p, rng, exclude_pairs) for p in picks]
    texts = [f"{BOS} {p.text} {format_reasoning(plan)}" for p, plan in zip(picks, plans)]
    noise = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    sigmas = model.sigma_schedule(steps)
    was_training = model.training
    model.eval()
    images = []
    for start in range(0, n, batch_size):
        tokens = model.encode_texts(texts[start:start + batch_size])
        x1 = torch.randn((tokens.ids.shape[0], *model.latent_shape), generator=noise).to(model.device)
        traj = denoise(model, model.image_context(tokens.ids, tokens.mask), sigmas, 0.0, x1, None, record=False)
        images.append(model.latents_to_images(traj.latents[:, -1]))
    model.train(was_training)
    images = torch.cat(images).numpy()
    strict = score(images, picks, "strict")[0]
    found = detect(images)
    out = []
    for j, (text, plan) in enumerate(zip(texts, plans)):
        turn = reflection(seen_objects(found, j), plan)
        if (turn == EOS) == bool(strict[j]):
            out.append(OwnDrawing(text, plan, images[j], turn))
    return out


def edit_episode(rng: np.random.Generator, prompt: EditPrompt, exclude_pairs=()) -> tuple[str, Plan, Plan]:
    """An editing episode's words and plans: ``<bos> prompt <think> scene plan </think>
    <diagnosis> ; edited plan </think>`` (the reflection against the edited plan is the
    edit), the scene's plan and the edited one. A scene whose free colour already is the
    edit's is re-planned, so the second image always shows a change."""
    for _ in range(100):
        scene = canonical_plan(prompt.scene, rng, exclude_pairs)
        edited = prompt.edit.on_plan(scene, prompt.scene.constraints, rng)
        turn = reflection(scene, edited)
        if turn != EOS:
            return f"{BOS} {prompt.text} {format_reasoning(scene)} {turn}", scene, edited
    raise ValueError(f"no plan of {prompt.text!r} that the edit changes")


def make_episode_batch(rng: np.random.Generator, prompts: Sequence[Prompt], batch_size: int,
                       drop_reasoning: float, reflect: float, flawed: float, exclude_pairs=(),
                       balance_categories: bool = True, image_size: int = 32,
                       own: float = 0.0, pool: Sequence[OwnDrawing] = (), edit: float = 0.0,
                       edits: Sequence[EditPrompt] = (), default_layout: bool = False) -> EpisodeBatch:
    """:func:`make_batch`'s examples, and with probability ``reflect`` an episode that looks at
    its first image: drawn right, the model ends it (``<eos>``); drawn flawed (probability
    ``flawed``: :func:`.reflect.flawed_plan` of the planned objects), it writes the
    diagnosis and the plan again, and a second, right image follows. The first turn's plan
    is always the right one: a drawing that missed its plan is what RL's reflection meets.
    With probability ``own`` a reflecting example is one of the model's own drawings from
    ``pool`` instead (:func:`own_drawings`), with the reflection the detector grounds; with
    probability ``edit`` it is an editing episode of one of ``edits`` (a kind uniformly,
    then a prompt of it: :func:`edit_episode`), both images rendered and trained."""
    base = make_batch(rng, prompts, batch_size, drop_reasoning, exclude_pairs, balance_categories, image_size,
                      default_layout)
    b = batch_size
    images = np.zeros((b, 2, image_size, image_size, 3), dtype=np.uint8)
    images[:, 0] = base.images
    slots = np.zeros((b, 2), dtype=np.int64)
    present = np.zeros((b, 2), dtype=bool)
    present[:, 0] = True
    trained = present.copy()
    texts = list(base.texts)
    looks = (rng.random(b) < reflect) & base.reasoning
    bad = rng.random(b) < flawed
    mine = (rng.random(b) < own) & bool(len(pool))
    editing = rng.random(b) < edit if edit and len(edits) else np.zeros(b, bool)  # no draw: old runs reproduce
    by_kind: dict[str, list[EditPrompt]] = {}
    for p in edits:
        by_kind.setdefault(p.edit.kind, []).append(p)
    kinds = list(by_kind.values())
    for i in range(b):
        slots[i] = len(texts[i].split())
        if not looks[i]:
            continue
        if editing[i]:
            kind = kinds[rng.integers(len(kinds))]
            texts[i], scene, edited = edit_episode(rng, kind[rng.integers(len(kind))], exclude_pairs)
            images[i] = render_plans([scene, edited], rng, image_size)
            present[i, 1] = trained[i, 1] = True
            slots[i] = [texts[i].split().index(END_THINK) + 1, len(texts[i].split())]
            continue
        if mine[i]:  # the model's own first image: never a denoising target
            drawing = pool[rng.integers(len(pool))]
            texts[i], images[i, 0], trained[i, 0] = drawing.text, drawing.image, False
            slots[i, 0] = len(drawing.text.split())
            if drawing.reflection != EOS:
                images[i, 1] = render_plans([drawing.plan], rng, image_size)[0]
                present[i, 1] = trained[i, 1] = True
            texts[i] = f"{texts[i]} {drawing.reflection}"
            slots[i, 1] = len(texts[i].split())
            continue
        plan = extract_plan(texts[i])[0]
        if bad[i]:
            drawn = flawed_plan(plan, rng)
            images[i, 0] = render_plans([drawn], rng, image_size)[0]
            images[i, 1] = base.images[i]
            present[i, 1] = trained[i, 1] = True
            trained[i, 0] = False
        else:
            drawn = plan
        texts[i] = f"{texts[i]} {reflection(drawn, plan)}"
        slots[i, 1] = len(texts[i].split())
    return EpisodeBatch(texts, images, slots, present, trained)


def _reasoning_targets(ids: torch.Tensor, mask: torch.Tensor, think_id: int) -> torch.Tensor:
    """bool (B, T): the tokens after ``<think>`` (plan and ``</think>``), the LM targets."""
    is_think = (ids == think_id) & mask
    return (is_think.long().cumsum(1) - is_think.long()).gt(0) & mask


def sft_losses(model: ShapesModel, batch: SFTBatch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(LM loss, flow loss), fp32 scalars, for one batch in one packed forward."""
    tokens = model.encode_texts(batch.texts)
    ids, mask = tokens.ids, tokens.mask
    x0 = model.images_to_latents(torch.from_numpy(batch.images))
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0)
    sigma = sample_training_sigmas(b, model.timestep_shift, generator=generator).to(x0.device)
    s = sigma.view(-1, 1, 1, 1).to(x0.dtype)
    x_t = (1 - s) * x0 + s * noise
    hidden, v = model(ids, mask, x_t, sigma)
    flow = (v.float() - (noise - x0).float()).pow(2).mean()

    t = ids.shape[1]
    targets = _reasoning_targets(ids, mask, model.special["think"])[:, 1:]  # predicted from position t - 1
    if bool(targets.any()):
        h = hidden[:, : t - 1][targets]
        logp = ops.fused_linear_token_logprobs(h, model.lm_head_weight, ids[:, 1:][targets])
        lm = -logp.mean()
    else:
        lm = hidden.sum() * 0.0
    return lm, flow


def episode_losses(model: ShapesModel, batch: EpisodeBatch,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(LM loss, flow loss) of an :class:`EpisodeBatch` in one interleaved pass: every
    turn's tokens after ``<think>`` (a reflection, or the ``<eos>`` that ends the episode,
    predicted after looking), and the velocity of every trained image in its context."""
    tokens = model.encode_texts(batch.texts)
    ids, mask = tokens.ids, tokens.mask
    b, t = ids.shape
    pad = t - mask.long().sum(1, keepdim=True)
    x0 = model.images_to_latents(torch.from_numpy(batch.images.reshape(-1, *batch.images.shape[2:])))
    x0 = x0.view(b, 2, *x0.shape[1:])
    slots = torch.from_numpy(batch.slots).to(ids.device) + pad
    seen = SeenImages(x0, slots, torch.from_numpy(batch.present).to(ids.device))
    hidden, ctx = model.interleaved_contexts(ids, mask, seen)

    rows, rounds = torch.from_numpy(batch.trained).nonzero(as_tuple=True)
    x = x0[rows, rounds]
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)
    sigma = sample_training_sigmas(len(rows), model.timestep_shift, generator=generator).to(x.device)
    s = sigma.view(-1, 1, 1, 1).to(x.dtype)
    v = model.velocity((1 - s) * x + s * noise, sigma, ctx.select((rows * 2 + rounds).to(ids.device)))
    flow = (v.float() - (noise - x).float()).pow(2).mean()
    targets = _reasoning_targets(ids, mask, model.special["think"])[:, 1:]
    if bool(targets.any()):
        logp = ops.fused_linear_token_logprobs(hidden[:, :t - 1][targets], model.lm_head_weight,
                                               ids[:, 1:][targets])
        lm = -logp.mean()
    else:
        lm = hidden.sum() * 0.0
    return lm, flow


def _lr_scale(step: int, cfg: SFTConfig) -> float:
    """Linear warmup then cosine decay to ``min_lr / lr``: a multiplier of each group's peak LR."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.min_lr / cfg.lr
    return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * min(1.0, frac)))


_TEXT_ONLY = ("embed_tokens.", "lm_head.", "norm.", ".input_layernorm.", ".post_attention_layernorm.", ".mlp.")


def param_groups(model: ShapesModel, cfg: SFTConfig) -> list[dict]:
    """AdamW groups: text-only weights (token embedding, LM head, text norms and
    MLPs) at ``lr``; the rest (shared attention, image experts, image heads) at
    ``lr_image`` (``lr`` when 0).  Weight decay on matrices only."""
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        text = name.startswith(_TEXT_ONLY[:3]) or any(k in name for k in _TEXT_ONLY[3:])
        decay = p.dim() >= 2 and "embed" not in name
        groups.setdefault(("text" if text else "image", decay), []).append(p)
    out = []
    for (kind, decay), params in sorted(groups.items()):
        peak = cfg.lr if kind == "text" or not cfg.lr_image else cfg.lr_image
        out.append({"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "peak_lr": peak,
                    "lr": peak, "name": f"{kind}{'' if decay else '/no_decay'}"})
    return out


def build_model(cfg: SFTConfig) -> ShapesModel:
    if cfg.init:
        return _extended(load_policy(ModelConfig(checkpoint=cfg.init)))
    config = ShapesConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                          num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
                          intermediate_size=cfg.intermediate_size, image_expert=cfg.image_expert,
                          timestep_shift=cfg.timestep_shift)
    return ShapesModel(config)


def _extended(old: ShapesModel) -> ShapesModel:
    """``old`` with today's vocabulary: the words added since it was trained (appended, so
    every old id keeps its row) get fresh embedding and LM-head rows."""
    model = ShapesModel(dataclasses.replace(old.config, vocab_size=len(build_tokenizer()), special_tokens={}))
    state = old.state_dict()
    for name in ("embed_tokens.weight", "lm_head.weight"):
        rows = model.state_dict()[name].clone()
        rows[:state[name].shape[0]] = state[name]
        state[name] = rows
    model.load_state_dict(state)
    return model


def train(cfg: SFTConfig) -> tuple[ShapesModel, list[dict]]:
    """Train from scratch, save the final checkpoint to ``cfg.out`` (and
    ``step-N`` checkpoints every ``save_every`` steps); returns the model and
    the per-step log (also written to ``train_log.jsonl``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    split = make_split(cfg.split_seed)
    model = build_model(cfg).to(cfg.device)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.95))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    start = time.perf_counter()
    # the start model's own first images, drawn once, for grounded reflections
    pool = own_drawings(model, split.train, cfg.own_pool, rng, split.heldout_pairs) if cfg.reflect and cfg.own else []
    edits = edit_split(split)[0] if cfg.edit else ()
    bar = tqdm(range(cfg.steps), desc="sft", disable=not cfg.progress, dynamic_ncols=True, file=sys.stderr)
    with open(out / "train_log.jsonl", "w") as f:
        for step in bar:
            scale = _lr_scale(step, cfg)
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * scale
            lr = cfg.lr * scale
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                if cfg.reflect:
                    lm, flow = episode_losses(model, make_episode_batch(
                        rng, split.train, cfg.batch_size, cfg.drop_reasoning, cfg.reflect, cfg.flawed,
                        split.heldout_pairs, cfg.balance_categories, model.config.image_size, cfg.own, pool,
                        cfg.edit, edits, cfg.default_layout), gen)
                else:
                    lm, flow = sft_losses(model, make_batch(
                        rng, split.train, cfg.batch_size, cfg.drop_reasoning, split.heldout_pairs,
                        cfg.balance_categories, model.config.image_size, cfg.default_layout), gen)
            loss = cfg.lm_weight * lm + cfg.flow_weight * flow
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            rec = {"step": step + 1, "loss": loss.item(), "lm": lm.item(), "flow": flow.item(),
                   "grad_norm": float(gnorm), "lr": lr, "time": time.perf_counter() - start}
            log.append(rec)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            bar.set_postfix(lm=f"{rec['lm']:.3f}", flow=f"{rec['flow']:.3f}")
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                model.save_pretrained(out / f"step-{step + 1}")
    model.eval()
    model.save_pretrained(out)
    (out / "sft_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return model, log


_HELP = {
    "steps": "optimizer steps", "batch_size": "examples per step", "lr": "peak learning rate (cosine decay)",
    "lr_image": "peak LR of attention and image-side weights (0: same as --lr)",
    "min_lr": "final learning rate", "seed": "seed of data, init and noise",
    "split_seed": "seed of the train / held-out split", "drop_reasoning": "fraction of examples without reasoning",
    "default_layout": "examples without reasoning show the prompt's default layout (one rule: centre first, "
                      "first free colour) instead of a random one",
    "balance_categories": "draw a category uniformly, then a prompt of it",
    "image_expert": "separate image-token norms and MLPs (mixture-of-transformers)",
    "timestep_shift": "shift of the logit-normal timesteps (Bagel: 3)", "bf16": "bfloat16 autocast",
    "save_every": "also save step-N checkpoints every N steps (0: off)",
    "threads": "torch threads (0: torch's default; 1 is fastest on a busy 2-core machine)",
    "reflect": "share of examples that look at their image and reflect (multi-round warm start; 0: off)",
    "flawed": "share of the reflecting examples whose first image is drawn wrong (diagnosis, then a redraw)",
    "own": "share of the reflecting examples that are the start model's own drawings, with the reflection the "
           "verifier's detector grounds",
    "own_pool": "how many own drawings to sample at the start (ODE, 20 steps)",
    "edit": "share of the reflecting examples that are editing episodes (draw the scene, then the edited scene)",
    "init": "start from this checkpoint (a directory or builtin:NAME) instead of from scratch; the model "
            "shape flags are then ignored",
}


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = SFTConfig(out="")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    add_flags(p, defaults, [f.name for f in dataclasses.fields(SFTConfig) if f.name != "out"], _HELP)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    def setup() -> SFTConfig:
        cfg = SFTConfig(**vars(args))
        resolve_device(cfg.device, "--device")
        build_model(cfg)  # the model shape's own checks, before any step runs
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        return cfg

    cfg, code = attempt(setup, SETUP_ERRORS, PROG)
    if code:
        return code
    start = time.perf_counter()
    trained, code = attempt(lambda: train(cfg), RUN_ERRORS, PROG)
    if code:
        return code
    model, log = trained
    wall = time.perf_counter() - start
    n = model.num_parameters()
    print(f"saved {cfg.out}: {n / 1e6:.2f}M parameters, {cfg.steps} steps in {wall:.0f} s; "
          f"final lm {log[-1]['lm']:.4f} flow {log[-1]['flow']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

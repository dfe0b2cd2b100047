"""The UniGRPO training loop: rollouts -> rewards -> advantages -> inner epochs
of shuffled minibatches with gradient accumulation -> AdamW step; metrics,
periodic held-out evaluation, atomic checkpoints and exact resume; one process
or many (``torchrun``, :mod:`unigrpo.train.distributed`)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..integrity import CheckpointError, check_finite, nonfinite_tensors
from ..io import atomic_write_text
from ..ops.dispatch import describe as describe_backend
from ..policy import UnifiedPolicy
from ..precision import autocast, bf16_autocast_choice
from ..rewards import NonFiniteRewardError
from ..rollout import RolloutBatch, generate_episodes, sharded_sampling
from ..task import Task, build_task, resolve_device
from . import checkpointing, distributed, sharding
from .advantages import group_advantages
from .config import TrainConfig, optimizer_steps_per_iteration, save as save_config
from .ema import ParameterEMA
from .losses import TokenNorm, joint_loss, trained_token_mask


def _refuse_existing_run(run_dir: Path) -> None:
    """A new run never appends to another run's files (it would mix two runs' metrics)."""
    log = run_dir / "metrics.jsonl"
    held = [n for n, there in ((checkpointing.LATEST, (run_dir / checkpointing.LATEST).exists()),
                               ("checkpoints", bool(checkpointing.checkpoints(run_dir))),
                               ("metrics.jsonl", log.exists() and log.stat().st_size > 0)) if there]
    if held:
        raise FileExistsError(f"{run_dir} already holds a run ({', '.join(held)}): continue it with --resume "
                              f"{run_dir}, or set train.output_dir to a new directory")


def _resume_point(path: Path) -> Path | None:
    """The verified checkpoint to resume ``path`` (a run or a checkpoint directory) from;
    None for a run that has none yet (it starts again from its beginning)."""
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {path}: no such run directory, so no checkpoint found")
    return checkpointing.find_checkpoint(path)


def _mean_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each key's mean over the rows that have it (minibatches' stats, or ranks' metrics)."""
    acc: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for k, v in row.items():
            acc[k].append(float(v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _reward_metrics(rewards: torch.Tensor, components: dict[str, torch.Tensor]) -> dict[str, float]:
    """reward/mean: the trained (weighted) reward; reward/<name>_*: each component."""
    out = {"reward/mean": float(rewards.mean())}
    for name, scores in components.items():
        out[f"reward/{name}_mean"] = float(scores.mean())
        out[f"reward/{name}_std"] = float(scores.std()) if len(scores) > 1 else 0.0
    return out


def plan_minibatches(batch: RolloutBatch, cfg: TrainConfig, generator: torch.Generator,
                     size: int | None = None) -> list[list[torch.Tensor]]:
    """The iteration's optimizer steps, each a list of minibatch index tensors: the
    inner epochs' shuffled minibatches in order, ``gradient_accumulation_steps`` to a
    step (a last partial step still steps). Planned up front so that a step's token
    count (the ``dapo`` normaliser) is known before its first backward. ``size``: rounds
    per minibatch on this rank (default ``train.minibatch_size``, the whole job's)."""
    t = cfg.train
    size = t.minibatch_size if size is None else size
    flat = [idx for _ in range(t.num_inner_epochs) for idx in batch.minibatch_indices(size, generator)]
    return [flat[i:i + t.gradient_accumulation_steps] for i in range(0, len(flat), t.gradient_accumulation_steps)]


def _rollout_seed(seed: int, rank: int) -> int:
    """Rank r's rollout stream; rank 0's is one process's."""
    return seed + 1 + 1_000_003 * rank


class _JointLoss(sharding.Sharded):
    """``joint_loss`` as a module's forward, so that DDP or FSDP can wrap it: they then
    sync the gradients of whatever policy methods the loss calls. Under DDP the frozen
    reference is held outside the module tree (never synchronised); under FSDP a reference
    that is a model of its own is a submodule, so that it is sharded like the policy."""

    def __init__(self, policy: UnifiedPolicy, ref, shard_ref: bool = False) -> None:
        super().__init__()
        self.policy = policy
        if shard_ref and isinstance(ref, nn.Module):
            self.ref = ref
        else:
            self._ref = (ref,)

    def generation_modules(self) -> nn.Module:
        return self.policy  # rollouts and evaluation never run the reference

    def forward(self, mb: RolloutBatch, adv: torch.Tensor, cfg, norm: TokenNorm):
        ref = self.ref if "ref" in self._modules else self._ref[0]
        return joint_loss(self.policy, ref, mb, adv, cfg, norm)


def _check_divisible(cfg: TrainConfig, world: distributed.World) -> None:
    for key, value in (("train.prompts_per_iteration", cfg.train.prompts_per_iteration),
                       ("train.minibatch_size", cfg.train.minibatch_size)):
        if value % world.size:
            raise ValueError(f"{key}={value} must be a multiple of the {world.size} processes (each rank takes "
                             "an equal share, so that N processes train what one would)")


class Trainer:
    """Holds the policy, reference, optimizer and RNG streams of one run."""

    def __init__(self, cfg: TrainConfig, *, task: Task | None = None, policy: UnifiedPolicy | None = None,
                 resume: str | Path | None = None, progress: bool = True, evaluate: bool = True) -> None:
        """``task``: default ``build_task(cfg.task)``; ``policy``: default the task's
        ``build_policy(cfg.model)``; ``evaluate`` False skips the held-out evaluations."""
        cfg.validate()
        self.cfg, self.do_eval = cfg, evaluate
        self.device = distributed.local_device(resolve_device(cfg.model.device))
        self.world = distributed.setup(cfg.parallel, self.device)
        _check_divisible(cfg, self.world)
        self.progress = progress and self.world.main
        self.run_dir = Path(cfg.train.output_dir)
        if resume is None:
            _refuse_existing_run(self.run_dir)
            start_from = None
        else:
            start_from = _resume_point(Path(resume))
        distributed.barrier(self.world)  # every rank has looked before rank 0 writes
        # the run's record first: an unwritable output fails before any work, and a run killed
        # from here on can be resumed with its own config
        if self.world.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        seed = cfg.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.task = build_task(cfg.task) if task is None else task
        if policy is None:
            policy = self.task.build_policy(cfg.model, self.device)
        self.policy = policy.to(self.device)
        check_finite(self.policy.state_dict(), "the initial policy")
        self.ref = self.policy.reference_copy()  # the initial policy, frozen
        self.prompts = list(self.task.train_prompts())
        if not self.prompts:
            raise ValueError(f"task {self.task.name!r} has no training prompts")
        self.rewards = self.task.rewards()
        fsdp = self.world.strategy == "fsdp"
        self._loss = _JointLoss(self.policy, self.ref, shard_ref=fsdp)
        if start_from is not None and not checkpointing.is_sharded(start_from):
            self.policy.load_weights(start_from / "policy")  # whole weights: before sharding
        self.bf16, why = bf16_autocast_choice(cfg.train.bf16_autocast, self.device)
        if fsdp:
            sharding.shard(self._loss, self.device, self.bf16, cfg.parallel.reshard_after_forward)
        o = cfg.optim
        trained = [p for p in self.policy.parameters() if p.requires_grad]  # frozen parts (LoRA bases, VAE) stay out
        if not trained:
            raise ValueError("the policy has no trainable parameters")
        self.optimizer = torch.optim.AdamW(trained, lr=o.lr, betas=o.betas,
                                           weight_decay=o.weight_decay)
        self.ema = ParameterEMA(trained, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.scheduler = get_scheduler(o.lr_scheduler_type, self.optimizer, num_warmup_steps=o.warmup_steps,
                                       num_training_steps=cfg.train.iterations * optimizer_steps_per_iteration(cfg))
        self.generators = {
            "rollout": torch.Generator(self.device).manual_seed(_rollout_seed(seed, self.world.rank)),
            "shuffle": torch.Generator().manual_seed(seed + 2),
            "prompts": torch.Generator().manual_seed(seed + 3),
        }
        self.iteration = 0
        self.counters = {"skipped_nonfinite_loss": 0, "skipped_nonfinite_reward": 0, "optimizer_steps": 0}
        self.history: list[dict[str, Any]] = []
        self.resumed = resume is not None  # TensorBoard then drops events past the restart point
        if start_from is not None:
            self._resume(start_from)
        elif resume is not None and self.world.main:  # no checkpoint yet: the run starts again
            atomic_write_text(self.run_dir / "metrics.jsonl", "")
        self._ddp = None  # DDP broadcasts rank 0's weights, so every rank starts from the same policy
        if self.world.strategy == "ddp":
            self._ddp = DistributedDataParallel(self._loss, device_ids=[self.device.index] if self.device.type == "cuda"
                                                else None, find_unused_parameters=True)
        if self.world.main:  # a slower fallback is never silent
            procs = f"{self.world.size} processes ({self.world.strategy})" if self.world.distributed else "1 process"
            precision = f"{'bf16 autocast' if self.bf16 else 'fp32'} ({why})"
            print(f"unigrpo: {procs} on {self.device}; ops: {describe_backend(self.device)}; precision: {precision}",
                  file=sys.stderr)

    # ------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the weights. Under FSDP the optimizer and the EMA's
        averages are sharded: they go with the weights (:func:`sharding.save_state`)."""
        rngs = distributed.gather_objects(checkpointing.rng_state(self.generators), self.world)
        state = {"scheduler": self.scheduler.state_dict(), "rng": rngs[0], "rng_per_rank": rngs,
                 "counters": dict(self.counters), "history": self.history}
        sharded = self.world.strategy == "fsdp"
        if not sharded:
            state["optimizer"] = self.optimizer.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict(shadow=not sharded)
        return state

    def save(self) -> Path | None:
        """Every rank takes part (RNG states are gathered; under FSDP every rank writes its
        shards); rank 0 writes the rest and completes the checkpoint."""
        state, path, world = self._trainer_state(), None, self.world
        config = (self.run_dir / "config.yaml").read_text() if world.main else ""
        if world.strategy != "fsdp":
            if world.main:
                path = checkpointing.save_checkpoint(self.run_dir, self.iteration, self.policy, state, config)
        else:
            bad = nonfinite_tensors(sharding.local_tensors(self.policy.state_dict()))
            if not distributed.all_true(not bad, world, self.device):
                raise CheckpointError(f"iteration {self.iteration}: refusing to checkpoint the policy: non-finite "
                                      f"weights (NaN or inf) on some rank{' in ' + ', '.join(bad[:3]) if bad else ''}")
            tmp = checkpointing.begin_checkpoint(self.run_dir, self.iteration) if world.main else None
            tmp = distributed.gather_objects(tmp, world)[0]  # rank 0's directory, once it exists
            sharding.save_state(tmp / checkpointing.STATE, self.policy, self.optimizer, self.ema)
            distributed.barrier(world)  # every rank's shards are written
            if world.main:
                path = checkpointing.finish_checkpoint(self.run_dir, self.iteration, state, config)
        distributed.barrier(world)
        return path

    def _resume(self, ckpt: Path) -> None:
        """Continue from a verified checkpoint: weights (whole ones were loaded before
        sharding), optimizer, schedule, RNG streams, counters and the metrics so far
        (``metrics.jsonl`` is rewritten from them, so a torn last line or the rows of an
        iteration that died are gone). A checkpoint of any strategy and process count
        resumes under any other."""
        state = checkpointing.load_trainer_state(ckpt)
        if self.ema is not None and "ema" not in state:
            raise CheckpointError(f"{ckpt}: train.ema_decay is on but the checkpoint holds no EMA "
                                  "(it was written with the EMA off)")
        if checkpointing.is_sharded(ckpt):
            sharding.load_state(ckpt / checkpointing.STATE, self.policy, self.optimizer, self.ema)
        elif self.world.strategy == "fsdp":
            sharding.load_full_optimizer(self.policy, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        self.counters.update(state["counters"])
        self.history = state["history"]
        self.iteration = state["iteration"]
        if len(per_rank) == self.world.size:
            checkpointing.set_rng_state(per_rank[self.world.rank], self.generators)
        else:  # another process count: rank 0's streams, fresh rollout streams for the other ranks
            checkpointing.set_rng_state(per_rank[0], self.generators)
            if self.world.rank:
                self.generators["rollout"].manual_seed(_rollout_seed(self.cfg.train.seed, self.world.rank)
                                                       + self.iteration)
        if self.world.main:
            atomic_write_text(self.run_dir / "metrics.jsonl",
                              "".join(json.dumps(row) + "\n" for row in self.history))

    # -------------------------------------------------------------- the loop
    def _autocast(self):
        """The loss's precision, and the rollout's: the loss recomputes what the rollout
        recorded, and the image ratio's clip (1e-4) leaves no room for fp32 against bf16."""
        return autocast(self.device, self.bf16)

    def train_iteration(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        start = time.perf_counter()
        world = self.world
        # the same global pick on every rank (same seed); rank r rolls out its contiguous share
        pick = torch.randperm(len(self.prompts), generator=self.generators["prompts"])[:t.prompts_per_iteration]
        chosen = [self.prompts[i] for i in pick.view(world.size, -1)[world.rank].tolist()]
        self.policy.eval()
        batch, error = None, None
        try:
            with self._autocast():
                batch = sharding.run_gathered(self._loss, generate_episodes, self.policy, [p.text for p in chosen],
                                              [p.metadata for p in chosen], self.rewards, cfg.rollout,
                                              self.generators["rollout"], keep_noise=cfg.loss.grpo_guard)
        except NonFiniteRewardError as e:
            error = e
        if not distributed.all_true(error is None, world, self.device):  # every rank skips together
            self.counters["skipped_nonfinite_reward"] += 1
            return {"skipped": f"non-finite reward: {error or 'on another rank'}"}
        rollout_s = time.perf_counter() - start
        adv, rewards, components = self._advantages(batch, len(chosen))
        batch = batch.to(self.device)
        self.policy.train()
        stats, grad_norms = [], []
        token_mask = trained_token_mask(batch, cfg.loss)
        for step in plan_minibatches(batch, cfg, self.generators["shuffle"], t.minibatch_size // world.size):
            tokens = distributed.all_sum([float(token_mask[i.to(self.device)].sum()) for i in step], world,
                                         self.device)
            norm = TokenNorm(len(step), float(sum(tokens)), cfg.rollout.max_rounds * cfg.rollout.max_reasoning_tokens,
                             world.size)
            self.optimizer.zero_grad(set_to_none=True)
            finite = True
            for j, mb_idx in enumerate(step):
                idx = mb_idx.to(self.device)
                # DDP / FSDP reduce the gradients once per optimizer step, at its last minibatch
                sync = j == len(step) - 1
                sharding.sync_gradients(self._loss, sync)
                with nullcontext() if sync or self._ddp is None else self._ddp.no_sync():
                    with self._autocast():
                        loss, s = (self._ddp or self._loss)(batch.select(idx), adv[idx], cfg.loss,
                                                            dataclasses.replace(norm, minibatch_tokens=tokens[j]))
                    if not distributed.all_true(bool(torch.isfinite(loss)), world, self.device):
                        finite = False
                        if world.distributed:
                            (loss * 0).backward()  # DDP and FSDP expect a backward after each forward
                        break
                    loss.backward()
                stats.append(s)
            if finite:
                grad_norms.append(self._step())
            else:  # the whole step is dropped: a partial accumulation would change the objective
                self.counters["skipped_nonfinite_loss"] += 1
                self.optimizer.zero_grad(set_to_none=True)
        local = {**self.task.batch_metrics(batch), **_mean_stats(stats),
                 "train/advantage_abs_mean": float(adv.abs().mean())}
        if cfg.rollout.max_rounds > 1:
            local["rollout/rounds_used"] = float(batch.rounds_used.float().mean())
        if stats:
            local["first_minibatch/text_ratio_mean"] = float(stats[0].get("text/ratio_mean", float("nan")))
            local["first_minibatch/image_ratio_mean"] = float(stats[0].get("image/ratio_mean", float("nan")))
        elapsed = time.perf_counter() - start
        return {**_reward_metrics(rewards, components), **_mean_stats(distributed.gather_objects(local, world)),
                "train/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
                "train/lr": self.scheduler.get_last_lr()[0], "train/episodes_per_s": len(rewards) / rollout_s,
                "train/iteration_s": elapsed, **{f"train/{k}": v for k, v in self.counters.items()}}

    def _advantages(self, batch: RolloutBatch, prompts: int):
        """(this rank's advantages on the device, every rank's rewards, every rank's reward
        components): computed from the whole job's rewards, so ``scale_rewards=batch`` sees them all."""
        world = self.world
        rewards = distributed.all_gather(batch.rewards.float().to(self.device), world)
        groups = distributed.all_gather(batch.group_ids.to(self.device) + world.rank * prompts, world)
        components = {k: distributed.all_gather(v.float().to(self.device), world)
                      for k, v in batch.reward_components.items()}
        adv = group_advantages(rewards, groups, self.cfg.loss.scale_rewards, self.cfg.loss.adv_clip_max)
        b = len(batch)
        return adv[world.rank * b:(world.rank + 1) * b], rewards, components

    def _step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.optim.max_grad_norm)
        if isinstance(norm, DTensor):  # FSDP: the norm over every rank's shards
            norm = norm.full_tensor()
        if not torch.isfinite(norm):
            self.counters["skipped_nonfinite_loss"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan")
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.counters["optimizer_steps"] += 1
        return float(norm)

    def evaluate(self, tag: str) -> dict[str, float]:
        """The task's held-out evaluation, written to ``RUN/eval-<tag>/`` by rank 0, as
        ``eval/*`` metrics (of the EMA weights when ``train.ema_decay`` is on). Every rank
        takes part: :func:`unigrpo.rollout.sample_images` gives each its share of the images."""
        self.policy.eval()
        out = self.run_dir / f"eval-{tag}" if self.world.main else None
        with torch.no_grad(), self.ema.applied() if self.ema is not None else nullcontext(), \
                sharded_sampling(self.world.rank, self.world.size):
            res = sharding.run_gathered(self._loss, self.task.evaluate, self.policy, out)
        if "overall" not in res:
            raise ValueError(f"task {self.task.name!r}: evaluate() must return an 'overall' metric, got {sorted(res)}")
        return {f"eval/{k}": float(v) for k, v in res.items()} if self.world.main else {}

    def fit(self, initial_eval: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Train to ``train.iterations``. ``initial_eval``: the iteration-0 evaluation when
        already known (same start checkpoint, same eval settings), recorded instead of re-run."""
        t = self.cfg.train
        main = self.world.main
        log = open(self.run_dir / "metrics.jsonl", "a") if main else None
        writer = _tensorboard(self.run_dir, purge_step=self.iteration + (1 if self.history else 0)
                              if self.resumed else None) if main else None
        if self.iteration == 0 and self.do_eval:
            self._record({"iteration": 0, **(initial_eval or self.evaluate("000000"))}, log, writer)
        bar = tqdm(total=t.iterations, initial=self.iteration, desc="unigrpo", disable=not self.progress)
        while self.iteration < t.iterations:
            metrics = self.train_iteration()
            self.iteration += 1
            if self.do_eval and (self.iteration % t.eval_every == 0 or self.iteration == t.iterations):
                metrics.update(self.evaluate(f"{self.iteration:06d}"))
            self._record({"iteration": self.iteration, **metrics}, log, writer)
            bar.update(1)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in metrics.items()
                             if k in ("reward/mean", "accuracy/train_overall", "eval/overall")})
            if self.iteration % t.save_every == 0 or self.iteration == t.iterations:
                self.save()
        bar.close()
        if main:
            log.close()
            if writer is not None:
                writer.close()
            plot_curves(self.history, self.run_dir / "curves.png")
        return self.history

    def _record(self, row: dict[str, Any], log, writer) -> None:
        self.history.append(row)
        if log is None:  # not rank 0
            return
        log.write(json.dumps(row) + "\n")
        log.flush()
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "iteration" and math.isfinite(v):
                    writer.add_scalar(k, v, row["iteration"])


def _tensorboard(run_dir: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSONL and the console only
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Reward and accuracy curves over iterations, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = sorted({k for h in history for k in h if k.startswith("reward/") and k.endswith("_mean")})
    series = [(k, 0, f"train {k[7:-5]} reward") for k in keys] + [
        ("accuracy/train_overall", 0, "train accuracy") if "reward/strict_mean" not in keys else None,
        ("eval/overall", 1, "held-out (the task's evaluation, overall)")]
    for key, axis, label in filter(None, series):
        pts = [(h["iteration"], h[key]) for h in history if key in h]
        if not pts:
            continue
        xs, ys = map(np.asarray, zip(*pts))
        if axis:  # a few held-out evaluations: markers
            ax[axis].plot(xs, ys, marker="o", label=label)
            continue
        # one rollout batch per point is noisy: the raw series faint, a moving average over it
        line, = ax[axis].plot(xs, ys, alpha=0.25, linewidth=0.8)
        w = min(len(ys), max(1, len(ys) // 15))
        smooth = np.convolve(ys, np.ones(w) / w, mode="valid")
        ax[axis].plot(xs[w - 1:], smooth, color=line.get_color(), label=f"{label} ({w}-iteration mean)")
    for a, title in zip(ax, ["rollouts", "evaluation"]):
        a.set_xlabel("iteration")
        a.set_title(title)
        a.grid(alpha=0.3)
        if a.get_lines():
            a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

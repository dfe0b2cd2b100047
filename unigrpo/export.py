"""python -m unigrpo.export CHECKPOINT OUT_DIR [--ema]

Write a training checkpoint's policy as a plain model directory (the policy's own
``save_pretrained``: safetensors for ``from_pretrained``, a peft adapter, diffusers' LoRA
file), in one process. This is how an FSDP run's checkpoint, whose weights are sharded
in ``state/``, becomes a model; a one-process or DDP checkpoint's ``policy/`` is one
already and is written again the same way. CHECKPOINT: a run directory (its latest
checkpoint) or a ``checkpoint-*`` directory. The policy is built from the checkpoint's own
config (its base models must be where that config says). ``--ema`` writes the run's
exponential moving average (``train.ema_decay``), the weights its evaluations used."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

from .cli import ArgumentParser, SETUP_ERRORS, RUN_ERRORS, attempt
from .integrity import CheckpointError

PROG = "python -m unigrpo.export"


def export(checkpoint: str | Path, out_dir: str | Path, ema: bool = False) -> Path:
    """Write the policy of ``checkpoint`` (verified) to ``out_dir``; returns the checkpoint used.
    ``ema``: the run's exponential moving average of the trained weights (``train.ema_decay``)
    in place of the trained weights themselves."""
    from .task import build_task
    from .train import checkpointing, sharding
    from .train.config import load

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty directory: name a new one")
    ckpt = checkpointing.find_checkpoint(Path(checkpoint))
    if ckpt is None:
        raise CheckpointError(f"{checkpoint} holds no checkpoint yet")
    cfg = load(ckpt / "config.yaml", [])
    policy = build_task(cfg.task).build_policy(cfg.model, "cpu")
    if checkpointing.is_sharded(ckpt):
        sharding.load_weights(ckpt / checkpointing.STATE, policy)
    else:
        policy.load_weights(ckpt / checkpointing.POLICY)
    average = _ema(ckpt, policy) if ema else None
    tmp = out.with_name(f".{out.name}.tmp")  # renamed into place once whole
    shutil.rmtree(tmp, ignore_errors=True)
    with average.applied() if average is not None else nullcontext():
        policy.save_pretrained(tmp)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return ckpt


def _ema(ckpt: Path, policy):
    """The run's EMA of ``policy``'s trained parameters, as its checkpoint holds it."""
    from .train import checkpointing, sharding
    from .train.ema import ParameterEMA

    state = checkpointing.load_trainer_state(ckpt).get("ema")
    if state is None:
        raise CheckpointError(f"--ema: {ckpt} holds no EMA (its run had train.ema_decay=0)")
    average = ParameterEMA([p for p in policy.parameters() if p.requires_grad], state["decay"])
    if state["shadow"] is None:  # an FSDP run keeps the averages with its sharded weights
        sharding.load_ema(ckpt / checkpointing.STATE, policy, average)
    try:
        average.load_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"--ema: {ckpt}: {e}") from None
    return average


def main(argv=None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory or checkpoint-* directory")
    p.add_argument("out_dir", help="directory to write the model to")
    p.add_argument("--ema", action="store_true", help="write the run's EMA weights (train.ema_decay > 0)")
    args = p.parse_args(argv)
    ckpt, code = attempt(lambda: export(args.checkpoint, args.out_dir, args.ema), SETUP_ERRORS + RUN_ERRORS, PROG)
    if code:
        return code
    print(f"{PROG}: wrote the {'EMA ' if args.ema else ''}policy of {ckpt} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

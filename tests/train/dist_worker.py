"""Run by tests/train/test_distributed.py under torchrun (or alone): trains the tiny
built-in model on the toy task with rollouts that do not depend on the process count.

Every rank generates the *whole* job's rounds from one fixed seed and keeps its own rows,
so one process and N processes train on the same rounds and differ only in how the
update is split and reduced. Writes the final weights to argv[1] (rank 0)."""

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tiny_runs import FAST, tiny, toy_task

import unigrpo.train.trainer as trainer_mod
from unigrpo.train import Trainer, load_config
from unigrpo.train.distributed import exit_process, shutdown

real_generate = trainer_mod.generate_episodes
calls = [0]


def same_rounds_any_world(policy, texts, metadata, rewards, cfg, generator=None, **kw):
    ranks = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    everyone = [None] * ranks
    if ranks > 1:
        dist.all_gather_object(everyone, (list(texts), list(metadata)))
    else:
        everyone = [(list(texts), list(metadata))]
    all_texts = [t for ts, _ in everyone for t in ts]
    all_meta = [m for _, ms in everyone for m in ms]
    calls[0] += 1
    g = torch.Generator().manual_seed(1000 + calls[0])
    batch = real_generate(policy, all_texts, all_meta, rewards, cfg, g, **kw)
    b = len(texts) * cfg.num_generations
    local = batch.select(slice(rank * b, (rank + 1) * b))
    local.group_ids = local.group_ids - rank * len(texts)  # as a rank's own rollout numbers them
    return local


trainer_mod.generate_episodes = same_rounds_any_world
out, run_dir, *overrides = sys.argv[1:]
torch.set_num_threads(1)
start = Path(run_dir).parent / "tiny-start"  # the config names it, so that unigrpo.export can rebuild the policy
# the process group starts inside the Trainer: here torchrun's RANK says who writes, once per
# directory (two writers of one manifest race), and the others wait for its manifest, written last
if not (start / "manifest.json").exists():
    if int(os.environ.get("RANK", "0")) == 0:
        tiny(0).save_pretrained(start)
    deadline = time.monotonic() + 120
    while not (start / "manifest.json").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {os.environ.get('RANK')}: no {start / 'manifest.json'} after 120 s")
        time.sleep(0.05)
cfg = load_config(None, FAST + [f"train.output_dir={run_dir}", f"model.checkpoint={start}"] + overrides)
t = Trainer(cfg, task=toy_task(), policy=tiny(0), progress=False, evaluate=False)
t.fit()
# whole weights however they are held (FSDP: every rank takes part in gathering them)
weights = get_model_state_dict(t.policy, options=StateDictOptions(full_state_dict=True))
if t.world.main:
    torch.save({k: v.clone() for k, v in weights.items()}, out)
shutdown()  # every rank done with its collectives, then the process group left
exit_process(0)  # as the CLI ends a torchrun worker: no interpreter teardown beside Gloo threads

"""Data-parallel scaling on this machine: the built-in model at its default size (random
weights) on the toy task, one thread per process, 1 process beside 2 (torchrun, gloo) with
DDP and with FSDP2 in one run: seconds per training iteration (4 prompts x 8 rounds,
K = 10, two minibatches), rollout rounds/s, and the bytes of weights, gradients and
optimizer state one rank holds. ``2 processes DDP, no gradient sync`` is the DDP run with
its all-reduce switched off (the weights then drift apart: a timing run only); its
difference to a synced run is the share of an iteration spent in communication and in
waiting for the slower rank. ``FSDP2, weights kept from forward to backward`` is
``parallel.reshard_after_forward=false``."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

WORKER = textwrap.dedent("""
    import json, sys, torch
    from unigrpo.shapes.model import ShapesConfig, ShapesModel
    from unigrpo.rewards import WeightedRewards
    from unigrpo.tasks import PromptsTask
    from unigrpo.train import Trainer, load_config

    out, run_dir, strategy, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    prompts = ["a red circle", "two squares the color of grass", "a blue triangle left of a yellow circle",
               "three triangles", "a green square", "two circles"]
    task = PromptsTask(prompts=prompts, heldout=prompts[:1],
                       rewards=WeightedRewards([("bright", lambda im, p, m: im.float().mean(dim=(1, 2, 3)), 1.0)]))
    cfg = load_config(None, [f"train.output_dir={run_dir}", "train.iterations=4", "train.save_every=100",
                             f"parallel.strategy={strategy}", f"parallel.reshard_after_forward={mode != 'keep'}"])
    t = Trainer(cfg, task=task, policy=ShapesModel(ShapesConfig()), progress=False, evaluate=False)
    if t._ddp is not None and mode == "nosync":
        t._ddp.require_backward_grad_sync = False
    rows = t.fit()[1:]  # the first iteration warms up
    local = lambda x: x.to_local() if hasattr(x, "to_local") else x
    held = [local(p) for p in t.policy.parameters()] * 2  # weights and (same sizes) gradients
    held += [local(v) for st in t.optimizer.state.values() for v in st.values() if v.dim() > 0]
    if t.world.main:
        json.dump({"iteration_s": sum(r["train/iteration_s"] for r in rows) / len(rows),
                   "episodes_per_s": sum(r["train/episodes_per_s"] for r in rows) / len(rows),
                   "state_mb_per_rank": sum(x.numel() * x.element_size() for x in held) / 2**20}, open(out, "w"))
""")


@pytest.mark.parametrize("procs,strategy,mode", [(1, "none", "sync"), (2, "ddp", "sync"), (2, "ddp", "nosync"),
                                                (2, "fsdp", "sync"), (2, "fsdp", "keep")],
                         ids=["1 process", "2 processes DDP", "2 processes DDP, no gradient sync", "2 processes FSDP2",
                              "2 processes FSDP2, weights kept from forward to backward"])
def bench_data_parallel_iteration(benchmark, tmp_path, procs, strategy, mode):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           str(script), str(out), str(tmp_path / "run"), strategy, mode]

    def launch():  # cwd: not the checkout, whose unigrpo/ would shadow the installed package
        done = subprocess.run(cmd, cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]

    benchmark.group = "data parallel: default model, 32 rounds per iteration, 1 thread per process"
    benchmark.pedantic(launch, rounds=1, iterations=1)
    result = json.loads(out.read_text())
    benchmark.extra_info["iteration_s"] = round(result["iteration_s"], 3)
    benchmark.extra_info["episodes_per_s"] = round(result["episodes_per_s"], 2)  # the whole job's rounds
    benchmark.extra_info["state_mb_per_rank"] = round(result["state_mb_per_rank"], 1)

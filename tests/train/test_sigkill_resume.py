"""A run killed with SIGKILL at any point and resumed with ``--resume`` loses at
most the iteration it was in and, on CPU with a fixed seed, ends exactly where the
uninterrupted run ends. The kill is real: the child process SIGKILLs itself at a
chosen point (before the first checkpoint, mid-iteration, inside a checkpoint
write), or the parent kills it after a seeded random delay."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    from unigrpo.shapes.model import ShapesConfig, ShapesModel
    from unigrpo.rewards import WeightedRewards
    from unigrpo.tasks import PromptsTask
    from unigrpo.train import Trainer, load_config
    from unigrpo.train import checkpointing

    out, kill_at, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
    where, _, when = kill_at.partition(":")
    calls = {"reward": 0, "save": 0, "latest": 0}

    def die_if(point):
        calls[point] += 1
        if where == point and calls[point] == int(when):
            os.kill(os.getpid(), signal.SIGKILL)

    def brightness(images, prompts, metadata):
        die_if("reward")  # one reward call per iteration: killed between rollout and update
        return images.float().mean(dim=(1, 2, 3)) / 255

    save = checkpointing.save_checkpoint
    def dying_save(run_dir, iteration, policy, state, config_yaml, **kw):
        real_torch_save = torch.save
        def torch_save(obj, path):  # the policy is written, the trainer state is not: a torn checkpoint
            die_if("save")
            real_torch_save(obj, path)
        torch.save = torch_save
        try:
            return save(run_dir, iteration, policy, state, config_yaml, **kw)
        finally:
            torch.save = real_torch_save
    checkpointing.save_checkpoint = dying_save

    real_atomic = checkpointing.atomic_write_text
    def dying_atomic(path, text):  # the checkpoint is in place, `latest` not yet pointed at it
        if str(path).endswith("latest"):
            die_if("latest")
        real_atomic(path, text)
    checkpointing.atomic_write_text = dying_atomic

    torch.manual_seed(0)
    policy = ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, timestep_embed_dim=16))
    cfg = load_config(None, ["train.prompts_per_iteration=2", "rollout.num_generations=4",
                             "rollout.num_inference_steps=3", "rollout.max_reasoning_tokens=6",
                             "train.minibatch_size=4", "optim.warmup_steps=1", "optim.lr=3e-3",
                             "train.iterations=5", "train.save_every=1", f"train.output_dir={out}"])
    task = PromptsTask(prompts=["a red circle", "three triangles", "a blue square"], heldout=[],
                       rewards=WeightedRewards([("bright", brightness, 1.0)]))
    Trainer(cfg, task=task, policy=policy, progress=False, evaluate=False,
            resume=out if resume else None).fit()
""")


def _argv(out: Path, kill_at: str, resume: bool) -> list[str]:
    return [sys.executable, "-c", CHILD, str(out), kill_at, "resume" if resume else "fresh"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(out: Path, kill_at: str = "none:0", resume: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(out, kill_at, resume), env=ENV, capture_output=True, text=True, timeout=900)


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(_argv(out, "none:0", False), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("train/iteration_s", "train/episodes_per_s")} for r in rows]


class Finished(type(Path())):
    wall: float  # seconds the uninterrupted child took, start-up included


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = Finished(tmp_path_factory.mktemp("full"))
    start = time.perf_counter()
    proc = _run(out)
    out.wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("kill_at, survives", [
    ("reward:1", None),  # in the first iteration: no checkpoint yet, the run starts again
    ("save:1", None),    # while the first checkpoint is half written
    ("latest:1", None),  # the first checkpoint renamed into place, `latest` not yet written
    ("reward:4", 3),     # during iteration 4's rollout: checkpoint 3 is the latest
    ("save:4", 3),       # while checkpoint 4 is half written: it must not be picked up
    ("latest:4", 3),     # checkpoint 4 in place, `latest` still at 3
])
def test_sigkill_mid_iteration_then_resume_matches_the_uninterrupted_run(tmp_path, uninterrupted, kill_at, survives):
    killed = _run(tmp_path, kill_at)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    if survives is None:
        assert not (tmp_path / "latest").exists()
    else:
        assert (tmp_path / "latest").read_text().strip() == f"checkpoint-{survives:06d}"
        assert max(r["iteration"] for r in _metrics(tmp_path)) in (survives, survives + 1)
    _resume_and_compare(tmp_path, uninterrupted)


@pytest.mark.parametrize("delay", [0.25, 0.5, 0.75])
def test_sigkill_at_a_random_moment_then_resume(tmp_path, uninterrupted, delay):
    """Killed from outside at a seeded random fraction of the whole run's wall time."""
    rnd = random.Random(int(delay * 100))
    child = _start(tmp_path)
    time.sleep((delay + rnd.uniform(-0.2, 0.2)) * uninterrupted.wall)
    child.kill()
    child.wait(timeout=60)
    _resume_and_compare(tmp_path, uninterrupted)


def _resume_and_compare(tmp_path, uninterrupted):
    resumed = _run(tmp_path, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-000005"
    final = load_file(tmp_path / "checkpoint-000005" / "policy" / "model.safetensors")
    ref = load_file(uninterrupted / "checkpoint-000005" / "policy" / "model.safetensors")
    assert final.keys() == ref.keys()
    for k in ref:
        assert torch.equal(final[k], ref[k]), k
    assert _metrics(tmp_path) == _metrics(uninterrupted)
    assert not list(tmp_path.glob(".checkpoint-*"))  # a torn checkpoint is cleared by the next save

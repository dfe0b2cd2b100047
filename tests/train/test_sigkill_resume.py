"""A run killed with SIGKILL mid-iteration and resumed with ``--resume`` loses at
most that iteration and, on CPU with a fixed seed, ends exactly where the
uninterrupted run ends. The kill is real: the child process SIGKILLs itself."""

import json
import os
import signal
import subprocess
import sys
import textwrap
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
    calls = {"reward": 0, "save": 0}

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


def _run(out: Path, kill_at: str = "none:0", resume: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", CHILD, str(out), kill_at, "resume" if resume else "fresh"],
                          env=env, capture_output=True, text=True, timeout=900)


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("train/iteration_s", "train/rounds_per_s")} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("kill_at, survives", [
    ("reward:4", 3),  # during iteration 4's rollout: checkpoint 3 is the latest
    ("save:4", 3),    # while checkpoint 4 is half written: it must not be picked up
])
def test_sigkill_mid_iteration_then_resume_matches_the_uninterrupted_run(tmp_path, uninterrupted, kill_at, survives):
    killed = _run(tmp_path, kill_at)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    assert (tmp_path / "latest").read_text().strip() == f"checkpoint-{survives:06d}"
    assert max(r["iteration"] for r in _metrics(tmp_path)) in (survives, survives + 1)

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

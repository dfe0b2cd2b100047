"""``torchrun`` data parallel on CPU (gloo, 2 processes, the tiny built-in model): the same
episodes train the same weights on 1 and 2 processes, only rank 0 writes, a 2-process run
resumes on 1 process, and a rank that fails ends the job instead of hanging it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_worker.py"
PROBE = HERE / "teardown_probe"  # its sitecustomize prints TEARDOWN_MARK at a teardown with Gloo's threads alive
TEARDOWN_MARK = "teardown with gloo threads alive"


def _env(extra_path=()):
    paths = [str(HERE.parent), str(HERE), str(PROBE), *map(str, extra_path)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _torchrun(args, cwd, n=2, timeout=300, extra_path=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(extra_path), capture_output=True, text=True, timeout=timeout)


def _ok(out):
    """A torchrun job that finished: exit 0, and no rank went through interpreter teardown
    with Gloo's threads alive (where one can abort after the run wrote everything)."""
    assert out.returncode == 0, out.stderr[-3000:]
    assert TEARDOWN_MARK not in out.stderr, out.stderr[-3000:]


def _one_process(tmp_path, name, overrides):
    out = subprocess.run([sys.executable, str(WORKER), str(tmp_path / f"{name}.pt"), str(tmp_path / name), *overrides],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return torch.load(tmp_path / f"{name}.pt")


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp-kept", "ddp"])
@pytest.mark.parametrize("loss", [["loss.loss_type=dapo"], ["loss.loss_type=grpo", "loss.scale_rewards=batch"]],
                         ids=["dapo", "grpo-batch-scaled"])
def test_two_processes_train_what_one_does_on_the_same_episodes(tmp_path, loss, strategy):
    # one optimizer step per iteration over all 16 episodes: as two accumulated minibatches of 8
    # (on 2 processes: of 4 per rank, dapo's normaliser counting both ranks' tokens), or as one
    # of 16, or as four of 4. The other splits are the same objective summed in other orders:
    # the farther of them from the first is the float noise the 2-process run is held to (one
    # order alone undersamples it: Adam turns a rounding flip in a near-zero gradient into a
    # full step, and which elements flip depends on the order)
    common = ["train.iterations=3", "optim.lr=1e-2", "optim.warmup_steps=0", *loss]
    split = ["train.minibatch_size=8", "train.gradient_accumulation_steps=2"]
    one = _one_process(tmp_path, "one", common + split)
    orders = {"one-of-16": ["train.minibatch_size=16"],
              "four-of-4": ["train.minibatch_size=4", "train.gradient_accumulation_steps=4"]}
    parallel = {"fsdp-kept": ["parallel.strategy=fsdp", "parallel.reshard_after_forward=false"]}.get(
        strategy, [f"parallel.strategy={strategy}"])
    two = _torchrun([str(WORKER), str(tmp_path / "two.pt"), str(tmp_path / "two"), *common, *split, *parallel],
                    tmp_path)
    _ok(two)
    start = __import__("tiny_runs").tiny(0).state_dict()
    noise = max(_max_diff(one, _one_process(tmp_path, name, common + o)) for name, o in orders.items())
    assert _max_diff(one, start) > 1e-2  # three Adam steps of lr 1e-2 moved the weights
    two = torch.load(tmp_path / "two.pt")
    assert _max_diff(one, two) <= 3 * noise + 1e-6, noise
    # the last checkpoint, exported in one process, is exactly the weights the job ended with
    last = tmp_path / "two" / "checkpoint-000003"
    assert (last / "state").is_dir() == strategy.startswith("fsdp")
    out = subprocess.run([sys.executable, "-m", "unigrpo.export", str(last), str(tmp_path / "export")], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    from unigrpo.shapes.model import ShapesModel

    exported = ShapesModel.from_pretrained(tmp_path / "export").state_dict()
    assert exported.keys() == two.keys() and _max_diff(exported, two) == 0


def test_torchrun_cli_writes_once_resumes_exactly_and_on_one_process(tmp_path):
    from unigrpo.shapes.model import ShapesConfig, ShapesModel

    torch.manual_seed(0)
    ShapesModel(ShapesConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=48, timestep_embed_dim=16)).save_pretrained(tmp_path / "tiny")
    (tmp_path / "prompts.txt").write_text("a red circle\nthree triangles\na blue square\ntwo squares\n"
                                          "a green circle\na red triangle\n")
    run = tmp_path / "run"
    args = ["task=prompts", f"task.file={tmp_path / 'prompts.txt'}", "task.reward=brightness",
            "task.heldout_fraction=0.34", f"model.checkpoint={tmp_path / 'tiny'}", f"train.output_dir={run}",
            "train.prompts_per_iteration=2", "rollout.num_generations=2", "rollout.num_inference_steps=2",
            "rollout.max_reasoning_tokens=4", "train.minibatch_size=2", "train.save_every=1",
            "train.eval_every=2", "task.eval_steps=2", "task.eval_batch_size=1", "train.ema_decay=0.5",
            "--no-progress"]
    two = _torchrun(["-m", "unigrpo.train", *args, "train.iterations=2"], tmp_path)
    _ok(two)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]  # one writer: no row twice
    assert "eval/overall" in rows[-1] and "reward/mean" in rows[1]
    state = torch.load(run / "checkpoint-000002" / "trainer_state.pt", weights_only=False)
    assert len(state["rng_per_rank"]) == 2
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000001", "checkpoint-000002"]
    # resumed on 2 processes it ends exactly as the uninterrupted 2-process run
    full = tmp_path / "full"
    out = _torchrun(["-m", "unigrpo.train", *args, f"train.output_dir={full}", "train.iterations=3"], tmp_path)
    _ok(out)
    out = _torchrun(["-m", "unigrpo.train", "--resume", str(run), "train.iterations=3", "--no-progress"], tmp_path)
    _ok(out)
    timeless = lambda d: [{k: v for k, v in json.loads(x).items() if not k.endswith("_s")}  # noqa: E731
                          for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert timeless(run) == timeless(full)
    # and goes on in one process
    one = subprocess.run([sys.executable, "-m", "unigrpo.train", "--resume", str(run), "train.iterations=4",
                          "--no-progress"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4]
    assert (run / "checkpoint-000003" / "state").is_dir() and (run / "checkpoint-000004" / "policy").is_dir()
    # and back on 2 (FSDP from a one-process checkpoint: whole weights, optimizer and EMA, sharded on load)
    out = _torchrun(["-m", "unigrpo.train", "--resume", str(run), "train.iterations=5", "--no-progress"], tmp_path)
    _ok(out)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4, 5] and "eval/overall" in rows[-1]
    # the sharded checkpoint's EMA exports too, and is not the trained weights
    for extra, name in (([], "trained"), (["--ema"], "ema")):
        out = subprocess.run([sys.executable, "-m", "unigrpo.export", str(run / "checkpoint-000005"),
                              str(tmp_path / name), *extra], cwd=tmp_path, env=_env(), capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    from unigrpo.shapes.model import ShapesModel

    trained, ema = (ShapesModel.from_pretrained(tmp_path / n).state_dict() for n in ("trained", "ema"))
    assert trained.keys() == ema.keys() and any(not torch.equal(trained[k], ema[k]) for k in trained)
    # a damaged shard is named, on one line, before anything runs
    shard = next((run / "checkpoint-000005" / "state").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-8] + b"corrupt!")
    bad = subprocess.run([sys.executable, "-m", "unigrpo.train", "--resume", str(run), "train.iterations=6",
                          "--no-progress"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and shard.name in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_a_failing_rank_ends_the_job(tmp_path):
    (tmp_path / "rank_reward.py").write_text(
        "import os, torch\n"
        "def factory():\n"
        "    def reward(images, prompts, metadata):\n"
        "        if os.environ.get('RANK') == '1':\n"
        "            raise RuntimeError('reward service down on rank 1')\n"
        "        return images.float().mean(dim=(1, 2, 3))\n"
        "    return reward\n")
    (tmp_path / "prompts.txt").write_text("a red circle\nthree triangles\na blue square\ntwo squares\n")
    args = ["-m", "unigrpo.train", "task=prompts", f"task.file={tmp_path / 'prompts.txt'}",
            "task.reward=rank_reward:factory", "task.heldout_fraction=0.25", f"train.output_dir={tmp_path / 'run'}",
            "train.prompts_per_iteration=2", "rollout.num_generations=2", "rollout.num_inference_steps=2",
            "rollout.max_reasoning_tokens=4", "train.minibatch_size=2", "train.iterations=2",
            "train.eval_every=100", "parallel.timeout_s=60", "--no-progress"]
    out = _torchrun(args, tmp_path, timeout=240, extra_path=[tmp_path])
    assert out.returncode != 0
    assert "reward service down on rank 1" in out.stderr


def test_a_rank_killed_mid_iteration_resumes_from_the_last_checkpoint(tmp_path):
    # rank 1 SIGKILLs itself inside iteration 3 (its fourth reward call: the first is the iteration-0
    # evaluation, whose images every rank draws a share of), after checkpoint 2
    (tmp_path / "killer_reward.py").write_text(
        "import os, signal\n"
        "calls = [0]\n"
        "def factory():\n"
        "    def reward(images, prompts, metadata):\n"
        "        calls[0] += 1\n"
        "        if os.environ.get('RANK') == '1' and calls[0] == 4 and os.path.exists(os.environ['KILL_MARKER']):\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        return images.float().mean(dim=(1, 2, 3))\n"
        "    return reward\n")
    (tmp_path / "prompts.txt").write_text("a red circle\nthree triangles\na blue square\ntwo squares\n")
    marker = tmp_path / "kill"
    marker.write_text("")
    os.environ["KILL_MARKER"] = str(marker)
    try:
        args = ["-m", "unigrpo.train", "task=prompts", f"task.file={tmp_path / 'prompts.txt'}",
                "task.reward=killer_reward:factory", "task.heldout_fraction=0.25", "train.prompts_per_iteration=2",
                "rollout.num_generations=2", "rollout.num_inference_steps=2", "rollout.max_reasoning_tokens=4",
                "train.minibatch_size=2", "train.iterations=4", "train.save_every=1", "train.eval_every=100",
                "--no-progress"]
        killed = _torchrun(args + [f"train.output_dir={tmp_path / 'run'}"], tmp_path, extra_path=[tmp_path])
        assert killed.returncode != 0
        assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-000002"
        marker.unlink()
        resumed = _torchrun(["-m", "unigrpo.train", "--resume", str(tmp_path / "run"), "--no-progress"], tmp_path,
                            extra_path=[tmp_path])
        _ok(resumed)
        full = _torchrun(args + [f"train.output_dir={tmp_path / 'full'}"], tmp_path, extra_path=[tmp_path])
        _ok(full)
    finally:
        del os.environ["KILL_MARKER"]
    timeless = lambda d: [{k: v for k, v in json.loads(x).items() if not k.endswith("_s")}  # noqa: E731
                          for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert timeless(tmp_path / "run") == timeless(tmp_path / "full")



@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full-with-kl"])
def test_a_real_model_policy_trains_sharded(tmp_path, lora):
    # lm+diffusers under FSDP2 (the default past one process): LoRA on both models (the reference
    # is the models with adapters disabled), or full fine-tuning with the text KL on (the reference
    # is a frozen copy sharing the frozen encoders and VAE, sharded as a submodule)
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from tiny_hf_models import save_lm, save_sd3

    lm, sd3 = save_lm(tmp_path / "lm"), save_sd3(tmp_path / "sd3")
    (tmp_path / "prompts.txt").write_text("a red circle\nthree triangles\na blue square\ntwo squares\na cat\n")
    run = tmp_path / "run"
    out = _torchrun(["-m", "unigrpo.train", "model.type=lm+diffusers", f"model.lm={lm}", f"model.pipeline={sd3}",
                     "model.resolution=32", f"model.lora_rank={4 if lora else 0}", f"loss.beta={0 if lora else 0.05}",
                     "task=prompts", f"task.file={tmp_path / 'prompts.txt'}",
                     "task.reward=brightness", "task.heldout_fraction=0.2", "task.eval_steps=2",
                     "train.prompts_per_iteration=2", "rollout.num_generations=2", "rollout.num_inference_steps=2",
                     "rollout.max_reasoning_tokens=4", "train.minibatch_size=2", "train.iterations=2",
                     f"train.output_dir={run}", "--no-progress"], tmp_path, extra_path=[HERE.parent])
    _ok(out)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 4 rounds an iteration in minibatches of 2 (1 a rank): 2 optimizer steps an iteration
    assert [r["iteration"] for r in rows] == [0, 1, 2] and rows[-1]["train/optimizer_steps"] == 4
    if not lora:
        assert rows[-1]["text/kl_ref"] > 0  # the sharded reference took part
    assert (run / "checkpoint-000002" / "state").is_dir() and not (run / "checkpoint-000002" / "policy").exists()
    out = subprocess.run([sys.executable, "-m", "unigrpo.export", str(run), str(tmp_path / "export")], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # exported in each library's own format: diffusers' LoRA file, or the whole LM and transformer
    wanted = ["transformer_lora/pytorch_lora_weights.safetensors"] if lora else \
        ["lm/model.safetensors", "transformer/diffusion_pytorch_model.safetensors"]
    assert all((tmp_path / "export" / f).is_file() for f in wanted)

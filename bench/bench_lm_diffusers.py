"""The two-model policy (``model.type=lm+diffusers``) at a size where the models, not the
library, take the time: a Qwen2 LM (hidden 256, 4 layers) reasons and an SD3 pipeline
(transformer 8 heads x 32, 4 layers; 32 px images, 16x16 latents) draws, random weights,
loaded from disk through the CLI's path.

* ``rollout``: ``generate_episodes``, 2 prompts x G=4, K=10 steps, up to 16 reasoning tokens:
  rounds/s and the share of the denoising time spent in the transformer;
* ``iteration``: one training iteration (rollout + update, two minibatches), LoRA (rank 16 on
  both models, the reference = adapters disabled) beside full fine-tuning (the reference = a
  frozen copy of both trained models), in the same run, each with the peak memory of building
  the trainer and running one iteration in a fresh process (``bench/peak_memory.py``).
"""

import importlib
import time

import pytest
import torch
from benchutil import DEVICE, run
from peak_memory import peak_extra_bytes

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from tiny_hf_models import save_lm, save_sd3  # noqa: E402

from unigrpo.adapters.lm_diffusers import load_policy  # noqa: E402
from unigrpo.rewards import WeightedRewards  # noqa: E402
from unigrpo.rollout import RolloutConfig, generate_episodes  # noqa: E402
from unigrpo.task import ModelConfig  # noqa: E402
from unigrpo.train import Trainer, load_config  # noqa: E402

denoise_mod = importlib.import_module("unigrpo.rollout.denoise")
PROMPTS = ["a red circle left of a blue square", "two green triangles above a yellow star"]
G, K, TOKENS = 4, 10, 16


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-model")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return {"lm": save_lm(root / "lm", hidden=256, layers=4), "sd3": save_sd3(root / "sd3", heads=8, head_dim=32,
                                                                             layers=4),
            "lm_small": save_lm(root / "lm_small"), "sd3_small": save_sd3(root / "sd3_small"), "prompts": prompts}


def _bright(images, prompts, metadata):
    return images.float().mean(dim=(1, 2, 3))


def bench_two_model_rollout(benchmark, dirs):
    policy = load_policy(ModelConfig(type="lm+diffusers", lm=str(dirs["lm"]), pipeline=str(dirs["sd3"]),
                                     resolution=32), DEVICE).eval()
    cfg = RolloutConfig(num_generations=G, max_reasoning_tokens=TOKENS, num_inference_steps=K)
    rewards = WeightedRewards([("bright", _bright, 1.0)])
    gen = torch.Generator(DEVICE)
    spent = {"model": 0.0, "all": 0.0}
    velocity = denoise_mod.guided_velocity

    def timed(*a, **k):
        t = time.perf_counter()
        out = velocity(*a, **k)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        spent["model"] += time.perf_counter() - t
        return out

    def one():
        t = time.perf_counter()
        generate_episodes(policy, PROMPTS, [{}] * len(PROMPTS), rewards, cfg, gen.manual_seed(0))
        spent["all"] += time.perf_counter() - t

    denoise_mod.guided_velocity = timed
    try:
        benchmark.group = f"lm+diffusers rollout: {len(PROMPTS)} prompts x G={G}, K={K}"
        run(benchmark, one, rounds=3)
    finally:
        denoise_mod.guided_velocity = velocity
    rounds = len(PROMPTS) * G
    benchmark.extra_info["episodes_per_s"] = round(rounds / benchmark.stats.stats.mean, 2)
    benchmark.extra_info["transformer_share_of_rollout"] = round(spent["model"] / spent["all"], 3)


def _overrides(dirs, out, lora, small=False):
    suffix = "_small" if small else ""
    return ["model.type=lm+diffusers", f"model.lm={dirs['lm' + suffix]}", f"model.pipeline={dirs['sd3' + suffix]}",
            "model.resolution=32", f"model.lora_rank={lora}", f"model.device={DEVICE}", "task=prompts",
            f"task.file={dirs['prompts']}", "task.reward=brightness", "task.heldout_fraction=0",
            f"rollout.num_generations={G}", f"rollout.num_inference_steps={K}",
            f"rollout.max_reasoning_tokens={TOKENS}", "train.minibatch_size=4", f"train.output_dir={out}"]


_MEMORY_SETUP = """
import tempfile
from unigrpo.train import Trainer, load_config
overrides = {small} if 'SMALL' in globals() else {full}
"""
_MEMORY_CALL = """
with tempfile.TemporaryDirectory() as out:
    t = Trainer(load_config(None, overrides + [f"train.output_dir={{out}}/run"]), progress=False, evaluate=False)
    t.train_iteration()
"""


@pytest.mark.parametrize("lora", [16, 0], ids=["lora-16 (reference: adapters off)", "full (reference: a copy)"])
def bench_two_model_iteration(benchmark, dirs, tmp_path, lora):
    trainer = Trainer(load_config(None, _overrides(dirs, tmp_path / "run", lora)), progress=False, evaluate=False)
    trainer.train_iteration()  # warm-up
    benchmark.group = "lm+diffusers training iteration (rollout + update)"
    run(benchmark, trainer.train_iteration, rounds=3)
    trained = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    benchmark.extra_info["trained_params"] = trained
    benchmark.extra_info["all_params"] = sum(p.numel() for p in trainer.policy.parameters())
    strip = [o for o in _overrides(dirs, "", lora) if not o.startswith("train.output_dir")]
    small = [o for o in _overrides(dirs, "", lora, small=True) if not o.startswith("train.output_dir")]
    setup = _MEMORY_SETUP.format(small=repr(small), full=repr(strip))
    peak = peak_extra_bytes(setup, _MEMORY_CALL.format(), DEVICE)
    benchmark.extra_info["peak_extra_MiB"] = round(peak / 2**20, 1)  # building the trainer + one iteration

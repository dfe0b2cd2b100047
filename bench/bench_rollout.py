"""Rollout throughput of the built-in model (default size, random weights):
episodes/s and denoising steps/s, no-CFG beside CFG, eager beside CUDA-graphed
(on GPU), and the share of the denoising time spent in the model; and one round
per episode beside two (reason -> draw -> look -> reflect -> redraw)."""

import importlib
import time

import pytest
import torch
from benchutil import DEVICE, run

from unigrpo.shapes.model import ShapesConfig, ShapesModel
from unigrpo.rewards import WeightedRewards
from unigrpo.rollout import RolloutConfig, generate_episodes

denoise_mod = importlib.import_module("unigrpo.rollout.denoise")  # the module, not the function
engine_mod = importlib.import_module("unigrpo.rollout.engine")  # where rollouts look generate_reasoning up

PROMPTS = ["a red circle", "two squares the color of grass", "a blue triangle left of a yellow circle",
           "three triangles"]
G, K = 4, 10


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return ShapesModel(ShapesConfig()).to(DEVICE).eval()


def _rewards():
    return WeightedRewards([("mean", lambda im, p, m: im.float().mean(dim=(1, 2, 3)), 1.0)])


MODES = [("no-cfg", 1.0, False), ("cfg", 4.5, False)]
if DEVICE == "cuda":
    MODES += [("no-cfg graphed", 1.0, True), ("cfg graphed", 4.5, True)]


@pytest.mark.parametrize("mode,guidance,graphed", MODES, ids=[m[0] for m in MODES])
def bench_rollout(benchmark, policy, mode, guidance, graphed):
    cfg = RolloutConfig(num_generations=G, max_reasoning_tokens=24, num_inference_steps=K,
                        guidance_scale=guidance, use_cuda_graph=graphed)
    benchmark.group = f"rollout {len(PROMPTS)} prompts x G={G}, K={K} steps"
    gen = torch.Generator(DEVICE)
    # time split inside the denoising loop: velocity calls (model) vs the fused SDE step (sampler)
    spent = {"model": 0.0, "sampler": 0.0, "text": 0.0}
    originals = {"model": (denoise_mod, "guided_velocity"), "sampler": (denoise_mod.ops, "sde_step"),
                 "text": (engine_mod, "generate_reasoning")}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            spent[name] += time.perf_counter() - t
            return out
        return wrapper

    saved = {name: getattr(obj, attr) for name, (obj, attr) in originals.items()}
    if graphed:
        originals.pop("text")
    if not graphed:  # inside a graph the split cannot be timed from Python
        for name, (obj, attr) in originals.items():
            setattr(obj, attr, timed(name, saved[name]))
    try:
        run(benchmark, lambda: generate_episodes(policy, PROMPTS, PROMPTS, _rewards(), cfg, gen.manual_seed(0)),
            rounds=3)
    finally:
        for name, (obj, attr) in originals.items():
            setattr(obj, attr, saved[name])
    rounds = len(PROMPTS) * G
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["episodes_per_s"] = round(rounds / mean, 2)
    benchmark.extra_info["denoise_steps_per_s"] = round(rounds * K / mean, 1)
    if not graphed:
        benchmark.extra_info["denoise_model_share"] = round(spent["model"] / (spent["model"] + spent["sampler"]), 3)
        total = spent["model"] + spent["sampler"] + spent["text"]
        benchmark.extra_info["text_share_of_text_plus_denoise"] = round(spent["text"] / total, 3)


ROUNDS = [(1, False), (2, False)] + ([(1, True), (2, True)] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("max_rounds,graphed", ROUNDS, ids=[f"{r} round{'s' * (r > 1)}{' graphed' * g}"
                                                          for r, g in ROUNDS])
def bench_rollout_rounds(benchmark, policy, max_rounds, graphed):
    """Episodes/s and images/s with up to ``max_rounds`` images per episode: the cost of
    looking (one pass over text + earlier images) and of the second image."""
    cfg = RolloutConfig(num_generations=G, max_reasoning_tokens=24, num_inference_steps=K, max_rounds=max_rounds,
                        use_cuda_graph=graphed)
    benchmark.group = f"rollout rounds {len(PROMPTS)} prompts x G={G}, K={K} steps"
    gen = torch.Generator(DEVICE)
    images = []

    def once():
        b = generate_episodes(policy, PROMPTS, PROMPTS, _rewards(), cfg, gen.manual_seed(0))
        images.append(float(b.rounds_used.float().sum()))
    run(benchmark, once, rounds=3)
    episodes = len(PROMPTS) * G
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["episodes_per_s"] = round(episodes / mean, 2)
    benchmark.extra_info["images_per_episode"] = round(images[-1] / episodes, 2)
    benchmark.extra_info["images_per_s"] = round(images[-1] / mean, 2)

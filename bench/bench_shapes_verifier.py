"""Throughput of the shapes-task verifier (``unigrpo.shapes.score``).

    PYTHONPATH=. python -m pytest -q bench/bench_shapes_verifier.py --benchmark-only -p no:cacheprovider
    PYTHONPATH=. python bench/bench_shapes_verifier.py        # plain timing, no pytest

Inputs: 32x32 uint8 batches of held-out prompts' ground-truth renders
("render"), the same blurred + noised as float ("blurry"), and uniform noise
("noise", the worst case for connected components).  images/s is reported in
``extra_info`` (pytest-benchmark) or printed.
"""

import time

import numpy as np
import pytest

from unigrpo import shapes as S


def make_batch(kind: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    held = S.make_split(0).heldout
    prompts = [held[i] for i in rng.integers(len(held), size=n)]
    imgs, _ = S.render_prompts(prompts, rng)
    if kind == "blurry":
        x = imgs.astype(np.float32) / 255.0
        x = (x + np.roll(x, 1, 1) + np.roll(x, 1, 2) + np.roll(x, (1, 1), (1, 2))) / 4.0
        imgs = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
    elif kind == "noise":
        imgs = rng.integers(0, 256, imgs.shape, dtype=np.uint8)
    return imgs, prompts


@pytest.mark.parametrize("kind", ["render", "blurry", "noise"])
@pytest.mark.parametrize("n", [256, 1024])
def bench_score_throughput(benchmark, kind, n):
    imgs, prompts = make_batch(kind, n)
    benchmark.pedantic(S.score, (imgs, prompts), rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(n / benchmark.stats.stats.mean)


def main() -> None:
    for kind in ("render", "blurry", "noise"):
        for n in (256, 1024, 4096):
            imgs, prompts = make_batch(kind, n)
            S.score(imgs, prompts)  # warm-up
            reps, t0 = 5, time.perf_counter()
            for _ in range(reps):
                S.score(imgs, prompts)
            dt = (time.perf_counter() - t0) / reps
            print(f"{kind:7s} B={n:5d}: {dt * 1e3:8.1f} ms/batch  {n / dt:9.0f} images/s")


if __name__ == "__main__":
    main()

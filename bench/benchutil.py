"""Shared by the benchmarks: the device, which implementations to compare, timing."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def impls() -> list[str]:
    """"reference" (unigrpo.ops.reference, the spec) and every backend that is a real
    fast path here (the Triton interpreter on CPU measures numpy, not a kernel)."""
    from unigrpo.ops import available_backends

    names = [b for b in available_backends(torch.device(DEVICE)) if not (DEVICE == "cpu" and b == "triton")]
    return ["reference"] + names


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def run(benchmark, fn, rounds=5):
    """Time fn (which must finish its device work) with a warm-up round."""
    def timed():
        fn()
        sync()

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)

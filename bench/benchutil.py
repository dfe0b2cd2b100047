"""Shared by the benchmarks: the device, which implementations to compare, timing."""

import time

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


PEERS = ("compiled", "floor")


def impls() -> list[str]:
    """"reference" (unigrpo.ops.reference, the spec), its peers — "compiled"
    (``torch.compile`` of the same reference, compile time excluded and recorded apart)
    and "floor" (a plain pass over the same bytes: the memory-bandwidth limit) — and
    every backend that is a real fast path here (the Triton interpreter on CPU
    measures numpy, not a kernel)."""
    from unigrpo.ops import available_backends

    names = [b for b in available_backends(torch.device(DEVICE)) if not (DEVICE == "cpu" and b == "triton")]
    return ["reference", *PEERS] + names


_compiled: dict = {}


def compiled(fn, benchmark=None):
    """``torch.compile(fn)``, one per function; its first (compiling) call's seconds
    go to ``benchmark.extra_info['compile_s']`` when timed here."""
    if fn not in _compiled:
        _compiled[fn] = [torch.compile(fn), None]
    entry = _compiled[fn]

    def call(*args, **kwargs):
        if entry[1] is None:
            start = time.perf_counter()
            out = entry[0](*args, **kwargs)
            sync()
            entry[1] = time.perf_counter() - start
            return out
        return entry[0](*args, **kwargs)

    if benchmark is not None:
        benchmark.extra_info["compile_s"] = entry[1]
    return call


def record_compile_time(benchmark, fn):
    if fn in _compiled and _compiled[fn][1] is not None:
        benchmark.extra_info["compile_s"] = round(_compiled[fn][1], 1)


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def run(benchmark, fn, rounds=5):
    """Time fn (which must finish its device work) with a warm-up round."""
    def timed():
        fn()
        sync()

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)

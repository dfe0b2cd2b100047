"""The GPU checks that are not pytest tests, each printing one result line
(``name: PASS|FAIL detail``) and ``scripts/gpu_check.sh`` collecting them.

    python scripts/gpu_check.py dispatch    # the native CUDA backend is the one auto dispatch picks
    python scripts/gpu_check.py tiny        # every kernel once on tiny shapes (run under compute-sanitizer)
    python scripts/gpu_check.py large       # N x V > 2^31 elements and > 65535 rows, against fp64 on sampled rows
    python scripts/gpu_check.py bandwidth   # log-prob forward against a copy of the same bytes, after an L2 flush

Needs a CUDA device; nothing here is run by CI.
"""

from __future__ import annotations

import sys

import torch

from unigrpo import ops
from unigrpo.ops import reference as ref
from unigrpo.ops.dispatch import get_backend

DEV = torch.device("cuda")


def report(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{name}: {'PASS' if ok else 'FAIL'} {detail}".rstrip(), flush=True)
    return ok


def check_dispatch() -> bool:
    be = get_backend(DEV)
    return report("dispatch", be.name == "native", f"auto dispatch on cuda picks {be.name!r}")


def _logits(n, v, dtype, layout, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    full = torch.randn(n, v + 7, generator=g, device=DEV).to(dtype)
    if layout == "contig":
        return full[:, :v].contiguous()
    if layout == "stride":
        return full[:, :v]
    return full.view(-1)[1:1 + n * (v + 6)].view(n, v + 6)[:, :v]  # an odd base pointer and row stride


def check_tiny() -> bool:
    """Every kernel, forward and backward, three dtypes, odd V, strided and offset
    rows; compared with the reference so that a sanitizer run also checks values."""
    ok = True
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for layout in ("contig", "stride", "offset"):
            for n, v in ((3, 7), (5, 1031), (2, 4099)):
                for backend in ("native", "triton"):
                    logits = _logits(n, v, dtype, layout).requires_grad_(True)
                    ids = torch.randint(0, v, (n,), device=DEV)
                    logp, ent = ops.token_logprobs(logits, ids, temperature=0.7, return_entropy=True, backend=backend)
                    (logp.sum() + 0.5 * ent.sum()).backward()
                    lg = logits.detach().double().requires_grad_(True)
                    rl, re_ = ref.token_logprobs(lg, ids, 0.7, return_entropy=True)
                    (rl.sum() + 0.5 * re_.sum()).backward()
                    tol = 1e-4 if dtype == torch.float32 else 2e-2
                    good = (torch.allclose(logp.double(), rl, atol=tol, rtol=tol)
                            and torch.allclose(ent.double(), re_, atol=tol, rtol=tol)
                            and torch.allclose(logits.grad.double(), lg.grad, atol=tol, rtol=tol))
                    ok &= report(f"tiny token {backend} {dtype} {layout} N={n} V={v}", good)
        for backend in ("native", "triton"):
            b, d = 5, 3 * 17
            x, x_next, v_ref = (torch.randn(b, d, device=DEV, dtype=dtype) for _ in range(3))
            v = torch.randn(b, d, device=DEV, dtype=dtype, requires_grad=True)
            sig = torch.linspace(0.9, 0.5, b, device=DEV)
            out = ops.flow_grpo_step_loss(v, v_ref, x, x_next, sig, sig - 0.1, torch.zeros(b, device=DEV),
                                          torch.randn(b, device=DEV), clip_range=10.0, backend=backend)
            (out.loss.sum() + out.penalty.sum()).backward()
            w = torch.rand(d, device=DEV, dtype=dtype)
            mse = ops.velocity_mse(v.detach(), v_ref, w, backend=backend)
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            want_pen = ref.velocity_mse(v.detach().double(), v_ref.double())
            want_mse = ref.velocity_mse(v.detach().double(), v_ref.double(), w.double().expand(b, d))
            good = (bool(torch.isfinite(v.grad).all()) and torch.allclose(out.penalty.double(), want_pen, atol=tol, rtol=tol)
                    and torch.allclose(mse.double(), want_mse, atol=tol, rtol=tol))
            ok &= report(f"tiny sde {backend} {dtype}", good)
    return ok


def check_large() -> bool:
    """N x V past 2^31 elements (64-bit indexing) and B past the 65535 grid-y limit."""
    ok = True
    n, v = 14200, 151936  # 2.157e9 elements of bf16: 4.3 GB
    logits = torch.empty(n, v, device=DEV, dtype=torch.bfloat16).normal_()
    ids = torch.randint(0, v, (n,), device=DEV)
    logp = ops.token_logprobs(logits, ids, backend="native")
    rows = torch.tensor([0, 1, n // 2, n - 2, n - 1], device=DEV)
    want = ref.token_logprobs(logits[rows].double(), ids[rows])
    ok &= report("large token N*V > 2^31", torch.allclose(logp[rows].double(), want, atol=1e-3, rtol=1e-4),
                 f"N={n} V={v}, max err {float((logp[rows].double() - want).abs().max()):.2e}")
    del logits
    b, d = 70000, 48
    x, x_next, v_ = (torch.randn(b, d, device=DEV) for _ in range(3))
    sig = torch.full((b,), 0.6, device=DEV)
    lp = ops.sde_step_logprob(x, x_next, v_, sig, sig - 0.1, backend="native")
    rows = torch.tensor([0, 65535, 65536, b - 1], device=DEV)
    want = ref.sde_step_logprob(x[rows].double(), x_next[rows].double(), v_[rows].double(), sig[rows].double(),
                                sig[rows].double() - 0.1, 0.7)
    ok &= report("large sde B > 65535", torch.allclose(lp[rows].double(), want, atol=1e-4, rtol=1e-5), f"B={b}")
    return ok


def _time_ms(fn, flush: torch.Tensor, reps: int = 20) -> float:
    times = []
    for _ in range(reps):
        flush.zero_()  # evict the inputs from L2
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def check_bandwidth() -> bool:
    """Forward log-prob time against a device copy of the same bytes (the floor)."""
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=DEV)
    ok = True
    for n, v, dtype in ((512, 32000, torch.bfloat16), (4096, 32000, torch.bfloat16), (4096, 151936, torch.bfloat16),
                        (64, 151936, torch.bfloat16), (4096, 32000, torch.float32)):
        logits = torch.randn(n, v, device=DEV).to(dtype)
        ids = torch.randint(0, v, (n,), device=DEV)
        dst = torch.empty_like(logits)
        copy_ms = _time_ms(lambda: dst.copy_(logits), flush)
        bytes_read = logits.numel() * logits.element_size()
        copy_bw = 2 * bytes_read / copy_ms / 1e6  # GB/s, read + write
        line = []
        for backend in ("native", "triton"):
            ms = _time_ms(lambda: ops.token_logprobs(logits, ids, backend=backend), flush)
            frac = bytes_read / ms / 1e6 / copy_bw
            line.append(f"{backend} {ms:.3f} ms = {frac:.0%} of copy bandwidth")
            if backend == "native" and n >= 512:
                ok &= frac >= 0.75
        report(f"bandwidth token_logprobs fwd N={n} V={v} {dtype}", True,
               f"copy {copy_bw:.0f} GB/s; " + "; ".join(line))
    return report("bandwidth target (native >= 75% of copy bandwidth, N >= 512)", ok)


if __name__ == "__main__":
    checks = {"dispatch": check_dispatch, "tiny": check_tiny, "large": check_large, "bandwidth": check_bandwidth}
    if len(sys.argv) != 2 or sys.argv[1] not in checks or not torch.cuda.is_available():
        print(f"usage: python {sys.argv[0]} {{{'|'.join(checks)}}} (needs a CUDA device)", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if checks[sys.argv[1]]() else 1)

"""token_logprobs and the fused GRPO token loss: each backend beside the
reference, forward and forward+backward, with peak extra memory."""

import pytest
import torch
from benchutil import DEVICE, PEERS, compiled, impls, record_compile_time, run
from peak_memory import peak_extra_bytes

from unigrpo import ops
from unigrpo.ops import reference as R

SHAPES = [(2048, 32000), (512, 151936)]
DTYPE = torch.float32 if DEVICE == "cpu" else torch.bfloat16


def _inputs(n, v):
    logits = torch.randn(n, v, device=DEVICE).to(DTYPE).requires_grad_(True)
    ids = torch.randint(0, v, (n,), device=DEVICE)
    old = torch.randn(n, device=DEVICE) - 10
    adv = torch.randn(n, device=DEVICE)
    mask = torch.ones(n, device=DEVICE)
    return logits, ids, old, adv, mask


def _ref_grpo(logits, ids, old, adv, mask):
    return R.grpo_token_loss(R.token_logprobs(logits, ids), old, adv, mask, 0.2, 0.28)


def _floor(logits):
    """The bandwidth floor: one read of the logits (forward); with autograd, a second
    read and one write of a logits-sized gradient (backward)."""
    return _ReadWrite.apply(logits)


class _ReadWrite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.amax(-1)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.empty_like(x).copy_(x)


def _logprobs(impl, logits, ids):
    if impl == "reference":
        return R.token_logprobs(logits, ids, 1.0)
    if impl == "compiled":
        return compiled(R.token_logprobs)(logits, ids)
    if impl == "floor":
        return _floor(logits)
    return ops.token_logprobs(logits, ids, 1.0, backend=impl)


def _grpo(impl, logits, ids, old, adv, mask):
    if impl == "reference":
        return _ref_grpo(logits, ids, old, adv, mask)
    if impl == "compiled":
        return compiled(_ref_grpo)(logits, ids, old, adv, mask)
    if impl == "floor":
        return _floor(logits)
    return ops.grpo_token_loss(old, adv, mask, logits=logits, ids=ids, eps_low=0.2, eps_high=0.28,
                               backend=impl).loss


OPS = {"token_logprobs": lambda impl, x, ids, old, adv, mask: _logprobs(impl, x, ids),
       "grpo_token_loss": _grpo}


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("n,v", SHAPES, ids=lambda s: str(s))
@pytest.mark.parametrize("op", list(OPS))
def bench_token_side(benchmark, op, n, v, passes, impl):
    args = _inputs(n, v)
    fn = OPS[op]
    benchmark.group = f"{op} N={n} V={v} {DTYPE} {passes}"
    benchmark.extra_info["logits_MiB"] = args[0].numel() * args[0].element_size() / 2**20

    def step():
        if passes == "fwd":
            with torch.no_grad():
                fn(impl, *args)
        else:
            fn(impl, *args).sum().backward()
            args[0].grad = None

    run(benchmark, step, rounds=3 if DEVICE == "cpu" else 20)
    record_compile_time(benchmark, R.token_logprobs if op == "token_logprobs" else _ref_grpo)
    if passes == "fwd+bwd" and impl not in PEERS:
        setup = (f"import torch\nfrom unigrpo import ops\nfrom unigrpo.ops import reference as R\n"
                 f"n, v = (4, 1000) if 'SMALL' in globals() else ({n}, {v})\n"
                 f"x = torch.randn(n, v, device='{DEVICE}').to({DTYPE}).requires_grad_(True)\n"
                 f"ids = torch.randint(0, v, (n,), device='{DEVICE}')\n"
                 f"old, adv, mask = torch.randn(n, device='{DEVICE}') - 10, torch.randn(n, device='{DEVICE}'), "
                 f"torch.ones(n, device='{DEVICE}')\n")
        call = {("token_logprobs", True): "R.token_logprobs(x, ids).sum().backward(); x.grad = None",
                ("token_logprobs", False): f"ops.token_logprobs(x, ids, backend='{impl}').sum().backward(); x.grad = None",
                ("grpo_token_loss", True): "R.grpo_token_loss(R.token_logprobs(x, ids), old, adv, mask, 0.2, 0.28)"
                                           ".sum().backward(); x.grad = None",
                ("grpo_token_loss", False): f"ops.grpo_token_loss(old, adv, mask, logits=x, ids=ids, eps_low=0.2, "
                                            f"eps_high=0.28, backend='{impl}').loss.sum().backward(); x.grad = None",
                }[(op, impl == "reference")]
        extra = peak_extra_bytes(setup, call, DEVICE)
        benchmark.extra_info["peak_extra_MiB"] = round(extra / 2**20, 1)
        benchmark.extra_info["peak_extra_x_logits"] = round(extra / 2**20 / benchmark.extra_info["logits_MiB"], 2)


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("n", [1024, 4096])
def bench_fused_linear_memory_flat_in_n(benchmark, impl, n):
    """Peak extra memory of fused_linear_token_logprobs fwd+bwd vs N (V=32000, H=512)."""
    if impl in PEERS:
        pytest.skip("peers are timed on the token-side ops")
    v, h = 32000, 512
    benchmark.group = f"fused_linear_token_logprobs N={n} V={v} H={h} fwd+bwd"
    setup = (f"import torch\nfrom unigrpo import ops\nfrom unigrpo.ops import reference as R\n"
             f"n = 8 if 'SMALL' in globals() else {n}\n"
             f"hid = torch.randn(n, {h}, device='{DEVICE}', requires_grad=True)\n"
             f"w = torch.randn({v}, {h}, device='{DEVICE}', requires_grad=True)\n"
             f"ids = torch.randint(0, {v}, (n,), device='{DEVICE}')\n")
    call = ("R.fused_linear_token_logprobs(hid, w, ids)" if impl == "reference" else
            f"ops.fused_linear_token_logprobs(hid, w, ids, backend='{impl}')") + \
        ".sum().backward(); hid.grad = w.grad = None"
    extra = peak_extra_bytes(setup, call, DEVICE)
    benchmark.extra_info["peak_extra_MiB"] = round(extra / 2**20, 1)
    benchmark.extra_info["logits_MiB"] = n * v * 4 / 2**20
    env = {}
    exec(setup.replace("'SMALL' in globals()", "False"), env)
    run(benchmark, lambda: exec(call, env), rounds=2 if DEVICE == "cpu" else 10)

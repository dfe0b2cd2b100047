"""Image-side ops at 640 rows x 3072 dims: sde_step_logprob, velocity_mse and
flow_grpo_step_loss, each backend beside the reference, fwd and fwd+bwd."""

import pytest
import torch
from benchutil import DEVICE, compiled, impls, record_compile_time, run

from unigrpo import ops
from unigrpo.ops import reference as R

B, D = 640, 3072
DTYPE = torch.float32 if DEVICE == "cpu" else torch.bfloat16


def _inputs():
    sig = torch.linspace(1.0, 0.1, B, device=DEVICE)
    nxt = sig - 0.09
    x, v, vr, noise = (torch.randn(B, D, device=DEVICE).to(DTYPE) for _ in range(4))
    xn = ops.sde_step(x, v, sig, nxt, 0.7, noise=noise)[0]
    old = ops.sde_step_logprob(x, xn, v, sig, nxt, 0.7)
    return dict(v=v.requires_grad_(True), vr=vr, x=x, xn=xn, sig=sig, nxt=nxt, old=old,
                adv=torch.randn(B, device=DEVICE))


REFERENCES = {  # one function per op, so each gets its own torch.compile (and compile time)
    "sde_step_logprob": lambda t: R.sde_step_logprob(t["x"], t["xn"], t["v"], t["sig"], t["nxt"], 0.7),
    "velocity_mse": lambda t: R.velocity_mse(t["v"], t["vr"]),
    "flow_grpo_step_loss": lambda t: sum(R.flow_grpo_step_loss(t["v"], t["vr"], t["x"], t["xn"], t["sig"], t["nxt"],
                                                               0.7, t["old"], t["adv"], 1e-4)),
}


def _floor(op, t):
    """One read of every (B, D) input the op needs (with autograd: one write of v's gradient)."""
    names = {"sde_step_logprob": ("x", "xn", "v"), "velocity_mse": ("v", "vr")}.get(op, ("x", "xn", "v", "vr"))
    return sum(t[k].sum(-1) for k in names)


def _call(op, impl, t):
    if impl == "compiled":
        return compiled(REFERENCES[op])(t)
    if impl == "floor":
        return _floor(op, t)
    if op == "sde_step_logprob":
        if impl == "reference":
            return R.sde_step_logprob(t["x"], t["xn"], t["v"], t["sig"], t["nxt"], 0.7)
        return ops.sde_step_logprob(t["x"], t["xn"], t["v"], t["sig"], t["nxt"], 0.7, backend=impl)
    if op == "velocity_mse":
        if impl == "reference":
            return R.velocity_mse(t["v"], t["vr"])
        return ops.velocity_mse(t["v"], t["vr"], backend=impl)
    # surrogate + penalty (weight 1): both row sums forward, both terms in the backward
    if impl == "reference":
        surrogate, penalty = R.flow_grpo_step_loss(t["v"], t["vr"], t["x"], t["xn"], t["sig"], t["nxt"], 0.7,
                                                   t["old"], t["adv"], 1e-4)
        return surrogate + penalty
    out = ops.flow_grpo_step_loss(t["v"], t["vr"], t["x"], t["xn"], t["sig"], t["nxt"], t["old"], t["adv"],
                                  backend=impl)
    return out.loss + out.penalty


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", ["sde_step_logprob", "velocity_mse", "flow_grpo_step_loss"])
def bench_image_side(benchmark, op, passes, impl):
    t = _inputs()
    benchmark.group = f"{op} B={B} D={D} {DTYPE} {passes}"

    def step():
        if passes == "fwd":
            with torch.no_grad():
                _call(op, impl, t)
        else:
            _call(op, impl, t).sum().backward()
            t["v"].grad = None

    run(benchmark, step, rounds=10 if DEVICE == "cpu" else 50)
    record_compile_time(benchmark, REFERENCES[op])

"""The text loss from hidden states and the LM head, forward+backward, with peak extra
memory: ``fused_linear_grpo_loss`` (gradients formed in the forward, three matmuls a
chunk) beside the eager reference (full logits), ``torch.compile`` of it, the chunked
log-probs followed by ``grpo_token_loss`` (``unfused``: what the trainer ran before,
four matmuls a chunk), and Liger-Kernel's ``LigerFusedLinearGRPOLoss`` where installed
(``pip install liger-kernel``; its default chunk of one sequence, compiled). Every
implementation computes the same ``dapo`` loss; the Liger row checks that first."""

import importlib.util

import pytest
import torch
from benchutil import DEVICE, compiled, record_compile_time, run
from peak_memory import peak_extra_bytes

from unigrpo import ops
from unigrpo.ops import reference as R

V, H, T = 32000, 896, 128  # Qwen2.5-0.5B's head width, a 32k vocabulary, 128-token completions
DTYPE = torch.float32 if DEVICE == "cpu" else torch.bfloat16
LIGER = importlib.util.find_spec("liger_kernel") is not None
IMPLS = ["reference", "compiled", "unfused", "native", "torch"] + (["liger"] if LIGER else [])

# one setup for the timing and the memory subprocess: B sequences of T tokens
SETUP = """
import torch
from unigrpo import ops
from unigrpo.ops import reference as R
torch.manual_seed(0)
b = 1 if 'SMALL' in globals() else {b}
hid = (torch.randn(b, {t}, {h}, device='{dev}') * 0.5).to({dtype}).requires_grad_(True)
w = (torch.randn({v}, {h}, device='{dev}') / {h} ** 0.5).to({dtype}).requires_grad_(True)
ids = torch.randint(0, {v}, (b, {t}), device='{dev}')
mask = torch.ones(b, {t}, device='{dev}')
adv = torch.randn(b, device='{dev}')
with torch.no_grad():
    old = R.fused_linear_token_logprobs(hid.reshape(-1, {h}), w, ids.reshape(-1)).float().reshape(b, {t})
    old = old + 0.1 * torch.randn_like(old)
weights = (mask / mask.sum()).reshape(-1)  # dapo: every token of the batch weighs the same
"""

CALLS = {
    "reference": "R.fused_linear_grpo_loss(hid.reshape(-1, {h}), w, ids.reshape(-1), old.reshape(-1), "
                 "adv.repeat_interleave({t}), weights, 1.0, 0.2, 0.28)",
    "unfused": "(ops.grpo_token_loss(old.reshape(-1), adv.repeat_interleave({t}), weights, "
               "logp=ops.fused_linear_token_logprobs(hid.reshape(-1, {h}), w, ids.reshape(-1)), eps_low=0.2, "
               "eps_high=0.28).loss.sum())",
    "fused": "ops.fused_linear_grpo_loss(hid.reshape(-1, {h}), w, ids.reshape(-1), old.reshape(-1), "
             "adv.repeat_interleave({t}), weights, eps_low=0.2, eps_high=0.28, backend='{impl}').loss",
    "liger": "liger(hid, w, ids, mask, adv, old_per_token_logps=old)[0]",
}
LIGER_SETUP = ("from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss\n"
               "liger = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, epsilon_low=0.2, epsilon_high=0.28, "
               "loss_type='dapo')\n")


def _call(impl: str) -> str:
    key = impl if impl in CALLS else "fused"
    return CALLS[key].format(h=H, t=T, impl=impl) + ".backward(); hid.grad = w.grad = None"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("b", [8, 32], ids=lambda b: f"N={b * T}")
def bench_fused_linear_grpo_loss(benchmark, impl, b):
    benchmark.group = f"fused linear GRPO loss N={b * T} V={V} H={H} {DTYPE} fwd+bwd"
    setup = SETUP.format(b=b, t=T, h=H, v=V, dev=DEVICE, dtype=DTYPE) + (LIGER_SETUP if impl == "liger" else "")
    env: dict = {}
    exec(setup.replace("'SMALL' in globals()", "False"), env)
    if impl == "liger":  # the same objective: its dapo loss equals the reference's
        want = eval(CALLS["reference"].format(h=H, t=T), env)
        got = eval(CALLS["liger"], env)
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-4, atol=1e-5)
    if impl == "compiled":
        fn = compiled(R.fused_linear_grpo_loss, benchmark)
        env["R"] = type("R", (), {"fused_linear_grpo_loss": staticmethod(fn)})
        call = _call("reference")
    else:
        call = _call(impl)
        extra = peak_extra_bytes(setup, call, DEVICE)
        benchmark.extra_info["peak_extra_MiB"] = round(extra / 2**20, 1)
    benchmark.extra_info["logits_MiB"] = round(b * T * V * DTYPE.itemsize / 2**20, 1)
    run(benchmark, lambda: exec(call, env), rounds=3 if DEVICE == "cpu" else 10)
    if impl == "compiled":
        record_compile_time(benchmark, R.fused_linear_grpo_loss)

"""What only the Triton backend promises: its module surface, CPU use only under
the interpreter, empty batches, the row-sum launcher's split programs, and on a
GPU the interpreter's small blocks forced onto the compiled kernels. Its values
against torch_backend are checked, with every other backend's, in
test_backend_contract.py (small shapes under the interpreter).

Without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 is
set below, before triton is imported).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernels' definition

import pytest  # noqa: E402

pytest.importorskip("triton")

from ops.backend_support import TRITON, check_token, make_flow_inputs, make_logits  # noqa: E402

from unigrpo.ops.backends import torch_backend as ref  # noqa: E402
from unigrpo.ops.backends import triton as tb  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")

if not tb.available_for(DEV):
    pytest.skip(f"triton backend unavailable: {tb.load_error}", allow_module_level=True)


# ------------------------------------------------------------------ module


def test_module_surface():
    assert tb.name == "triton"
    assert tb.load_error is None
    assert tb.available_for(DEV) and tb.available_for(torch.empty(1, device=DEV))
    assert not tb.available_for("meta")


def test_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not tb.available_for("cpu")


# ------------------------------------------------------------------ empty batches


def test_logprobs_empty_batch():
    logits = torch.randn(0, 10, device=DEV)
    ids = torch.zeros(0, dtype=torch.long, device=DEV)
    logp, lse, ent = tb.logprob_forward(logits, ids, 1.0, True)
    assert logp.shape == ent.shape == (0,) and lse.shape == (0, 2)
    g = tb.logprob_backward(logits, ids, lse, 1.0, logp, None, None)
    assert g.shape == (0, 10)


def test_flow_empty_batch():
    x, x_next, v, cx, cv, v_ref, weight, a, b = make_flow_inputs(DEV, 0, 16, torch.float32, "D")
    s1, s2 = tb.sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, True, True)
    assert s1.shape == s2.shape == (0,)
    assert tb.sde_row_grad(x, x_next, v, cx, cv, v_ref, weight, a, b).shape == (0, 16)


# ------------------------------------------------------------------ launchers


@pytest.mark.parametrize("split", [1, 3, 8])
def test_sde_row_sums_launcher_split(split):
    """Row sums split over `split` programs per row (uneven chunk counts)."""
    from unigrpo.ops.triton import launch_sde_row_sums

    x, x_next, v, cx, cv, v_ref, weight, _, _ = make_flow_inputs(DEV, 2, 1000, torch.float32, "D", seed=9)
    s1p = torch.empty((2, split), device=DEV)
    s2p = torch.empty((2, split), device=DEV)
    launch_sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, s1p, s2p, block_d=128, split=split, num_warps=1)
    want = ref.sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, True, True)
    torch.testing.assert_close(s1p.sum(-1), want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2p.sum(-1), want[1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- GPU only


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_small_blocks(monkeypatch, dtype):
    """Force the interpreter's small blocks on the GPU: chunk loops, tails, splits."""
    monkeypatch.setattr(tb, "GPU_BLOCK_V", 256)
    monkeypatch.setattr(tb, "GPU_BLOCK_D", 128)
    for v in (7, 300, 1000):
        logits, ids = make_logits(DEV, 5, v, dtype, "stride", extreme=True, seed=v)
        check_token(TRITON, logits, ids, 2.0, want_entropy=True)
    for shape in [(1, 1), (1, 7), (2, 300), (5, 300), (3, 1000), (4, 65536)]:
        x, x_next, v_, cx, cv, v_ref, w, a, b = make_flow_inputs(DEV, *shape, dtype, "BD", seed=3)
        got = tb.sde_row_sums(x, x_next, v_, cx, cv, v_ref, w, True, True)
        want = ref.sde_row_sums(x, x_next, v_, cx, cv, v_ref, w, True, True)
        for s_got, s_want in zip(got, want):
            torch.testing.assert_close(s_got, s_want, rtol=1e-4, atol=1e-4)
        got = tb.sde_row_grad(x, x_next, v_, cx, cv, v_ref, w, a, b)
        want = ref.sde_row_grad(x, x_next, v_, cx, cv, v_ref, w, a, b)
        torch.testing.assert_close(got.float(), want.float(), **TRITON.tol.output_tol(dtype))

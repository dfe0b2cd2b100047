"""What only the native CUDA kernels (``unigrpo._C_cuda`` through
``unigrpo.ops.backends.native``) promise: the module surface, the grid-stride row
loops with more rows than SMs, NaN (not an exception) for an out-of-range id,
non-default streams, CUDA-graph capture and the raw ABI's argument checks. Their
values against torch_backend (one row per warp or per CTA, 16-byte vectors with
scalar heads / tails, unaligned row strides and base pointers, the column-split
backward grid, vectorised and element-wise flow kernels, -inf / NaN / extreme
logits) are checked, with every other backend's, in test_backend_contract.py.
Runs only with a GPU.
"""

import os

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

from ops.backend_support import NATIVE_CUDA, check_token, make_logits  # noqa: E402

from unigrpo.ops.backends import native  # noqa: E402
from unigrpo.ops.backends import torch_backend as ref  # noqa: E402

DEV = torch.device("cuda")
_BF16_TOL = NATIVE_CUDA.tol.output_tol(torch.bfloat16)  # outputs rounded to bf16 may differ by 1-2 ulp


@pytest.fixture(autouse=True, scope="module")
def _native_cuda():
    if native.available_for(DEV):
        return
    if os.environ.get("UNIGRPO_SKIP_CUDA"):
        pytest.skip(f"native CUDA kernels not built (UNIGRPO_SKIP_CUDA): {native.load_error}")
    pytest.fail(f"a GPU is present but the native CUDA kernels are unavailable: {native.load_error}")


# ------------------------------------------------------------------ module


def test_module_surface():
    mod = native._C_cuda
    assert mod.device_count() == torch.cuda.device_count()
    assert mod.runtime_version() > 0
    assert mod.driver_version() >= mod.runtime_version() // 1000 * 1000  # driver new enough for the runtime


# ------------------------------------------------------------------ tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("v", [1000, 4099, 32000])
def test_logprobs_many_rows(dtype, v):
    """More rows than SMs: the 256-thread CTA kernel and grid-stride row loops."""
    n = 2 * torch.cuda.get_device_properties(DEV).multi_processor_count + 3
    logits, ids = make_logits(DEV, n, v, dtype, "stride", seed=v + 2)
    check_token(NATIVE_CUDA, logits, ids, 1.0, want_entropy=True)


def test_out_of_range_id_gives_nan():
    """Kernels cannot raise (the ops layer checks ids); a bad id yields logp = NaN for its row."""
    logits = torch.randn(3, 50, device=DEV)
    ids = torch.tensor([0, 50, -1], device=DEV)
    logp, lse, _ = native.logprob_forward(logits, ids, 1.0, False)
    assert torch.isfinite(logp[0]) and torch.isnan(logp[1:]).all()
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1))


def test_non_default_stream():
    logits, ids = make_logits(DEV, 64, 32000, torch.bfloat16, seed=6)
    exp = ref.logprob_forward(logits, ids, 1.0, True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = native.logprob_forward(logits, ids, 1.0, True)
        grad = native.logprob_backward(logits, ids, exp[1], 1.0, exp[0], None, None)
    torch.cuda.current_stream().wait_stream(side)
    for got, want in zip(out, exp):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    want = ref.logprob_backward(logits, ids, exp[1], 1.0, exp[0], None, None)
    torch.testing.assert_close(grad.float(), want.float(), **_BF16_TOL)


def test_cuda_graph_capture():
    """logprob_forward / backward captured in a CUDA graph replay like eager on new inputs."""
    static_logits, static_ids = make_logits(DEV, 8, 32000, torch.bfloat16, seed=7)
    g = torch.randn(8, device=DEV)
    # warm up on a side stream (torch's recipe; also loads the kernels)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            logp, lse, ent = native.logprob_forward(static_logits, static_ids, 0.8, True)
            native.logprob_backward(static_logits, static_ids, lse, 0.8, g, g, ent)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logp, lse, ent = native.logprob_forward(static_logits, static_ids, 0.8, True)
        grad = native.logprob_backward(static_logits, static_ids, lse, 0.8, g, g, ent)

    for seed in (8, 9):
        new_logits, new_ids = make_logits(DEV, 8, 32000, torch.bfloat16, seed=seed)
        static_logits.copy_(new_logits)
        static_ids.copy_(new_ids)
        graph.replay()
        torch.cuda.synchronize()
        eager = native.logprob_forward(new_logits, new_ids, 0.8, True)
        eager_grad = native.logprob_backward(new_logits, new_ids, eager[1], 0.8, g, g, eager[2])
        for got, want in zip((logp, lse, ent), eager):
            assert torch.equal(got, want)
        assert torch.equal(grad, eager_grad)


# ------------------------------------------------------------ raw ABI checks


def test_abi_rejects_bad_arguments():
    """Checked before anything is launched: ValueError naming the argument."""
    C = native._C_cuda
    s = torch.cuda.current_stream().cuda_stream
    logits = torch.randn(3, 10, device=DEV)
    ids = torch.zeros(3, dtype=torch.long, device=DEV)
    out = torch.empty(3, device=DEV)
    lp, ip, op = logits.data_ptr(), ids.data_ptr(), out.data_ptr()
    with pytest.raises(ValueError, match="N"):
        C.logprob_forward(lp, 0, 0, 10, 10, ip, 1.0, op, op, 0, s)
    with pytest.raises(ValueError, match="V"):
        C.logprob_forward(lp, 0, 3, 0, 10, ip, 1.0, op, op, 0, s)
    with pytest.raises(ValueError, match="row_stride"):
        C.logprob_forward(lp, 0, 3, 10, 9, ip, 1.0, op, op, 0, s)
    with pytest.raises(ValueError, match="dtype"):
        C.logprob_forward(lp, 7, 3, 10, 10, ip, 1.0, op, op, 0, s)
    with pytest.raises(ValueError, match="logits"):
        C.logprob_forward(0, 0, 3, 10, 10, ip, 1.0, op, op, 0, s)
    with pytest.raises(ValueError, match="lse"):
        C.logprob_forward(lp, 0, 3, 10, 10, ip, 1.0, op, 0, 0, s)
    with pytest.raises(ValueError, match="inv_temp"):
        C.logprob_forward(lp, 0, 3, 10, 10, ip, float("inf"), op, op, 0, s)
    with pytest.raises(ValueError, match="entropy"):  # grad_entropy without entropy
        C.logprob_backward(lp, 0, 3, 10, 10, ip, op, 1.0, op, op, 0, lp, s)
    with pytest.raises(ValueError, match="weight_row_stride"):
        C.sde_row_sums(0, 3, 10, 0, 0, lp, 0, 0, lp, lp, 7, 0, op, s)
    with pytest.raises(ValueError, match="x_next"):
        C.sde_row_grad(0, 3, 10, lp, 0, lp, op, op, 0, 0, 0, op, 0, lp, s)
    torch.cuda.synchronize()  # nothing was launched, nothing failed

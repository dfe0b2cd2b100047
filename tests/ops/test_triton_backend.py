"""The Triton backend against the PyTorch reference backend, function by function.

Without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 is
set below, before triton is imported) with the backend's small interpreter
block sizes, so V / D that are not block multiples exercise the chunk loops and
the masked tails. With CUDA the same tests run compiled on the GPU, plus the
``cuda``-marked ones (bf16, large V, forced small blocks).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernels' definition

import inspect  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton")

from unigrpo.ops.backends import torch_backend as ref  # noqa: E402
from unigrpo.ops.backends import triton as tb  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")

if not tb.available_for(DEV):
    pytest.skip(f"triton backend unavailable: {tb.load_error}", allow_module_level=True)


def _interp_bf16_ok() -> bool:
    """Whether this triton's interpreter handles bf16 loads (numpy has no bf16)."""
    if CUDA:
        return True
    import triton
    import triton.language as tl

    @triton.jit
    def _copy(src, dst, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(dst + offs, tl.load(src + offs).to(tl.float32) * 2.0)

    try:
        src = torch.tensor([1.5, -2.25, 3.0, 0.5], dtype=torch.bfloat16)
        dst = torch.empty(4)
        _copy[(1,)](src, dst, BLOCK=4)
        return torch.equal(dst, src.float() * 2)
    except Exception:
        return False


DTYPES = [torch.float32, torch.float16]
if _interp_bf16_ok():
    DTYPES.append(torch.bfloat16)

# Tolerance for values rounded to a 16-bit output dtype (1-2 ulp disagreements).
_OUT_TOL = {
    torch.float32: dict(rtol=1e-5, atol=5e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4),
}


def _logits(n, v, dtype, strided, extreme=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(n, v + 5, generator=g) * 3.0
    if extreme:
        big = torch.randint(0, 2, (n, v + 5), generator=g).float() * 2e4 - 1e4  # +-1e4
        pick = torch.rand(n, v + 5, generator=g) < 0.3
        full = torch.where(pick, big, full)
        full[0, 0] = 1e4  # max in the first chunk
        if n > 1:
            full[1, v - 1] = 1e4  # max in the last (partial) chunk
        if n > 2:
            full[2, :v] = -1e4  # all equal
    full = full.to(dtype).to(DEV)
    logits = full[:, :v] if strided else full[:, :v].contiguous()
    if strided:
        assert logits.stride(0) == v + 5 and logits.stride(1) == 1
    ids = torch.randint(0, v, (n,), generator=g).to(DEV)
    return logits, ids


def _check_token(logits, ids, inv_temp, want_entropy, seed=1):
    n, v = logits.shape
    out = tb.logprob_forward(logits, ids, inv_temp, want_entropy)
    exp = ref.logprob_forward(logits, ids, inv_temp, want_entropy)
    for got in out[:2] + (out[2:] if want_entropy else ()):
        assert got.dtype == torch.float32 and got.shape == (n,)
    # Both compute logp from (z - max) and the entropy from non-negative terms,
    # so neither tolerance grows with |z| (lse itself is rounded at |lse|).
    torch.testing.assert_close(out[0], exp[0], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(out[1], exp[1], rtol=1e-6, atol=1e-5)
    if want_entropy:
        torch.testing.assert_close(out[2], exp[2], rtol=1e-5, atol=1e-5)
    else:
        assert out[2] is None

    g = torch.Generator().manual_seed(seed)
    grad_logp = torch.randn(n, generator=g).to(DEV)
    grad_ent = torch.randn(n, generator=g).to(DEV) if want_entropy else None
    ent = exp[2] if want_entropy else None
    got = tb.logprob_backward(logits, ids, exp[1], inv_temp, grad_logp, grad_ent, ent)
    want = ref.logprob_backward(logits, ids, exp[1], inv_temp, grad_logp, grad_ent, ent)
    assert got.dtype == logits.dtype and got.shape == (n, v) and got.is_contiguous()
    torch.testing.assert_close(got.float(), want.float(), **_OUT_TOL[logits.dtype])


# ------------------------------------------------------------------ module


def test_module_surface():
    assert tb.name == "triton"
    assert tb.load_error is None
    assert tb.available_for(DEV) and tb.available_for(torch.empty(1, device=DEV))
    assert not tb.available_for("meta")
    for fn in ("logprob_forward", "logprob_backward", "flow_row_sums", "flow_row_grad"):
        assert inspect.signature(getattr(tb, fn)) == inspect.signature(getattr(ref, fn)), fn


def test_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not tb.available_for("cpu")


# ------------------------------------------------------------------ tokens


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [1, 7, 300, 1000])
@pytest.mark.parametrize("strided", [False, True], ids=["contig", "stride>V"])
@pytest.mark.parametrize("want_entropy", [False, True], ids=["noent", "ent"])
def test_logprobs(dtype, v, strided, want_entropy):
    logits, ids = _logits(3, v, dtype, strided, seed=v)
    _check_token(logits, ids, 1.0, want_entropy)


@pytest.mark.parametrize("inv_temp", [0.5, 2.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [7, 1000])
def test_logprobs_temperature(inv_temp, dtype, v):
    logits, ids = _logits(2, v, dtype, strided=True, seed=7 * v)
    _check_token(logits, ids, inv_temp, want_entropy=True)


@pytest.mark.parametrize("inv_temp", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [7, 1000])
def test_logprobs_extreme(inv_temp, dtype, v):
    logits, ids = _logits(4, v, dtype, strided=True, extreme=True, seed=v + 3)
    _check_token(logits, ids, inv_temp, want_entropy=True)
    logp, lse, ent = tb.logprob_forward(logits, ids, inv_temp, True)
    assert torch.isfinite(logp).all() and torch.isfinite(lse).all() and torch.isfinite(ent).all()


@pytest.mark.parametrize("v", [1, 300])
def test_logprobs_single_row(v):
    logits, ids = _logits(1, v, torch.float32, strided=False, seed=11)
    _check_token(logits, ids, 1.0, want_entropy=True)
    _check_token(logits, ids, 0.5, want_entropy=False)


def test_logprobs_single_token_vocab_values():
    logits = torch.tensor([[3.0], [-2.0]], device=DEV)
    ids = torch.zeros(2, dtype=torch.long, device=DEV)
    logp, lse, ent = tb.logprob_forward(logits, ids, 2.0, True)
    torch.testing.assert_close(logp, torch.zeros(2, device=DEV))
    torch.testing.assert_close(lse, torch.tensor([6.0, -4.0], device=DEV))
    torch.testing.assert_close(ent, torch.zeros(2, device=DEV))


def test_logprobs_entropy_minus_inf_logits():
    """-inf logits (masked vocabulary) contribute nothing; the reference gives NaN."""
    logits = torch.randn(2, 300, device=DEV)
    logits[:, 100:250] = float("-inf")
    ids = torch.tensor([3, 260], device=DEV)
    logp, lse, ent = tb.logprob_forward(logits, ids, 1.0, True)
    keep = torch.cat([logits[:, :100], logits[:, 250:]], 1)
    want = ref.logprob_forward(keep, torch.tensor([3, 110], device=DEV), 1.0, True)
    for got, exp in zip((logp, lse, ent), want):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
    grad = tb.logprob_backward(logits, ids, lse, 1.0, torch.ones(2, device=DEV), torch.ones(2, device=DEV), ent)
    assert torch.isfinite(grad).all() and (grad[:, 100:250] == 0).all()


def test_logprobs_empty_batch():
    logits = torch.randn(0, 10, device=DEV)
    ids = torch.zeros(0, dtype=torch.long, device=DEV)
    logp, lse, ent = tb.logprob_forward(logits, ids, 1.0, True)
    assert logp.shape == lse.shape == ent.shape == (0,)
    g = tb.logprob_backward(logits, ids, lse, 1.0, logp, None, None)
    assert g.shape == (0, 10)


def test_logprob_backward_with_own_forward():
    """Chain the Triton forward into the Triton backward (fp16, strided)."""
    logits, ids = _logits(3, 300, torch.float16, strided=True, seed=5)
    logp, lse, ent = tb.logprob_forward(logits, ids, 0.5, True)
    g, ge = torch.randn(3, device=DEV), torch.randn(3, device=DEV)
    got = tb.logprob_backward(logits, ids, lse, 0.5, g, ge, ent)
    _, lse_r, ent_r = ref.logprob_forward(logits, ids, 0.5, True)
    want = ref.logprob_backward(logits, ids, lse_r, 0.5, g, ge, ent_r)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=1e-4)


# ------------------------------------------------------------------- flows


def _flow_inputs(bsz, d, dtype, weight_kind, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(DEV)

    x, x_next, v, v_ref = rnd(bsz, d), rnd(bsz, d), rnd(bsz, d), rnd(bsz, d)
    cx = torch.rand(bsz, generator=g).to(DEV)
    cv = torch.randn(bsz, generator=g).to(DEV)
    a = torch.randn(bsz, generator=g).to(DEV)
    b = torch.randn(bsz, generator=g).to(DEV)
    weight = {
        None: None,
        "D": torch.rand(d, generator=g).to(dtype).to(DEV),
        "BD": torch.rand(bsz, d, generator=g).to(dtype).to(DEV),
    }[weight_kind]
    return x, x_next, v, cx, cv, v_ref, weight, a, b


FLOW_SHAPES = [(1, 1), (1, 7), (2, 300), (5, 300), (3, 1000)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", FLOW_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("weight_kind", [None, "D", "BD"], ids=["w=None", "w=D", "w=BD"])
def test_flow_row_sums(dtype, shape, weight_kind):
    x, x_next, v, cx, cv, v_ref, weight, _, _ = _flow_inputs(*shape, dtype, weight_kind, seed=shape[1])
    for want_s1, want_s2 in [(True, True), (True, False), (False, True)]:
        args = (
            x if want_s1 else None,
            x_next if want_s1 else None,
            v,
            cx if want_s1 else None,
            cv if want_s1 else None,
            v_ref if want_s2 else None,
            weight if want_s2 else None,
        )
        full = (x, x_next, v, cx, cv, v_ref, weight)
        got = tb.flow_row_sums(*args, want_s1, want_s2)
        want = ref.flow_row_sums(*full, want_s1, want_s2)
        for flag, s_got, s_want in zip((want_s1, want_s2), got, want):
            if not flag:
                assert s_got is None
                continue
            assert s_got.dtype == torch.float32 and s_got.shape == (shape[0],)
            torch.testing.assert_close(s_got, s_want, rtol=1e-5, atol=1e-5)
    assert tb.flow_row_sums(*full, False, False) == (None, None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", FLOW_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("weight_kind", [None, "D", "BD"], ids=["w=None", "w=D", "w=BD"])
def test_flow_row_grad(dtype, shape, weight_kind):
    x, x_next, v, cx, cv, v_ref, weight, a, b = _flow_inputs(*shape, dtype, weight_kind, seed=shape[1] + 1)
    for use_a, use_b in [(True, True), (True, False), (False, True), (False, False)]:
        args = (
            x if use_a else None,
            x_next if use_a else None,
            v,
            cx if use_a else None,
            cv if use_a else None,
            v_ref if use_b else None,
            weight if use_b else None,
            a if use_a else None,
            b if use_b else None,
        )
        got = tb.flow_row_grad(*args)
        want = ref.flow_row_grad(x, x_next, v, cx, cv, v_ref, weight, a if use_a else None, b if use_b else None)
        assert got.dtype == v.dtype and got.shape == v.shape and got.is_contiguous()
        tol = dict(_OUT_TOL[dtype])
        tol["atol"] = max(tol["atol"], 1e-5)
        torch.testing.assert_close(got.float(), want.float(), **tol)


@pytest.mark.parametrize("split", [1, 3, 8])
def test_flow_row_sums_launcher_split(split):
    """Row sums split over `split` programs per row (uneven chunk counts)."""
    from unigrpo.kernels import launch_flow_row_sums

    x, x_next, v, cx, cv, v_ref, weight, _, _ = _flow_inputs(2, 1000, torch.float32, "D", seed=9)
    s1p = torch.empty((2, split), device=DEV)
    s2p = torch.empty((2, split), device=DEV)
    launch_flow_row_sums(x, x_next, v, cx, cv, v_ref, weight, s1p, s2p, block_d=128, split=split, num_warps=1)
    want = ref.flow_row_sums(x, x_next, v, cx, cv, v_ref, weight, True, True)
    torch.testing.assert_close(s1p.sum(-1), want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2p.sum(-1), want[1], rtol=1e-5, atol=1e-5)


def test_flow_empty_batch():
    x, x_next, v, cx, cv, v_ref, weight, a, b = _flow_inputs(0, 16, torch.float32, "D")
    s1, s2 = tb.flow_row_sums(x, x_next, v, cx, cv, v_ref, weight, True, True)
    assert s1.shape == s2.shape == (0,)
    assert tb.flow_row_grad(x, x_next, v, cx, cv, v_ref, weight, a, b).shape == (0, 16)


# ------------------------------------------------------------- GPU only


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("v", [4096, 5000, 151936])
def test_cuda_large_vocab(dtype, v):
    logits, ids = _logits(64, v, dtype, strided=True, seed=v)
    _check_token(logits, ids, 1.0, want_entropy=True)
    _check_token(logits, ids, 0.7, want_entropy=False)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_small_blocks(monkeypatch, dtype):
    """Force the interpreter's small blocks on the GPU: chunk loops, tails, splits."""
    monkeypatch.setattr(tb, "GPU_BLOCK_V", 256)
    monkeypatch.setattr(tb, "GPU_BLOCK_D", 128)
    for v in (7, 300, 1000):
        logits, ids = _logits(5, v, dtype, strided=True, extreme=True, seed=v)
        _check_token(logits, ids, 2.0, want_entropy=True)
    for shape in FLOW_SHAPES + [(4, 65536)]:
        x, x_next, v_, cx, cv, v_ref, w, a, b = _flow_inputs(*shape, dtype, "BD", seed=3)
        got = tb.flow_row_sums(x, x_next, v_, cx, cv, v_ref, w, True, True)
        want = ref.flow_row_sums(x, x_next, v_, cx, cv, v_ref, w, True, True)
        for s_got, s_want in zip(got, want):
            torch.testing.assert_close(s_got, s_want, rtol=1e-4, atol=1e-4)
        got = tb.flow_row_grad(x, x_next, v_, cx, cv, v_ref, w, a, b)
        want = ref.flow_row_grad(x, x_next, v_, cx, cv, v_ref, w, a, b)
        torch.testing.assert_close(got.float(), want.float(), **_OUT_TOL[dtype])

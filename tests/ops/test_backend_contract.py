"""The backend contract: each kernel backend's four functions (logprob_forward,
logprob_backward, sde_row_sums, sde_row_grad) against torch_backend and an
fp64 reference, on every backend available here:

  native-cpu   unigrpo._C through unigrpo.ops.backends.native
  triton       unigrpo.ops.triton; compiled on a GPU, else in Triton's CPU
               interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) with
               the backend's small interpreter blocks, so V / D that are not
               block multiples exercise the chunk loops and the masked tails
  native-cuda  unigrpo._C_cuda through unigrpo.ops.backends.native (GPU only)

Every backend runs the same checks; each is held to its own accuracy
(``Backend.tol`` in backend_support.py) on its own shape lists: the interpreter
keeps to small shapes, the CUDA lists reach the kernels' vector / warp / CTA
paths. What only one backend promises lives in test_{native,triton,cuda}_backend.py.
"""

import math

import pytest
import torch
from ops.backend_support import (
    LAYOUTS,
    TRITON,
    WEIGHT_KINDS,
    assert_close_fp32,
    assert_grad_close,
    check_backward,
    check_forward,
    check_token,
    lse_of,
    isa_level,
    make_flow_inputs,
    make_logits,
    per_backend,
    ref64_forward,
    ref_forward_kept,
)

from unigrpo.ops.backends import torch_backend as ref


@pytest.fixture(autouse=True)
def _backend_available(request):
    be = request.node.callspec.params["be"]
    with isa_level(be):
        be.require()
        yield


def _by_backend(be, table, default=None):
    """table[be.family], else ``default``."""
    return table.get(be.family, default)


# --------------------------------------------------------------------------- module


@pytest.mark.parametrize("be", per_backend(lambda be: [()]))
def test_signatures_match_torch_backend(be):
    import inspect

    for fn in ("logprob_forward", "logprob_backward", "sde_row_sums", "sde_row_grad"):
        assert inspect.signature(getattr(be.mod, fn)) == inspect.signature(getattr(ref, fn)), fn


# --------------------------------------------------------------------------- token side


def _sweep(be):
    """(dtype, N, V, layout, inv_temp, want_entropy)."""
    if be.family == "native-cpu":
        # unaligned rows give bitwise the dense rows' results (test_native_backend.py)
        return [(d, 3, v, layout, t, e) for d in be.dtypes for v in (1, 7, 1000, 2048, 4099)
                for layout in ("contig", "stride") for t in (0.5, 1.0, 2.0) for e in (False, True)]
    if be is TRITON:  # small V; other temperatures on strided rows
        return ([(d, 3, v, layout, 1.0, e) for d in be.dtypes for v in (1, 7, 300, 1000)
                 for layout in ("contig", "stride") for e in (False, True)]
                + [(d, 2, v, "stride", t, True) for t in (0.5, 2.0) for d in be.dtypes for v in (7, 1000)])
    return [(d, 3 if v > 32000 else 5, v, layout, 1.0 if layout == "contig" else 0.7, e)
            for d in be.dtypes for v in (1, 7, 1000, 4099, 32000, 151936) for layout in LAYOUTS
            for e in (False, True)]


@pytest.mark.parametrize("be,dtype,n,v,layout,inv_temp,want_entropy", per_backend(_sweep))
def test_logprobs(be, dtype, n, v, layout, inv_temp, want_entropy):
    """Forward and backward; 'stride': row stride > V, 'offset': also an unaligned base pointer."""
    logits, ids = make_logits(be.dev, n, v, dtype, layout, seed=v)
    check_token(be, logits, ids, inv_temp, want_entropy, f"{dtype} V={v} {layout} t={inv_temp}")


def _single_row(be):
    if be is TRITON:
        return [(torch.float32, v) for v in (1, 300)]
    vocabs = (1, 33, 4099) if be.family == "native-cpu" else (1, 7, 1000, 4099, 32000, 151936)
    return [(d, v) for d in be.dtypes for v in vocabs]


@pytest.mark.parametrize("be,dtype,v", per_backend(_single_row))
def test_single_row(be, dtype, v):
    logits, ids = make_logits(be.dev, 1, v, dtype, seed=v + 1)
    check_token(be, logits, ids, 1.0, True)
    check_token(be, logits, ids, 0.5, False)
    check_token(be, logits, ids, 2.0, False)
    # a (1, V) view whose row stride is meaningless (size-1 dim, stride 1 < V) is fine too
    odd = make_logits(be.dev, 1, v, dtype, seed=v + 2)[0].reshape(v).as_strided((1, v), (1, 1))
    assert odd.is_contiguous()
    check_forward(be, odd, ids, 1.0, True)
    check_backward(be, odd, ids, 1.0, False)
    # one row of a larger tensor
    check_forward(be, make_logits(be.dev, 3, v, dtype, seed=v + 3)[0][1:2], ids, 1.0, True)


def _large_vocab(be):
    """(dtype, N, V, layout); native-cuda has V = 151936 in test_logprobs."""
    if be.family == "native-cpu":
        return [(d, 2, 151936, "contig") for d in (torch.float32, torch.bfloat16)]
    if be is TRITON:
        if not be.gpu:
            return "the Triton interpreter runs small shapes only"
        return [(d, 64, v, "stride") for d in be.dtypes for v in (4096, 5000, 151936)]
    return []


@pytest.mark.parametrize("be,dtype,n,v,layout", per_backend(_large_vocab))
def test_large_vocab(be, dtype, n, v, layout):
    logits, ids = make_logits(be.dev, n, v, dtype, layout, seed=v)
    check_token(be, logits, ids, 1.0, True)
    check_token(be, logits, ids, 0.7, False)


def _extreme(be):
    """(dtype, V, layout, inv_temp)."""
    vocabs, layout = _by_backend(be, {"native-cpu": ((7, 1000, 4099), "offset"), "triton": ((7, 1000), "stride")},
                                 ((7, 1000, 4099, 32000), "offset"))
    return [(d, v, layout, t) for t in (0.5, 1.0, 2.0) for d in be.dtypes for v in vocabs]


@pytest.mark.parametrize("be,dtype,v,layout,inv_temp", per_backend(_extreme))
def test_extreme_logits(be, dtype, v, layout, inv_temp):
    """About 30% of the logits +-1e4: the max first, last, and all equal."""
    logits, ids = make_logits(be.dev, 4, v, dtype, layout, extreme=True, seed=v + 3)
    logp, lse, ent, _ = check_token(be, logits, ids, inv_temp, True)
    assert torch.isfinite(logp).all() and torch.isfinite(lse).all() and torch.isfinite(ent).all()


def _extreme_patterns(be):
    """(dtype, V, inv_temp); the interpreter: smaller V, one temperature per dtype."""
    if be is TRITON and not be.gpu:
        return [(d, 300, t) for d, t in zip(be.dtypes, (0.5, 1.0, 2.0))]
    return [(d, 3000, t) for d in be.dtypes for t in (0.5, 1.0, 2.0)]


@pytest.mark.parametrize("be,dtype,v,inv_temp", per_backend(_extreme_patterns))
def test_extreme_logits_patterns(be, dtype, v, inv_temp):
    """+-1e4 columns, a one-hot row, a uniform row."""
    n = 4
    logits = torch.randn(n, v, generator=torch.Generator().manual_seed(0)) * 50.0
    logits[:, ::7] = 1e4
    logits[:, 3::11] = -1e4
    logits[1] = -1e4
    logits[1, 123] = 1e4
    logits[2] = 1e4  # all equal: uniform
    logits = logits.to(dtype).to(be.dev)
    ids = torch.tensor([0, 123, 5, 3], device=be.dev)  # +1e4, the lone max, uniform, -1e4
    logp, lse, ent = check_forward(be, logits, ids, inv_temp, True)
    assert torch.isfinite(logp).all() and torch.isfinite(lse).all() and torch.isfinite(ent).all()
    assert abs(logp[1].item()) < 1e-6 and abs(ent[1].item()) < 1e-6  # one-hot row
    assert abs(ent[2].item() - math.log(v)) < 1e-4 and abs(logp[2].item() + math.log(v)) < 1e-4
    for with_entropy in (False, True):
        grad = check_backward(be, logits, ids, inv_temp, with_entropy, fwd=(logp, lse, ent))
        assert torch.isfinite(grad.float()).all()


def _block_v(be) -> int:
    """The V-chunk a kernel program works through at a time."""
    if be is TRITON:
        return be.mod.GPU_BLOCK_V if be.gpu else be.mod.INTERP_BLOCK_V
    return 2048


@pytest.mark.parametrize("be,dtype,block", per_backend(lambda be: [(d, _block_v(be)) for d in be.dtypes]))
def test_blocks_and_rescaling(be, dtype, block):
    """Rows longer than the kernel's block, with the max late, early, or after all -inf blocks."""
    v = 3 * block + 17
    base = torch.linspace(-30, 30, v)
    logits = torch.stack([base, base.flip(0), base.clone(), torch.randn(v, generator=torch.Generator().manual_seed(3))])
    logits[2, : 2 * block + 5] = float("-inf")  # whole leading blocks masked out
    logits = logits.to(dtype).to(be.dev)
    ids = torch.tensor([v - 1, 0, v - 2, min(1000, v // 2)], device=be.dev)
    fwd = check_forward(be, logits, ids, 1.0, True)
    check_forward(be, logits, ids, 0.5, False)
    check_backward(be, logits, ids, 1.0, False, fwd=fwd)


@pytest.mark.parametrize("be,dtype,v", per_backend(
    lambda be: [(d, 300 if be is TRITON and not be.gpu else 1000) for d in be.dtypes]))
def test_masked_logits(be, dtype, v):
    """-inf logits (masked vocab) contribute nothing: no NaN anywhere, zero gradient there."""
    n = 3
    logits = torch.randn(n, v, generator=torch.Generator().manual_seed(0)) * 3.0
    mask = torch.rand(n, v, generator=torch.Generator().manual_seed(9)) < 0.3
    logits[mask] = float("-inf")
    logits[0, v // 2 :] = float("-inf")
    ids = torch.tensor([3, 10, v - 1])
    logits[torch.arange(n), ids] = 1.0
    logits, ids = logits.to(dtype).to(be.dev), ids.to(be.dev)
    logp, lse, ent = be.mod.logprob_forward(logits, ids, 1.0, True)
    e_logp, e_lse, e_ent = ref64_forward(logits, ids, 1.0)
    assert_close_fp32(logp, e_logp, 10.0, "logp")
    assert_close_fp32(lse_of(lse).float(), e_lse, 10.0, "lse")
    assert_close_fp32(ent, e_ent, 10.0, "entropy")  # torch_backend gives NaN here (0 * -inf)
    g = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(be.dev)
    ge = torch.randn(n, generator=torch.Generator().manual_seed(2)).to(be.dev)
    grad = be.mod.logprob_backward(logits, ids, lse, 1.0, g, None, None)
    assert_grad_close(grad, ref.logprob_backward(logits, ids, lse, 1.0, g), "grad")
    grad = be.mod.logprob_backward(logits, ids, lse, 1.0, g, ge, ent)
    finite = torch.isfinite(logits.float())
    assert torch.isfinite(grad.float()).all()
    assert (grad[~finite] == 0).all()
    want = ref.logprob_backward(logits, ids, lse, 1.0, g, ge, ent)
    assert_grad_close(torch.where(finite, grad, 0), torch.where(finite, want, 0), "grad (entropy)")


@pytest.mark.parametrize("be,v", per_backend(lambda be: _by_backend(be, {"triton": [300]}, [300, 5000, 151936])))
def test_masked_vocabulary_range(be, v):
    """A masked range of the vocabulary (and row 1's whole first chunk): the same values as
    the reference on the unmasked logits alone, finite entropy, zero gradient there."""
    logits = torch.randn(2, v, device=be.dev)
    logits[:, 100:250] = float("-inf")
    logits[1, :40] = float("-inf")  # the first chunk of row 1 is all -inf
    ids = torch.tensor([3, 260], device=be.dev)
    out = be.mod.logprob_forward(logits, ids, 1.0, True)
    for got, exp in zip(out, ref_forward_kept(logits, ids, 1.0, True)):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
    g = torch.ones(2, device=be.dev)
    for ge, e in ((g, out[2]), (None, None)):
        grad = be.mod.logprob_backward(logits, ids, out[1], 1.0, g, ge, e)
        assert torch.isfinite(grad).all() and (grad[~torch.isfinite(logits)] == 0).all()


@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")  # the Triton interpreter's numpy
@pytest.mark.parametrize("be,dtype", per_backend(lambda be: be.dtypes))
def test_nan_logits_propagate(be, dtype):
    """A NaN logit makes its row's outputs NaN (as in torch), even among -inf; other rows are untouched."""
    v = 1000 if be is TRITON and not be.gpu else 5000
    logits = torch.randn(5, v, generator=torch.Generator().manual_seed(0)) * 3.0
    logits[1, 17] = float("nan")
    logits[2, :] = float("-inf")
    logits[2, 100] = 2.0
    logits[2, v - 500] = float("nan")  # in an otherwise all -inf block
    logits[3, :] = float("nan")
    logits[4, min(1234, v - 2)] = float("nan")
    logits = logits.to(dtype).to(be.dev)
    ids = torch.tensor([0, 1, 100, 2, 1], device=be.dev)
    logp, lse, ent = be.mod.logprob_forward(logits, ids, 1.0, True)
    for out in (logp, lse_of(lse), ent):
        assert torch.isfinite(out[0]) and torch.isnan(out[1:]).all()
    ones = torch.ones(5, device=be.dev)
    grad = be.mod.logprob_backward(logits, ids, lse, 1.0, ones, ones, ent)
    assert torch.isfinite(grad[0].float()).all() and torch.isnan(grad[1:].float()).all()


@pytest.mark.parametrize("be", per_backend(lambda be: [()]))
def test_single_token_vocab_values(be):
    logits = torch.tensor([[3.0], [-2.0]], device=be.dev)
    ids = torch.zeros(2, dtype=torch.long, device=be.dev)
    logp, lse, ent = be.mod.logprob_forward(logits, ids, 2.0, True)
    torch.testing.assert_close(logp, torch.zeros(2, device=be.dev))
    torch.testing.assert_close(lse, torch.tensor([[6.0, 0.0], [-4.0, 0.0]], device=be.dev))
    torch.testing.assert_close(ent, torch.zeros(2, device=be.dev))


@pytest.mark.parametrize("be,v", per_backend(lambda be: [1000 if be is TRITON and not be.gpu else 5000]))
def test_fp16_max(be, v):
    """+-65504, fp16's largest finite values: a one-hot row and a uniform one."""
    logits = torch.full((2, v), -65504.0, dtype=torch.float16, device=be.dev)
    logits[0, 17] = 65504.0
    logits[1] = 65504.0
    ids = torch.tensor([17, 3], device=be.dev)
    check_token(be, logits, ids, 1.0, True)


# the chain's lse / entropy differ slightly from the reference's: one-two ulp of the gradient's dtype
_CHAINED_TOL = {torch.float16: dict(rtol=2e-3, atol=1e-4), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4)}


@pytest.mark.parametrize("be,dtype,v", per_backend(lambda be: _by_backend(
    be, {"triton": [(torch.float16, 300)], "native-cuda": [(torch.bfloat16, 32000)]},
    [(torch.float16, 300), (torch.bfloat16, 32000)])))
def test_backward_chained_with_own_forward(be, dtype, v):
    """The backend's forward into its backward, against the reference's forward into its backward."""
    logits, ids = make_logits(be.dev, 3, v, dtype, "stride", seed=5)
    _, lse, ent = be.mod.logprob_forward(logits, ids, 0.5, True)
    g, ge = torch.randn(3, device=be.dev), torch.randn(3, device=be.dev)
    got = be.mod.logprob_backward(logits, ids, lse, 0.5, g, ge, ent)
    _, lse_r, ent_r = ref.logprob_forward(logits, ids, 0.5, True)
    want = ref.logprob_backward(logits, ids, lse_r, 0.5, g, ge, ent_r)
    torch.testing.assert_close(got.float(), want.float(), **_CHAINED_TOL[dtype])


@pytest.mark.parametrize("be", per_backend(lambda be: [()]))
def test_gradient_matches_autograd(be):
    """Through the public formula: d/dlogits of sum(g logp + ge entropy) by autograd in fp64."""
    n, v, t = 4, 300, 0.7
    logits, ids = make_logits(be.dev, n, v, torch.float32)
    g = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(be.dev)
    ge = torch.randn(n, generator=torch.Generator().manual_seed(2)).to(be.dev)
    x = logits.double().requires_grad_(True)
    lp = torch.log_softmax(x * t, -1)
    ((lp.gather(-1, ids[:, None]).squeeze(-1) * g.double()).sum()
     + (-(lp.exp() * lp).sum(-1) * ge.double()).sum()).backward()
    _, lse, ent = be.mod.logprob_forward(logits, ids, t, True)
    grad = be.mod.logprob_backward(logits, ids, lse, t, g, ge, ent)
    assert (grad.double() - x.grad).abs().max().item() < 1e-5 * x.grad.abs().max().item()


# --------------------------------------------------------------------------- image side


def _flow_cases(be, variants):
    """(dtype, (B, D), weight kind, offset, variant)."""
    shapes = _by_backend(be, {
        "native-cpu": ((1, 1), (3, 37), (2, 4096), (5, 2 * 4096 + 21)),
        "triton": ((1, 1), (1, 7), (2, 300), (5, 300), (3, 1000)),
    }, ((1, 1), (1, 7), (3, 1000), (2, 4099), (4, 65536), (300, 64)))
    offsets = _by_backend(be, {"native-cuda": (False, True)}, (False,))  # offset: element-wise CUDA path
    return [(d, s, w, o, x) for d in be.dtypes for s in shapes for w in WEIGHT_KINDS for o in offsets
            for x in variants]


@pytest.mark.parametrize("be,dtype,shape,weight_kind,offset,want",
                         per_backend(lambda be: _flow_cases(be, ("s1s2", "s1", "s2"))))
def test_sde_row_sums(be, dtype, shape, weight_kind, offset, want):
    x, x_next, v, cx, cv, v_ref, weight, _, _ = make_flow_inputs(be.dev, *shape, dtype, weight_kind, offset,
                                                                 seed=shape[1])
    want_s1, want_s2 = "s1" in want, "s2" in want
    # tensors a term does not use may be None
    got = be.mod.sde_row_sums(x if want_s1 else None, x_next if want_s1 else None, v,
                              cx if want_s1 else None, cv if want_s1 else None,
                              v_ref if want_s2 else None, weight if want_s2 else None, want_s1, want_s2)
    exp = ref.sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, want_s1, want_s2)
    for flag, s_got, s_exp, label in zip((want_s1, want_s2), got, exp, ("s1", "s2")):
        if not flag:
            assert s_got is None
            continue
        assert s_got.dtype == torch.float32 and s_got.shape == (shape[0],)
        be.tol.flow_sums(s_got, s_exp, f"{label} {dtype} B,D={shape} w={weight_kind} offset={offset}")


@pytest.mark.parametrize("be", per_backend(lambda be: [()]))
def test_sde_row_sums_nothing_wanted(be):
    x, x_next, v, cx, cv, v_ref, weight, _, _ = make_flow_inputs(be.dev, 2, 5, torch.float32, None)
    assert be.mod.sde_row_sums(x, x_next, v, cx, cv, v_ref, weight, False, False) == (None, None)


@pytest.mark.parametrize("be,dtype,shape,weight_kind,offset,terms",
                         per_backend(lambda be: _flow_cases(be, ("a+b", "a", "b", "none"))))
def test_sde_row_grad(be, dtype, shape, weight_kind, offset, terms):
    x, x_next, v, cx, cv, v_ref, weight, a, b = make_flow_inputs(be.dev, *shape, dtype, weight_kind, offset,
                                                                 seed=shape[1] + 1)
    use_a, use_b = "a" in terms, "b" in terms
    got = be.mod.sde_row_grad(x if use_a else None, x_next if use_a else None, v,
                              cx if use_a else None, cv if use_a else None,
                              v_ref if use_b else None, weight if use_b else None,
                              a if use_a else None, b if use_b else None)
    want = ref.sde_row_grad(x, x_next, v, cx, cv, v_ref, weight, a if use_a else None, b if use_b else None)
    assert got.dtype == v.dtype and got.shape == v.shape and got.is_contiguous()
    if not (use_a or use_b):
        assert (got == 0).all()
    be.tol.flow_grad(got, want, f"flow grad {dtype} B,D={shape} w={weight_kind} offset={offset} terms={terms}")

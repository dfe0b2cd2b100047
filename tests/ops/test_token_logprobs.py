import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import DEVICES, assert_close_earned, backends_for

from unigrpo.ops import reference as R
from unigrpo.ops import token_logprobs

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (1, 7), (3, 300), (4, 1000), (5, 4099)]
PAIRS = [(d, b) for d in DEVICES for b in backends_for(d)]


def _skip_unsupported(device, backend, dtype):
    if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 (numpy); bf16 Triton runs on CUDA")


def _check(device, backend, dtype, n, v, temperature, entropy, scale=3.0, logits=None):
    if logits is None:
        logits = (torch.randn(n, v, device=device) * scale).to(dtype)
    ids = torch.randint(0, v, (n,), device=device)
    x = logits.detach().requires_grad_(True)
    out = token_logprobs(x, ids, temperature, return_entropy=entropy, backend=backend)
    logp, ent = out if entropy else (out, None)
    assert logp.dtype == torch.float32 and logp.shape == (n,)

    x64 = logits.detach().double().requires_grad_(True)
    ref = R.token_logprobs(x64, ids, temperature, entropy)
    ref_logp, ref_ent = ref if entropy else (ref, None)
    # the kernels' contract is fp32 accuracy relative to the largest |z| = |logit| / T (they
    # subtract an fp32 lse of that size), the same bound as the backend contract tests
    zscale = max(1.0, float(logits.float().abs().max()) / temperature)
    assert_close_earned(logp, ref_logp, atol=1e-6 * zscale)
    g = torch.randn(n, device=device)
    loss, ref_loss = (logp * g).sum(), (ref_logp * g).sum()
    if entropy:
        assert_close_earned(ent, ref_ent, atol=1e-5)
        ge = torch.randn(n, device=device)
        loss, ref_loss = loss + (ent * ge).sum(), ref_loss + (ref_ent * ge).sum()
    (grad,) = torch.autograd.grad(loss, x)
    (ref_grad,) = torch.autograd.grad(ref_loss, x64)
    # the reference's own fp32 error earns part of the bound: the entropy gradient's
    # (z - lse + H) cancels in fp32 when |z| is large (scale 16, T = 0.5: |z| ~ 100)
    x32 = logits.detach().float().requires_grad_(True)
    lo = R.token_logprobs(x32, ids, temperature, entropy)
    lo_loss = (lo[0] * g).sum() + (lo[1] * ge).sum() if entropy else (lo * g).sum()
    (lo_grad,) = torch.autograd.grad(lo_loss, x32)
    assert grad.dtype == dtype
    # The gradient is held to what fp32 itself earns (the fp32 reference's worst error: the
    # rounding of z = x / T, ~|z| eps, moves p) plus a small absolute term, at any |z|: the
    # backward works from (z - max) - log s, never from an fp32 lse of |z|'s size.
    upstream = float(g.abs().max()) + (float(ge.abs().max()) if entropy else 0.0)
    assert_close_earned(grad, ref_grad, dtype, ref_lo=lo_grad, atol=1e-6 * upstream / temperature)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,v", SHAPES)
@pytest.mark.parametrize("entropy", [False, True])
def test_matches_reference(device, backend, dtype, n, v, entropy):
    _skip_unsupported(device, backend, dtype)
    _check(device, backend, dtype, n, v, 1.0, entropy)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("temperature", [0.3, 0.7, 2.5])
def test_temperature(device, backend, temperature):
    _check(device, backend, torch.float32, 3, 513, temperature, True)


@pytest.mark.parametrize("device,backend", PAIRS)
def test_strided_rows(device, backend):
    wide = torch.randn(4, 1005, device=device)
    _check(device, backend, torch.float32, 4, 1000, 1.0, True, logits=wide[:, :1000])


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_logits(device, backend, dtype):
    n, v = 3, 700
    logits = torch.randn(n, v, device=device).sign().mul(1e4)
    logits[1] = -1e4
    logits[2, 5] = 1e4  # one dominant logit
    logits = logits.to(dtype)
    ids = torch.tensor([0, 3, 5], device=device)
    x = logits.clone().requires_grad_(True)
    logp, ent = token_logprobs(x, ids, 0.5, return_entropy=True, backend=backend)
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    ref_logp, ref_ent = R.token_logprobs(logits.double(), ids, 0.5, True)
    # |z| = 2e4: fp32 itself resolves logp only to ~1e-3; bound by what the fp32 reference loses
    lo_logp, lo_ent = R.token_logprobs(logits.float(), ids, 0.5, True)
    assert_close_earned(logp, ref_logp, ref_lo=lo_logp)
    assert_close_earned(ent, ref_ent, ref_lo=lo_ent, atol=1e-5)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen_vocab(device, dtype):
    """V = 151936 (Qwen2 vocabulary), the size the fast paths are built for."""
    for backend in backends_for(device, big=True):
        _check(device, backend, dtype, 2, 151936, 1.0, True)


@pytest.mark.parametrize("device,backend", PAIRS)
def test_rejects_bad_input(device, backend):
    logits = torch.randn(3, 10, device=device)
    ok = torch.tensor([0, 1, 2], device=device)
    with pytest.raises(ValueError, match=r"ids\[1\] = 10 is out of range \[0, 10\)"):
        token_logprobs(logits, torch.tensor([0, 10, 2], device=device), backend=backend)
    with pytest.raises(ValueError, match="ids"):
        token_logprobs(logits, torch.tensor([-1, 0, 0], device=device), backend=backend)
    with pytest.raises(ValueError, match="shape"):
        token_logprobs(logits, ok[:2], backend=backend)
    with pytest.raises(ValueError, match="logits must have 2"):
        token_logprobs(logits[0], ok, backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        token_logprobs(logits.long(), ok, backend=backend)
    with pytest.raises(TypeError, match="ids"):
        token_logprobs(logits, ok.float(), backend=backend)
    with pytest.raises(ValueError, match="empty"):
        token_logprobs(logits[:0], ok[:0], backend=backend)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, ok, temperature=0.0, backend=backend)


def test_reference_gradcheck_fp64():
    logits = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 5, 10])
    assert torch.autograd.gradcheck(lambda z: R.token_logprobs(z, ids, 0.7, True), (logits,))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), v=st.integers(1, 5000), temperature=st.floats(0.05, 10.0),
       scale=st.floats(0.1, 1e4), entropy=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_property_random_shapes(n, v, temperature, scale, entropy, dtype, seed):
    torch.manual_seed(seed)  # the logits come from the example, so a failure reproduces
    for backend in backends_for("cpu", big=True):
        _check("cpu", backend, dtype, n, v, temperature, entropy, scale=scale)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("entropy", [False, True])
def test_exact_at_any_logit_scale(device, backend, entropy):
    """|logit| = 1e4 at T = 0.05 (|z| = 2e5): log-probs, entropy and the gradient as accurate
    as fp32 allows. (With an fp32 lse the gradient was off by ~|lse| * 6e-8 relative.)"""
    torch.manual_seed(0)
    logits = torch.randn(4, 1000, device=device) * 1e4
    logits[0, :3] = 1e4  # ties at the top
    logits[1] = logits[1].clamp(-1e4, 1e4)
    _check(device, backend, torch.float32, 4, 1000, 0.05, entropy, logits=logits)


@pytest.mark.parametrize("device,backend", PAIRS)
def test_single_token_vocab_is_exactly_certain(device, backend):
    """V = 1: logp and entropy are exactly 0 at any scale and temperature. (An FMA in
    x * t - max once left the max's rounding residual, ~1e-4 at |z| ~ 2000.)"""
    x = torch.randn(64, 1, device=device) * 44
    logp, ent = token_logprobs(x, torch.zeros(64, dtype=torch.long, device=device), 0.05, return_entropy=True,
                               backend=backend)
    assert bool((logp == 0).all()) and bool((ent == 0).all())

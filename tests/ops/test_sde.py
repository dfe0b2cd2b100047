import math

import pytest
import torch
from helpers import DEVICES, assert_close_earned, backends_for
from hypothesis import given, settings
from hypothesis import strategies as st

from unigrpo.ops import flow_grpo_step_loss, reference as R, sde_coefficients, sde_step, sde_step_logprob, velocity_mse

PAIRS = [(d, b) for d in DEVICES for b in backends_for(d)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _skip(device, backend, dtype):
    if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("no bf16 in the Triton interpreter")


def _batch(device, b=6, shape=(3, 5, 7), dtype=torch.float32):
    """Rows at sigma = 1 (first step), mid-schedule and the last step to 0."""
    sig = torch.linspace(1.0, 0.15, b, device=device)
    sig_next = torch.cat([sig[1:], torch.zeros(1, device=device)])
    x = torch.randn(b, *shape, device=device).to(dtype)
    v = torch.randn(b, *shape, device=device).to(dtype)
    v_ref = (v.float() + 0.1 * torch.randn_like(v.float())).to(dtype)
    xn, _, _, _ = sde_step(x, v, sig, sig_next, 0.7, backend="torch")
    return x, xn, v, v_ref, sig, sig_next


def test_coefficients_match_method_formula():
    sig = torch.tensor([1.0, 0.9, 0.5, 0.1])
    nxt = torch.tensor([0.9, 0.5, 0.1, 0.0])
    cx, cv, std, s = sde_coefficients(sig, nxt, 0.7)
    for i in range(4):
        sg, dt = sig[i].item(), nxt[i].item() - sig[i].item()
        s_i = 0.7 * math.sqrt(sg / (1 - (nxt[i].item() if sg == 1 else sg)))
        assert math.isclose(s[i].item(), s_i, rel_tol=1e-6)
        assert math.isclose(cx[i].item(), 1 + s_i**2 / (2 * sg) * dt, rel_tol=1e-6)
        assert math.isclose(cv[i].item(), (1 + s_i**2 * (1 - sg) / (2 * sg)) * dt, rel_tol=1e-6)
        assert math.isclose(std[i].item(), s_i * math.sqrt(-dt), rel_tol=1e-6)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sde_step_logprob_matches_reference(device, backend, dtype):
    _skip(device, backend, dtype)
    x, xn, v, _, sig, nxt = _batch(device, dtype=dtype)
    vv = v.clone().requires_grad_(True)
    lp = sde_step_logprob(x, xn, vv, sig, nxt, 0.7, backend=backend)
    v64 = v.double().requires_grad_(True)
    ref = R.sde_step_logprob(x.double(), xn.double(), v64, sig, nxt, 0.7)
    assert lp.dtype == torch.float32 and lp.shape == (6,)
    assert_close_earned(lp, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(6, device=device)
    (grad,) = torch.autograd.grad((lp * g).sum(), vv)
    (ref_grad,) = torch.autograd.grad((ref * g).sum(), v64)
    assert grad.dtype == dtype
    assert_close_earned(grad, ref_grad, dtype, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device,backend", PAIRS)
def test_sde_step_matches_reference_and_recomputation(device, backend):
    x, _, v, _, sig, nxt = _batch(device)
    noise = torch.randn_like(x)
    xn, mean, std, lp = sde_step(x, v, sig, nxt, 0.7, noise=noise, backend=backend)
    rxn, rmean, rstd, rlp = R.sde_step(x, v, sig, nxt, 0.7, noise)
    assert torch.allclose(xn, rxn, atol=1e-6) and torch.allclose(mean, rmean, atol=1e-6)
    assert torch.allclose(std, rstd) and torch.allclose(lp, rlp, atol=1e-5)
    # what the training path recomputes from the stored transition is what the step recorded
    assert torch.equal(sde_step_logprob(x, xn, v, sig, nxt, 0.7, backend=backend), lp)


def test_sde_step_zero_noise_is_euler():
    x, _, v, _, sig, nxt = _batch("cpu")
    xn, _, _, lp = sde_step(x, v, sig, nxt, 0.0)
    assert lp is None
    assert torch.allclose(xn, x + v * (nxt - sig).view(-1, 1, 1, 1), atol=1e-6)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight", ["none", "dims", "full"])
def test_velocity_mse_matches_reference(device, backend, dtype, weight):
    _skip(device, backend, dtype)
    _, _, v, v_ref, _, _ = _batch(device, dtype=dtype)
    w = {"none": None, "dims": torch.rand(3, 5, 7, device=device).to(dtype),
         "full": torch.rand(v.shape, device=device).to(dtype)}[weight]
    vv = v.clone().requires_grad_(True)
    out = velocity_mse(vv, v_ref, w, backend=backend)
    v64 = v.double().requires_grad_(True)
    ref = R.velocity_mse(v64.flatten(1), v_ref.double().flatten(1),
                         None if w is None else w.double().expand(v.shape).flatten(1))
    assert_close_earned(out, ref, rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad(out.sum(), vv)
    (ref_grad,) = torch.autograd.grad(ref.sum(), v64)
    assert_close_earned(grad, ref_grad, dtype, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", ["velocity_mse", "latent_kl", "none"])
def test_flow_grpo_step_loss_matches_reference(device, backend, dtype, penalty):
    _skip(device, backend, dtype)
    x, xn, v, v_ref, sig, nxt = _batch(device, dtype=dtype)
    lp0 = R.sde_step_logprob(x, xn, v, sig, nxt, 0.7)
    old = lp0 + torch.tensor([0.0, 2e-4, -2e-4, 5e-5, 1e-3, -1e-3], device=device)  # clipped and not
    adv = torch.tensor([1.0, 1.0, -1.0, -0.5, -2.0, 0.7], device=device)
    vv = v.clone().requires_grad_(True)
    out = flow_grpo_step_loss(vv, v_ref, x, xn, sig, nxt, old, adv, clip_range=1e-4, penalty=penalty,
                              backend=backend)
    v64 = v.double().requires_grad_(True)
    ref_loss, ref_pen = R.flow_grpo_step_loss(v64.flatten(1), v_ref.double().flatten(1), x.double().flatten(1),
                                              xn.double().flatten(1), sig, nxt, 0.7, old, adv, 1e-4, penalty)
    # loss is the surrogate alone, penalty unweighted: each against its reference
    assert_close_earned(out.loss, ref_loss, rtol=1e-4, atol=1e-5)
    assert_close_earned(out.penalty, ref_pen, rtol=1e-4, atol=1e-5)
    (grad,) = torch.autograd.grad(out.loss.sum(), vv, retain_graph=True)
    (ref_grad,) = torch.autograd.grad(ref_loss.sum(), v64, retain_graph=True)
    assert_close_earned(grad, ref_grad, dtype, rtol=1e-3, atol=1e-6)
    if penalty == "none":
        assert not out.penalty.requires_grad and bool((out.penalty == 0).all())
    else:
        (grad,) = torch.autograd.grad(out.penalty.sum(), vv, retain_graph=True)
        (ref_grad,) = torch.autograd.grad(ref_pen.sum(), v64, retain_graph=True)
        assert_close_earned(grad, ref_grad, dtype, rtol=1e-3, atol=1e-6)
        # the caller's weighted sum: one backward through both row sums
        (grad,) = torch.autograd.grad((out.loss + 0.3 * out.penalty).sum(), vv)
        (ref_grad,) = torch.autograd.grad((ref_loss + 0.3 * ref_pen).sum(), v64)
        assert_close_earned(grad, ref_grad, dtype, rtol=1e-3, atol=1e-6)
    assert 0 <= float(out.stats["clip_frac"]) <= 1


def _guard_batch(device, dtype, b=6, shape=(3, 5, 7)):
    """A rollout step under v_old with the noise it took as stored ((x_next - mean_old) / std:
    the drawn noise up to x_next's rounding), and a moved policy v."""
    x, _, v_old, v_ref, sig, nxt = _batch(device, b, shape, dtype)
    xn, mean_old, std, old = sde_step(x, v_old, sig, nxt, 0.7, backend="torch")
    eps = (xn.float() - mean_old) / std.view(-1, 1, 1, 1)
    v = (v_old.float() + 0.05 * torch.randn(x.shape, device=device)).to(dtype)
    return x, xn, v_old, v, v_ref, sig, nxt, eps, old


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grpo_guard_ratio_matches_flow_factorys_form(device, backend, dtype):
    # the op computes mean(eps * (mean - mean_old)); the reference Flow-Factory's
    # exp((logp - old_logp) * std + mse(mean, mean_old) / (2 std)): the same number
    _skip(device, backend, dtype)
    x, xn, v_old, v, v_ref, sig, nxt, eps, old = _guard_batch(device, dtype)
    adv = torch.tensor([1.0, 1.0, -1.0, -0.5, -2.0, 0.7], device=device)
    # the unmoved policy: ratio 1, as the plain ratio (the guard must not shift it)
    same = flow_grpo_step_loss(v_old, v_ref, x, xn, sig, nxt, old, adv, noise=eps, backend=backend)
    assert torch.allclose(same.stats["ratio_mean"], torch.ones(()), atol=1e-5)
    vv = v.clone().requires_grad_(True)
    out = flow_grpo_step_loss(vv, v_ref, x, xn, sig, nxt, old, adv, clip_range=0.5, noise=eps, backend=backend)
    v64 = v.double().flatten(1).requires_grad_(True)
    ref_loss, _ = R.flow_grpo_step_loss(v64, v_ref.double().flatten(1), x.double().flatten(1),
                                        xn.double().flatten(1), sig, nxt, 0.7, old.double(), adv, 0.5,
                                        noise=eps.double().flatten(1))
    assert_close_earned(out.loss, ref_loss, rtol=1e-4, atol=1e-5)
    (grad,) = torch.autograd.grad(out.loss.sum(), vv)
    (ref_grad,) = torch.autograd.grad(ref_loss.sum(), v64)
    assert_close_earned(grad.flatten(1), ref_grad, dtype, rtol=1e-3, atol=1e-6)


def test_grpo_guard_removes_the_left_shift_of_the_image_ratio():
    # for a fixed policy move, over the rollout's noise the plain log-ratio averages
    # -mse(mean, mean_old) / (2 std^2) < 0 (GRPO-Guard's "left shift"); the guard's averages 0
    g = torch.Generator().manual_seed(0)
    b, d = 4096, 64
    sig, nxt = torch.full((b,), 0.6), torch.full((b,), 0.5)
    x, v_old = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    v = v_old + 0.3 * torch.randn(1, d, generator=g)  # one move, every row
    eps = torch.randn(b, d, generator=g)
    xn, _, std, old = sde_step(x, v_old, sig, nxt, 0.7, noise=eps)
    zero = torch.zeros(b)
    plain = flow_grpo_step_loss(v, v, x, xn, sig, nxt, old, zero, clip_range=1.0)
    guard = flow_grpo_step_loss(v, v, x, xn, sig, nxt, old, zero, clip_range=1.0, noise=eps)
    _, cv, _, _ = sde_coefficients(sig, nxt, 0.7)
    drift = ((cv[:, None] * (v - v_old)) ** 2).mean(-1) / (2 * std**2)
    plain_lr, guard_lr = torch.log(plain.ratio), torch.log(guard.ratio)
    se = guard_lr.std() / math.sqrt(b)
    assert plain_lr.mean() < -0.5 * drift.mean() and drift.mean() > 20 * se
    assert abs(guard_lr.mean()) < 4 * se


def test_latent_kl_is_time_weighted_velocity_mse():
    """docs/method.md: FlowGRPO's KL = (1 + a^2/2)^2 dt^2 (1 - sigma) / (2 a^2 sigma) * mean (v - v_ref)^2."""
    x, xn, v, v_ref, sig, nxt = _batch("cpu")
    zeros = torch.zeros(6)
    out = flow_grpo_step_loss(v, v_ref, x, xn, sig, nxt, zeros, zeros, penalty="latent_kl")
    a, dt = 0.7, nxt - sig
    w = (1 + a**2 / 2) ** 2 * dt**2 * (1 - sig) / (2 * a**2 * sig)
    mid = sig < 1  # at sigma = 1 the s substitution changes the formula
    assert torch.allclose(out.penalty[mid], (w * out.velocity_mse)[mid], rtol=1e-4)


@pytest.mark.parametrize("fn", ["sde_step_logprob", "velocity_mse", "flow_grpo_step_loss"])
def test_reference_gradcheck_fp64(fn):
    b, d = 3, 5
    x, xn, vr = (torch.randn(b, d, dtype=torch.float64) for _ in range(3))
    v = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    sig, nxt = torch.tensor([1.0, 0.6, 0.2]), torch.tensor([0.8, 0.3, 0.0])
    f = {"sde_step_logprob": lambda v: R.sde_step_logprob(x, xn, v, sig, nxt, 0.7),
         "velocity_mse": lambda v: R.velocity_mse(v, vr),
         "flow_grpo_step_loss": lambda v: R.flow_grpo_step_loss(v, vr, x, xn, sig, nxt, 0.7,
                                                               torch.full((b,), -3.0), torch.ones(b), 0.5)}[fn]
    assert torch.autograd.gradcheck(f, (v,))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 9), d=st.integers(1, 300), sigma=st.floats(0.05, 1.0), frac=st.floats(0.0, 0.95),
       a=st.floats(0.1, 1.5))
def test_property_flow_loss_random_shapes(b, d, sigma, frac, a):
    nxt = sigma * frac
    x, v, vr, noise = (torch.randn(b, d) for _ in range(4))
    xn, _, _, lp = sde_step(x, v, torch.full((b,), sigma), torch.full((b,), nxt), a, noise=noise)
    vv = v.clone().requires_grad_(True)
    out = flow_grpo_step_loss(vv, vr, x, xn, sigma, nxt, lp, torch.randn(b), noise_level=a)
    ref_loss, ref_pen = R.flow_grpo_step_loss(v.double().requires_grad_(True), vr, x, xn, torch.full((b,), sigma),
                                              torch.full((b,), nxt), a, lp, torch.randn(b) * 0, 1e-4)
    assert torch.isfinite(out.loss).all() and out.loss.shape == (b,)
    assert torch.allclose(out.stats["ratio_mean"], torch.tensor(1.0), atol=1e-5)  # recorded == recomputed
    assert ref_loss.shape == ref_pen.shape == (b,)


@pytest.mark.parametrize("device,backend", PAIRS)
def test_rejects_bad_input(device, backend):
    x, xn, v, vr, sig, nxt = _batch(device)
    z = torch.zeros(6, device=device)
    with pytest.raises(ValueError, match="sigma must lie in"):
        sde_step_logprob(x, xn, v, sig * 2, nxt, backend=backend)
    with pytest.raises(ValueError, match="sigma_next"):
        sde_step_logprob(x, xn, v, sig, sig, backend=backend)
    with pytest.raises(ValueError, match="x_next must have shape"):
        sde_step_logprob(x, xn[:, :2], v, sig, nxt, backend=backend)
    with pytest.raises(TypeError, match="x must have dtype"):
        sde_step_logprob(x.half(), xn, v, sig, nxt, backend=backend)
    with pytest.raises(ValueError, match="noise_level"):
        sde_step_logprob(x, xn, v, sig, nxt, 0.0, backend=backend)
    with pytest.raises(ValueError, match="penalty must be one of"):
        flow_grpo_step_loss(v, vr, x, xn, sig, nxt, z, z, penalty="kl", backend=backend)
    with pytest.raises(ValueError, match="old_logp must have shape"):
        flow_grpo_step_loss(v, vr, x, xn, sig, nxt, z[:2], z, backend=backend)
    with pytest.raises(ValueError, match="weight must have one sample"):
        velocity_mse(v, vr, torch.ones(3, device=device), backend=backend)
    with pytest.raises(ValueError, match="empty"):
        velocity_mse(v[:0], vr[:0], backend=backend)

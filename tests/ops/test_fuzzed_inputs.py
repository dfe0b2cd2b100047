"""Regression tests for what fuzzing the public ops found: each input either gets
the right answer or one clear error naming the argument, before any kernel runs,
the same on every backend."""

import math

import pytest
import torch
from helpers import DEVICES, backends_for

from unigrpo import ops
from unigrpo.ops import reference as ref

CASES = [(d, b) for d in DEVICES for b in backends_for(d)]


@pytest.fixture(params=CASES, ids=[f"{d}-{b}" for d, b in CASES])
def on(request):
    return request.param


def _flow(device, b=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, v, v_ref = (torch.randn(b, d, generator=g).to(device) for _ in range(3))
    x_next = x + 0.1 * torch.randn(b, d, generator=g).to(device)
    sigma = torch.tensor([0.5, 0.6, 0.7][:b], device=device)
    return x, x_next, v, v_ref, sigma, sigma - 0.05


# ------------------------------------------------------------------ gradients it would not give
@pytest.mark.parametrize("name", ["x", "x_next", "sigma", "sigma_next"])
def test_inputs_the_op_does_not_differentiate_refuse_requires_grad(on, name):
    device, backend = on
    x, x_next, v, v_ref, sigma, sigma_next = _flow(device)
    args = dict(x=x, x_next=x_next, v=v, sigma=sigma, sigma_next=sigma_next)
    args[name] = args[name].clone().requires_grad_(True)
    with pytest.raises(ValueError, match=f"{name} requires grad.*{name}.detach"):
        ops.sde_step_logprob(**args, backend=backend)
    with pytest.raises(ValueError, match=f"{name} requires grad"):
        ops.flow_grpo_step_loss(args["v"], v_ref, args["x"], args["x_next"], args["sigma"], args["sigma_next"],
                                torch.zeros(3, device=device), torch.ones(3, device=device), backend=backend)
    with torch.no_grad():  # nothing is differentiated: nothing to refuse
        ops.sde_step_logprob(**args, backend=backend)


def test_v_ref_and_weight_refuse_requires_grad(on):
    device, backend = on
    _, _, v, v_ref, _, _ = _flow(device)
    with pytest.raises(ValueError, match="v_ref requires grad"):
        ops.velocity_mse(v, v_ref.requires_grad_(True), backend=backend)
    with pytest.raises(ValueError, match="weight requires grad"):
        ops.velocity_mse(v, v_ref.detach(), torch.ones(8, device=device, requires_grad=True), backend=backend)


# ------------------------------------------------------------------ double backward
def test_double_backward_is_refused_the_same_everywhere(on):
    device, backend = on
    logits = torch.randn(2, 5, device=device, requires_grad=True)
    ids = torch.tensor([1, 3], device=device)
    with pytest.raises(RuntimeError, match="token_logprobs: double backward .create_graph=True. is not supported"):
        torch.autograd.grad(ops.token_logprobs(logits, ids, backend=backend).sum(), logits, create_graph=True)
    torch.autograd.grad(ops.token_logprobs(logits, ids, backend=backend).sum(), logits)  # a first derivative is fine
    x, x_next, v, _, sigma, sigma_next = _flow(device)
    v.requires_grad_(True)
    with pytest.raises(RuntimeError, match="sde ops: double backward .create_graph=True. is not supported"):
        torch.autograd.grad(ops.sde_step_logprob(x, x_next, v, sigma, sigma_next, backend=backend).sum(), v,
                            create_graph=True)


# ------------------------------------------------------------------ shapes and dtypes
def test_weight_of_the_right_size_but_wrong_shape_is_refused(on):
    device, backend = on
    v = torch.randn(3, 2, 4, device=device)
    ok = ops.velocity_mse(v, torch.zeros_like(v), torch.ones(2, 4, device=device), backend=backend)
    torch.testing.assert_close(ok, v.square().mean((1, 2)))
    with pytest.raises(ValueError, match=r"weight must have one sample's shape \(2, 4\)"):
        ops.velocity_mse(v, torch.zeros_like(v), torch.ones(4, 2, device=device), backend=backend)
    with pytest.raises(ValueError, match="weight must have"):
        ops.velocity_mse(v, torch.zeros_like(v), torch.ones(8, device=device), backend=backend)


def test_complex_inputs_are_refused(on):
    device, backend = on
    x, x_next, v, v_ref, sigma, sigma_next = _flow(device)
    with pytest.raises(TypeError, match="noise must have dtype"):
        ops.sde_step(x, v, sigma, sigma_next, noise=torch.zeros(3, 8, dtype=torch.complex64, device=device),
                     backend=backend)
    with pytest.raises(TypeError, match="weight must have dtype"):
        ops.velocity_mse(v, v_ref, torch.ones(8, dtype=torch.complex64, device=device), backend=backend)
    with pytest.raises(TypeError, match="logp must have dtype"):
        ops.grpo_token_loss(torch.zeros(3), torch.ones(3), torch.ones(3), logp=torch.zeros(3, dtype=torch.complex64),
                            backend=backend)
    with pytest.raises(TypeError, match="old_logp must be a float"):
        ops.grpo_token_loss(torch.zeros(3, dtype=torch.complex64), torch.ones(3), torch.ones(3),
                            logp=torch.zeros(3), backend=backend)


def test_noise_is_checked_even_for_the_deterministic_step(on):
    device, backend = on
    x, _, v, _, sigma, sigma_next = _flow(device)
    with pytest.raises(TypeError, match="noise must be a torch.Tensor"):
        ops.sde_step(x, v, sigma, sigma_next, noise_level=0, noise=[0.0] * 24, backend=backend)


def test_meta_tensors_are_refused_by_name():
    m = torch.empty(3, 8, device="meta")
    with pytest.raises(ValueError, match="v is a meta tensor"):
        ops.velocity_mse(m, m)
    with pytest.raises(ValueError, match="logits is a meta tensor"):
        ops.token_logprobs(torch.empty(2, 5, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    with pytest.raises(TypeError, match="sigma must be a real number .* on meta"):
        ops.sde_step_logprob(torch.zeros(3, 8), torch.zeros(3, 8), torch.zeros(3, 8),
                             torch.tensor(0.5, device="meta"), 0.4)


# ------------------------------------------------------------------ scalars
BAD_SCALARS = ["0.5", None, 1 + 2j, torch.tensor([0.5, 0.6]), True]


@pytest.mark.parametrize("bad", BAD_SCALARS, ids=["str", "None", "complex", "two-element", "bool"])
def test_scalar_arguments_of_the_wrong_kind_name_the_argument(on, bad):
    device, backend = on
    x, x_next, v, v_ref, sigma, sigma_next = _flow(device)
    logits, ids = torch.randn(2, 5, device=device), torch.tensor([1, 3], device=device)
    z, o = torch.zeros(2, device=device), torch.ones(2, device=device)
    calls = {
        "temperature": lambda: ops.token_logprobs(logits, ids, temperature=bad, backend=backend),
        "noise_level": lambda: ops.sde_step_logprob(x, x_next, v, sigma, sigma_next, noise_level=bad,
                                                    backend=backend),
        "sigma": lambda: ops.sde_step_logprob(x, x_next, v, bad, 0.1, backend=backend),
        "eps_low": lambda: ops.grpo_token_loss(z, o, o, logp=z, eps_low=bad, backend=backend),
        "beta": lambda: ops.grpo_token_loss(z, o, o, logp=z, beta=bad, backend=backend),
        "clip_range": lambda: ops.flow_grpo_step_loss(v, v_ref, x, x_next, sigma, sigma_next, z[:1].expand(3),
                                                      o[:1].expand(3), clip_range=bad, backend=backend),
        "chunk_size": lambda: ops.fused_linear_token_logprobs(torch.randn(2, 4, device=device),
                                                              torch.randn(5, 4, device=device), ids,
                                                              chunk_size=bad, backend=backend),
    }
    for name, call in calls.items():
        if name == "chunk_size" and bad is None or name == "sigma" and isinstance(bad, torch.Tensor):
            continue  # chunk_size=None is the default; a (B,) sigma tensor is allowed (its length is checked)
        with pytest.raises(TypeError, match=f"^{name} must be (a real number|an integer)"):
            call()


@pytest.mark.parametrize("t", [1e-39, 1e-7, 0.0, -1.0, math.inf, math.nan, 1e7, 1e300])
def test_one_temperature_rule_on_every_backend(on, t):
    device, backend = on
    logits, ids = torch.randn(2, 5, device=device), torch.tensor([1, 3], device=device)
    with pytest.raises(ValueError, match=r"^temperature must be in \[1e-06, 1e\+06\], got"):
        ops.token_logprobs(logits, ids, temperature=t, backend=backend)
    with pytest.raises(ValueError, match="^temperature must be"):
        ops.grpo_token_loss(torch.zeros(2, device=device), torch.ones(2, device=device), torch.ones(2, device=device),
                            logits=logits, ids=ids, temperature=t, backend=backend)


@pytest.mark.parametrize("t", [1e-6, 0.05, 1e6])
def test_temperatures_at_the_limits_compute(on, t):
    device, backend = on
    logits, ids = torch.randn(2, 5, device=device), torch.tensor([1, 3], device=device)
    out = ops.token_logprobs(logits, ids, temperature=t, backend=backend)
    torch.testing.assert_close(out, ref.token_logprobs(logits.double(), ids, t).float(), atol=1e-4, rtol=1e-5)


def test_nan_sigmas_are_refused(on):
    device, backend = on
    x, x_next, v, _, sigma, sigma_next = _flow(device)
    nan = torch.tensor([0.5, math.nan, 0.7], device=device)
    with pytest.raises(ValueError, match="sigma must lie in .*NaN"):
        ops.sde_step_logprob(x, x_next, v, nan, sigma_next, backend=backend)
    with pytest.raises(ValueError, match="sigma_next must satisfy"):
        ops.sde_step_logprob(x, x_next, v, sigma, nan - 0.05, backend=backend)
    with pytest.raises(ValueError, match="sigma must be finite, got nan"):
        ops.sde_step(x, v, math.nan, 0.1, backend=backend)


def test_a_bad_backend_name_is_refused_on_every_path():
    for call in (lambda: ops.grpo_token_loss(torch.zeros(2), torch.ones(2), torch.ones(2), logp=torch.zeros(2),
                                             backend="bogus"),
                 lambda: ops.sde_step(torch.zeros(2, 3), torch.zeros(2, 3), 0.5, 0.4, noise_level=0, backend="bogus")):
        with pytest.raises(ValueError, match="backend must be None or one of"):
            call()


# ------------------------------------------------------------------ non-finite values where they do not count
def test_entropy_with_a_minus_inf_logit(on):
    device, backend = on
    logits = torch.tensor([[0.5, -math.inf, 1.0, -2.0], [-math.inf, 0.0, 0.0, -math.inf]], device=device)
    ids = torch.tensor([2, 1], device=device)
    finite = logits.clone()
    finite[torch.isinf(finite)] = -1e30  # the same distribution with finite logits
    for fn in (lambda l: ops.token_logprobs(l, ids, return_entropy=True, backend=backend),
               lambda l: ref.token_logprobs(l, ids, return_entropy=True)):
        lg = logits.clone().requires_grad_(True)
        logp, ent = fn(lg)
        (logp.sum() + ent.sum()).backward()
        want_logp, want_ent = ref.token_logprobs(finite.double(), ids, return_entropy=True)
        torch.testing.assert_close(ent.double(), want_ent, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(logp.double(), want_logp, atol=1e-6, rtol=1e-6)
        assert torch.isfinite(lg.grad).all() and (lg.grad[torch.isinf(logits)] == 0).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the Triton interpreter
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nonfinite_v_ref_does_not_reach_the_gradient_when_the_penalty_is_off(on, bad):
    device, backend = on
    x, x_next, v, v_ref, sigma, sigma_next = _flow(device)
    v_ref[1, 2] = bad
    old, adv = torch.zeros(3, device=device) - 1.0, torch.tensor([1.0, -1.0, 0.5], device=device)
    grads = []
    for penalty, weight in (("velocity_mse", 0.0), ("none", 1.0)):
        vv = v.clone().requires_grad_(True)
        out = ops.flow_grpo_step_loss(vv, v_ref, x, x_next, sigma, sigma_next, old, adv, clip_range=10.0,
                                      penalty=penalty, backend=backend)
        (out.loss.sum() + weight * out.penalty.sum()).backward()
        grads.append(vv.grad)
    vv = v.clone().requires_grad_(True)
    out = ops.flow_grpo_step_loss(vv, torch.zeros_like(v), x, x_next, sigma, sigma_next, old, adv, clip_range=10.0,
                                  penalty="none", backend=backend)
    out.loss.sum().backward()
    for g in grads:
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, vv.grad)


def test_triton_reads_nothing_for_an_out_of_range_id():
    """The ids check is skipped under CUDA-graph capture; the kernel itself must then
    neither read outside the row nor return a plausible number (CUDA: NaN)."""
    if "triton" not in backends_for("cpu"):
        pytest.skip("no Triton")
    from unigrpo.ops.triton.token_logprobs import launch_logprob_forward

    logits = torch.randn(3, 40)
    ids = torch.tensor([5, -100, 40])
    logp, lse = torch.empty(3), torch.empty(3)
    launch_logprob_forward(logits, ids, 1.0, logp, lse, None, block_v=16, num_warps=1)
    torch.testing.assert_close(logp[0], torch.log_softmax(logits[0], -1)[5])
    assert logp[1:].isnan().all()

import pytest
import torch
from helpers import DEVICES, assert_close_earned, backends_for

from unigrpo.ops import grpo_token_loss
from unigrpo.ops import reference as R

PAIRS = [(d, b) for d in DEVICES for b in backends_for(d)]


def _inputs(device, n=64, v=300, dtype=torch.float32):
    logits = (torch.randn(n, v, device=device) * 2).to(dtype)
    ids = torch.randint(0, v, (n,), device=device)
    logp0 = R.token_logprobs(logits.double(), ids, 0.9).float()
    old = logp0 + 0.3 * torch.randn(n, device=device)  # a spread of ratios: some clip, some not
    adv = torch.randn(n, device=device)
    mask = (torch.rand(n, device=device) > 0.2).float()
    ref = logp0 + 0.1 * torch.randn(n, device=device)
    return logits, ids, old, adv, mask, ref


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_fused_matches_reference(device, backend, dtype, beta):
    if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("no bf16 in the Triton interpreter")
    logits, ids, old, adv, mask, ref = _inputs(device, dtype=dtype)
    x = logits.clone().requires_grad_(True)
    out = grpo_token_loss(old, adv, mask, logits=x, ids=ids, temperature=0.9, eps_low=0.2, eps_high=0.28,
                          ref_logp=ref, beta=beta, backend=backend)
    x64 = logits.double().requires_grad_(True)
    ref_loss = R.grpo_token_loss(R.token_logprobs(x64, ids, 0.9), old.double(), adv.double(), mask.double(),
                                 0.2, 0.28, ref.double(), beta)
    assert_close_earned(out.loss, ref_loss, rtol=1e-4, atol=1e-5)
    assert bool((out.loss[mask == 0] == 0).all())
    g = torch.rand_like(out.loss)
    (grad,) = torch.autograd.grad((out.loss * g).sum(), x)
    (ref_grad,) = torch.autograd.grad((ref_loss * g).sum(), x64)
    assert_close_earned(grad, ref_grad, dtype, rtol=1e-4, atol=1e-6)


def test_from_logp_and_stats():
    logp = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0], requires_grad=True)
    old = torch.log(torch.tensor([1 / 1.5, 1 / 0.5, 1.0, 1 / 1.1, 1.0]))  # ratios 1.5, 0.5, 1, 1.1, 1
    adv = torch.tensor([1.0, -1.0, 2.0, 1.0, 5.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    out = grpo_token_loss(old, adv, mask, logp=logp, eps_low=0.2, eps_high=0.2)
    # clipped high (r=1.5, A>0) -> -1.2; clipped low (r=0.5, A<0) -> 0.8; inside -> -r A
    expected = torch.tensor([-1.2, 0.8, -2.0, -1.1, 0.0])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    s = {k: round(float(v), 5) for k, v in out.stats.items()}
    assert s["clip_frac_high"] == 0.25 and s["clip_frac_low"] == 0.25
    assert s["ratio_mean"] == round((1.5 + 0.5 + 1 + 1.1) / 4, 5) and s["ratio_max"] == 1.5
    (g,) = torch.autograd.grad(out.loss.sum(), logp)
    # clipped tokens get no gradient; unclipped: d/dlogp (-r A) = -r A; masked: 0
    assert torch.allclose(g, torch.tensor([0.0, 0.0, -2.0, -1.1, 0.0]), atol=1e-6)


def test_ratio_one_and_equal_advantages_give_zero_gradient():
    logits, ids, _, _, mask, _ = _inputs("cpu", n=8)
    old = R.token_logprobs(logits, ids, 0.9)
    x = logits.clone().requires_grad_(True)
    out = grpo_token_loss(old, torch.zeros(8), mask, logits=x, ids=ids, temperature=0.9)
    assert torch.allclose(out.stats["ratio_mean"], torch.tensor(1.0), atol=1e-6)
    assert out.stats["approx_kl"].abs() < 1e-6
    (grad,) = torch.autograd.grad(out.loss.sum(), x)
    assert bool((grad == 0).all()) and torch.isfinite(out.loss).all()


def test_all_masked_rows():
    logits, ids, old, adv, _, _ = _inputs("cpu", n=6)
    x = logits.clone().requires_grad_(True)
    out = grpo_token_loss(old, adv, torch.zeros(6), logits=x, ids=ids)
    assert bool((out.loss == 0).all())
    assert all(torch.isfinite(v) for v in out.stats.values())
    (grad,) = torch.autograd.grad(out.loss.sum(), x)
    assert bool((grad == 0).all())


def test_entropy_output():
    logits, ids, old, adv, mask, _ = _inputs("cpu", n=5)
    out = grpo_token_loss(old, adv, mask, logits=logits, ids=ids, temperature=0.9, return_entropy=True)
    assert torch.allclose(out.entropy, R.token_logprobs(logits, ids, 0.9, True)[1], atol=1e-5)


def test_rejects_bad_input():
    logits, ids, old, adv, mask, _ = _inputs("cpu", n=4)
    with pytest.raises(ValueError, match="exactly one of"):
        grpo_token_loss(old, adv, mask)
    with pytest.raises(ValueError, match="needs ids"):
        grpo_token_loss(old, adv, mask, logits=logits)
    with pytest.raises(ValueError, match="advantages must have shape"):
        grpo_token_loss(old, adv[:3], mask, logits=logits, ids=ids)
    with pytest.raises(ValueError, match="eps_low"):
        grpo_token_loss(old, adv, mask, logits=logits, ids=ids, eps_low=1.5)

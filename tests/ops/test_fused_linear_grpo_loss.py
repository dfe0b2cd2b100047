"""``fused_linear_grpo_loss``: the loss and its gradients (formed in the forward) equal the
reference's at fp64, on every backend, with every per-token term; the chunks' extra memory
is flat in N; the backward scales by the upstream gradient; bad input is named."""

import pytest
import torch
from helpers import DEVICES, LogitsSizeSpy, assert_close_earned, backends_for

from unigrpo.ops import fused_linear_grpo_loss, grpo_token_loss
from unigrpo.ops import reference as R

PAIRS = [(d, b) for d in DEVICES for b in backends_for(d)]


def _case(n, h, v, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, h, generator=g).to(device).requires_grad_(True)
    w = (torch.randn(v, h, generator=g) / h**0.5).to(device).requires_grad_(True)
    ids = torch.randint(0, v, (n,), generator=g).to(device)
    with torch.no_grad():  # old log-probs near the new ones, so some ratios clip and some do not
        old = R.fused_linear_token_logprobs(hid, w, ids, 0.8) + 0.3 * torch.randn(n, generator=g).to(device)
    adv = torch.randn(n, generator=g).to(device)
    weights = torch.rand(n, generator=g).to(device) * (torch.rand(n, generator=g).to(device) > 0.2)
    ref_logp = old + 0.1 * torch.randn(n, generator=g).to(device)
    return hid, w, ids, old, adv, weights, ref_logp


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("n,h,v,chunk", [(1, 3, 7, None), (9, 17, 301, 4), (16, 33, 1000, 5)])
@pytest.mark.parametrize("bias,beta", [(False, 0.0), (True, 0.04)])
def test_matches_reference(device, backend, n, h, v, chunk, bias, beta):
    hid, w, ids, old, adv, weights, ref_logp = _case(n, h, v, device)
    b = (0.1 * torch.randn(v)).to(device).requires_grad_(True) if bias else None
    out = fused_linear_grpo_loss(hid, w, ids, old, adv, weights, temperature=0.8, eps_low=0.2, eps_high=0.28,
                                 ref_logp=ref_logp, beta=beta, bias=b, chunk_size=chunk, backend=backend)
    leaves = [t for t in (hid, w, b) if t is not None]
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = R.fused_linear_grpo_loss(leaves64[0], leaves64[1], ids, old.double(), adv.double(), weights.double(), 0.8,
                                   0.2, 0.28, ref_logp.double(), beta, leaves64[2] if bias else None)
    assert_close_earned(out.loss, ref, rtol=1e-5, atol=1e-5)
    assert_close_earned(out.logp, R.fused_linear_token_logprobs(*leaves64[:2], ids, 0.8,
                                                                 leaves64[2] if bias else None), rtol=1e-5, atol=2e-5)
    upstream = 1.7  # the backward scales what the forward formed
    grads = torch.autograd.grad(out.loss * upstream, leaves)
    ref_grads = torch.autograd.grad(ref * upstream, leaves64)
    for got, want in zip(grads, ref_grads):
        assert_close_earned(got, want, rtol=1e-4, atol=1e-5)
    # stats: grpo_token_loss's over the weighted tokens
    plain = grpo_token_loss(old, adv, weights != 0, logp=out.logp, eps_low=0.2, eps_high=0.28, ref_logp=ref_logp,
                            beta=beta)
    assert out.stats.keys() == plain.stats.keys()
    assert all(torch.equal(out.stats[k], plain.stats[k]) for k in plain.stats)


def test_equals_the_unfused_path_the_trainer_used():
    from unigrpo.ops import fused_linear_token_logprobs

    hid, w, ids, old, adv, weights, ref_logp = _case(64, 32, 500, "cpu", seed=3)
    fused = fused_linear_grpo_loss(hid, w, ids, old, adv, weights, ref_logp=ref_logp, beta=0.1, chunk_size=16)
    gf = torch.autograd.grad(fused.loss, (hid, w))
    logp = fused_linear_token_logprobs(hid, w, ids, chunk_size=16)
    unfused = (grpo_token_loss(old, adv, weights, logp=logp, ref_logp=ref_logp, beta=0.1).loss).sum()
    gu = torch.autograd.grad(unfused, (hid, w))
    torch.testing.assert_close(fused.loss, unfused, rtol=1e-6, atol=1e-6)
    for a, b in zip(gf, gu):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_no_gradients_formed_without_grad_mode(monkeypatch):
    from unigrpo.ops.backends import torch_backend

    hid, w, ids, old, adv, weights, _ = _case(8, 8, 50, "cpu")
    with_grad = fused_linear_grpo_loss(hid, w, ids, old, adv, weights, backend="torch").loss
    calls = []
    real = torch_backend.logprob_backward
    monkeypatch.setattr(torch_backend, "logprob_backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        out = fused_linear_grpo_loss(hid, w, ids, old, adv, weights, backend="torch")
    assert out.loss.grad_fn is None and torch.equal(out.loss, with_grad.detach()) and not calls


def test_peak_memory_flat_in_n():
    """The extra memory is one chunk's logits, whatever N (measured by the largest
    tensor the backend is asked to handle)."""
    from unigrpo.ops.fused_linear_grpo_loss import _FusedLinearGRPOFn

    for n in (64, 512):
        spy = LogitsSizeSpy()
        hid, w, ids, old, adv, weights, _ = _case(n, 8, 100, "cpu")

        def token_loss(lp, rows):
            return grpo_token_loss(old[rows], adv[rows], weights[rows], logp=lp).loss.sum()

        total, _, _ = _FusedLinearGRPOFn.apply(hid, w, None, ids, token_loss, 1.0, 32, spy, (True, True, False))
        total.backward()
        assert max(spy.seen) == 32 * 100 and len(spy.seen) == 2 * (n // 32)  # one forward and one backward pass a chunk


def test_rejects_bad_input():
    hid, w, ids, old, adv, weights, _ = _case(4, 8, 10, "cpu")
    with pytest.raises(ValueError, match=r"weight must have shape \(V, 8\)"):
        fused_linear_grpo_loss(hid, torch.randn(10, 7), ids, old, adv, weights)
    with pytest.raises(ValueError, match="token_weights"):
        fused_linear_grpo_loss(hid, w, ids, old, adv, weights[:3])
    with pytest.raises(ValueError, match="old_logp"):
        fused_linear_grpo_loss(hid, w, ids, old[:2], adv, weights)
    with pytest.raises(ValueError, match="out of range"):
        fused_linear_grpo_loss(hid, w, torch.tensor([0, 1, 2, 10]), old, adv, weights)
    with pytest.raises(ValueError, match="eps_low"):
        fused_linear_grpo_loss(hid, w, ids, old, adv, weights, eps_low=1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_grpo_loss(hid, w, ids, old, adv, weights, chunk_size=0)
    with pytest.raises(RuntimeError, match="double backward"):
        out = fused_linear_grpo_loss(hid, w, ids, old, adv, weights)
        (g,) = torch.autograd.grad(out.loss, hid, create_graph=True)
        g.sum().backward()


def test_a_second_backward_is_refused_by_name():
    hid, w, ids, old, adv, weights, _ = _case(4, 8, 10, "cpu")
    out = fused_linear_grpo_loss(hid, w, ids, old, adv, weights)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="fused_linear_grpo_loss: .*second backward"):
        out.loss.backward()

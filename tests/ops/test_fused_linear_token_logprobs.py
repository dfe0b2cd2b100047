import pytest
import torch
from helpers import DEVICES, LogitsSizeSpy, assert_close_earned, backends_for

from unigrpo.ops import fused_linear_token_logprobs
from unigrpo.ops import reference as R

PAIRS = [(d, b) for d in DEVICES for b in backends_for(d)]


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("n,h,v,chunk", [(1, 3, 7, None), (9, 17, 301, 4), (16, 33, 1000, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_reference(device, backend, n, h, v, chunk, bias):
    hid = torch.randn(n, h, device=device, requires_grad=True)
    w = (torch.randn(v, h, device=device) / h**0.5).requires_grad_(True)
    b = torch.randn(v, device=device, requires_grad=True) if bias else None
    ids = torch.randint(0, v, (n,), device=device)
    logp, ent = fused_linear_token_logprobs(hid, w, ids, 0.8, bias=b, return_entropy=True,
                                            chunk_size=chunk, backend=backend)
    leaves = [t for t in (hid, w, b) if t is not None]
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]
    ref_logp, ref_ent = R.fused_linear_token_logprobs(leaves64[0], leaves64[1], ids, 0.8,
                                                      leaves64[2] if bias else None, True)
    assert_close_earned(logp, ref_logp, rtol=1e-5, atol=2e-5)
    assert_close_earned(ent, ref_ent, rtol=1e-5, atol=2e-5)
    g, ge = torch.randn(n, device=device), torch.randn(n, device=device)
    grads = torch.autograd.grad((logp * g + ent * ge).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_logp * g + ref_ent * ge).sum(), leaves64)
    for got, ref in zip(grads, ref_grads):
        assert_close_earned(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device,backend", PAIRS)
def test_bf16_weights(device, backend):
    if device == "cpu" and backend == "triton":
        pytest.skip("no bf16 in the Triton interpreter")
    hid = torch.randn(6, 16, device=device).bfloat16().requires_grad_(True)
    w = torch.randn(50, 16, device=device).bfloat16().requires_grad_(True)
    ids = torch.randint(0, 50, (6,), device=device)
    logp = fused_linear_token_logprobs(hid, w, ids, chunk_size=4, backend=backend)
    h64, w64 = hid.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
    # the matmul runs in bf16, as in the model: compare with the reference on the same bf16 logits
    ref = R.token_logprobs((hid.detach() @ w.detach().T).double(), ids)
    assert_close_earned(logp, ref)
    gh, gw = torch.autograd.grad(logp.sum(), (hid, w))
    rh, rw = torch.autograd.grad(R.fused_linear_token_logprobs(h64, w64, ids).sum(), (h64, w64))
    assert gh.dtype == gw.dtype == torch.bfloat16
    assert_close_earned(gh, rh, torch.bfloat16, rtol=2e-2, atol=2e-2)
    assert_close_earned(gw, rw, torch.bfloat16, rtol=2e-2, atol=2e-2)


def test_peak_memory_flat_in_n():
    """The chunked path's extra memory is one chunk, whatever N (CPU: measured by the
    largest tensor the backend is asked to handle)."""
    from unigrpo.ops.fused_linear_token_logprobs import FusedLinearTokenLogprobsFn

    for n in (64, 512):
        spy = LogitsSizeSpy()
        hid = torch.randn(n, 8, requires_grad=True)
        w = torch.randn(100, 8, requires_grad=True)
        ids = torch.randint(0, 100, (n,))
        logp, _ = FusedLinearTokenLogprobsFn.apply(hid, w, None, ids, 1.0, False, 32, spy)
        logp.sum().backward()
        assert max(spy.seen) == 32 * 100


def test_rejects_bad_input():
    hid, w = torch.randn(4, 8), torch.randn(10, 8)
    ids = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"weight must have shape \(V, 8\)"):
        fused_linear_token_logprobs(hid, torch.randn(10, 7), ids)
    with pytest.raises(TypeError, match="weight must have dtype"):
        fused_linear_token_logprobs(hid, w.double(), ids)
    with pytest.raises(ValueError, match="bias must have shape"):
        fused_linear_token_logprobs(hid, w, ids, bias=torch.randn(9))
    with pytest.raises(ValueError, match="out of range"):
        fused_linear_token_logprobs(hid, w, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_token_logprobs(hid, w, ids, chunk_size=0)

"""The native CPU backend (unigrpo._C through unigrpo.ops.backends.native) against
torch_backend, the readable statement of the same math.

Both backends compute in fp32 from the same (possibly bf16/fp16) input, so
forward outputs agree to fp32 accuracy; gradients in a half dtype agree to about
one ulp of that dtype (both round an fp32 value that agrees to ~1e-6).
"""

from __future__ import annotations

import math

import pytest
import torch

_C = pytest.importorskip("unigrpo._C")

from unigrpo.ops.backends import native, torch_backend  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# relative half-ulp (rounding) of each output dtype, doubled: one ulp
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
CPU = torch.device("cpu")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(n: int, v: int, dtype, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return (torch.randn(n, v, generator=_gen(seed)) * scale).to(dtype)


def _ids(n: int, v: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, v, (n,), generator=_gen(seed))


def _ref64(logits: torch.Tensor, ids: torch.Tensor, inv_temp: float):
    """fp64 reference from the same fp32 z the kernels see; entropy ignores -inf entries."""
    z32 = logits.float() * inv_temp
    z = z32.double()
    lse = torch.logsumexp(z, -1)
    logp = z.gather(-1, ids[:, None]).squeeze(-1) - lse
    p = torch.exp(z - lse[:, None])
    pz = torch.where(p > 0, p * z, torch.zeros_like(z))
    return logp, lse, lse - pz.sum(-1)


def _z_scale(logits: torch.Tensor, inv_temp: float) -> float:
    finite = logits.float()[torch.isfinite(logits.float())]
    return max(1.0, float(finite.abs().max()) * inv_temp) if finite.numel() else 1.0


def _assert_close_fp32(actual: torch.Tensor, expected: torch.Tensor, scale: float, what: str, rel: float = 8e-6):
    """|actual - expected| <= rel * scale elementwise (scale: the magnitude fp32 error is relative to)."""
    assert actual.dtype == torch.float32, what
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rel * scale + 1e-7, f"{what}: max error {err:.3g} > {rel * scale + 1e-7:.3g}"


def _assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, what: str):
    """Same dtype; elementwise within one ulp of the output dtype (+ fp32 noise of the largest element)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    a, e = actual.double(), expected.double()
    big = e.abs().max().item()
    tol = ULP[expected.dtype] * e.abs() + 1e-5 * big + 1e-30
    bad = (a - e).abs() > tol
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} elements off, worst {(a - e).abs().max().item():.3g} (max |grad| {big:.3g})")


def _check_forward(logits, ids, inv_temp, want_entropy, what=""):
    logp, lse, ent = native.logprob_forward(logits, ids, inv_temp, want_entropy)
    r_logp, r_lse, r_ent = torch_backend.logprob_forward(logits, ids, inv_temp, want_entropy)
    e_logp, e_lse, e_ent = _ref64(logits, ids, inv_temp)
    scale = _z_scale(logits, inv_temp)
    for out in (logp, lse):
        assert out.shape == (logits.shape[0],) and out.dtype == torch.float32
    _assert_close_fp32(lse, e_lse, scale, f"lse vs fp64 {what}")
    _assert_close_fp32(logp, e_logp, scale, f"logp vs fp64 {what}")
    _assert_close_fp32(lse, r_lse, scale, f"lse vs torch_backend {what}")
    _assert_close_fp32(logp, r_logp, scale, f"logp vs torch_backend {what}")
    if want_entropy:
        assert ent is not None and ent.shape == lse.shape and ent.dtype == torch.float32
        # native computes log S - sum p (z - max): accurate in absolute terms even for huge |z|
        _assert_close_fp32(ent, e_ent, max(1.0, float(e_ent.abs().max())), f"entropy vs fp64 {what}", rel=2e-5)
        # torch_backend's lse - sum(p z) cancels: its own error is relative to |z|; it is NaN
        # for rows with -inf logits (0 * -inf), where native stays finite
        ok = torch.isfinite(r_ent) | ~torch.isfinite(logits.float()).all(-1)
        assert ok.all()
        fin = torch.isfinite(r_ent)
        _assert_close_fp32(ent[fin], r_ent[fin], scale, f"entropy vs torch_backend {what}", rel=2e-5)
    else:
        assert ent is None
    return logp, lse, ent


def _check_backward(logits, ids, inv_temp, with_entropy, seed=5, what=""):
    n, v = logits.shape
    logp, lse, ent = native.logprob_forward(logits, ids, inv_temp, with_entropy)
    g = torch.randn(n, generator=_gen(seed))
    ge = torch.randn(n, generator=_gen(seed + 1)) if with_entropy else None
    grad = native.logprob_backward(logits, ids, lse, inv_temp, g, ge, ent if with_entropy else None)
    ref = torch_backend.logprob_backward(logits, ids, lse, inv_temp, g, ge, ent if with_entropy else None)
    assert grad.shape == (n, v) and grad.is_contiguous()
    _assert_grad_close(grad, ref, f"grad {what}")
    return grad


# --------------------------------------------------------------------------- module surface


def test_module_surface():
    assert native.name == "native"
    assert native._cpu_error is None  # load_error may still report a missing CUDA module on CUDA torch
    assert native.available_for(CPU) and native.available_for("cpu")
    assert not native.available_for(torch.device("meta"))
    assert isinstance(_C.has_openmp(), bool)
    assert _C.get_num_threads() >= 1


def _fresh_native_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("unigrpo_native_copy", native.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_missing_extension_is_reported_not_raised(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "unigrpo._C", None)  # import of unigrpo._C now fails
    mod = _fresh_native_module()
    assert mod.name == "native"
    assert not mod.available_for(CPU)
    assert mod.load_error and "unigrpo._C" in mod.load_error


def test_stale_extension_is_reported_not_raised(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "unigrpo._C", types.ModuleType("unigrpo._C"))  # no kernels in it
    mod = _fresh_native_module()
    assert not mod.available_for(CPU)
    assert "lacks" in mod.load_error and "logprob_forward" in mod.load_error


def test_thread_count_follows_torch():
    before = torch.get_num_threads()
    x, ids = _logits(4, 100, torch.float32), _ids(4, 100)
    try:
        torch.set_num_threads(1)
        one = native.logprob_forward(x, ids, 1.0, True)
        if _C.has_openmp():
            assert _C.get_num_threads() == 1
        torch.set_num_threads(max(2, before))
        two = native.logprob_forward(x, ids, 1.0, True)
        if _C.has_openmp():
            assert _C.get_num_threads() == max(2, before)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)  # rows are independent: bitwise the same for any thread count


def test_thread_count_synced_in_other_python_threads():
    """OpenMP's thread count is per OS thread: a worker thread gets torch's count too."""
    import threading

    x, ids = _logits(2, 10, torch.float32), _ids(2, 10)
    seen = {}

    def work():
        native.logprob_forward(x, ids, 1.0, False)
        seen["n"] = _C.get_num_threads()

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # differs from a fresh thread's OpenMP default (all cores) where cores > 1
        native.logprob_forward(x, ids, 1.0, False)
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(before)
    if _C.has_openmp():
        assert seen["n"] == 1


def test_results_do_not_depend_on_thread_count():
    before = torch.get_num_threads()
    x = _logits(64, 5000, torch.bfloat16)
    ids = _ids(64, 5000)
    args = [torch.randn(64, 3000, generator=_gen(i)) for i in range(4)]
    cx, cv = torch.rand(64, generator=_gen(7)), torch.rand(64, generator=_gen(8))
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            logp, lse, ent = native.logprob_forward(x, ids, 1.0, True)
            grad = native.logprob_backward(x, ids, lse, 1.0, torch.ones(64), torch.ones(64), ent)
            sums = native.flow_row_sums(args[0], args[1], args[2], cx, cv, args[3], None, True, True)
            outs.append((logp, lse, ent, grad, *sums))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- token side: forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [1, 7, 1000, 2048, 4099])
@pytest.mark.parametrize("inv_temp", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("want_entropy", [False, True])
def test_forward_matches_torch_backend(dtype, v, inv_temp, want_entropy):
    n = 3
    _check_forward(_logits(n, v, dtype, seed=v), _ids(n, v, seed=v + 1), inv_temp, want_entropy,
                   f"{dtype} V={v} t={inv_temp}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [1, 33, 4099])
def test_single_row(dtype, v):
    logits, ids = _logits(1, v, dtype), _ids(1, v)
    _check_forward(logits, ids, 1.0, True)
    _check_backward(logits, ids, 1.0, True)
    # a (1, V) view whose row stride is meaningless (size-1 dim, stride 1 < V) is fine too
    flat = _logits(1, v, dtype).reshape(v)
    odd = flat.as_strided((1, v), (1, 1))
    assert odd.is_contiguous()
    _check_forward(odd, ids, 1.0, True)
    _check_backward(odd, ids, 1.0, False)
    _check_forward(_logits(3, v, dtype)[1:2], ids, 1.0, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_vocab(dtype):
    v = 151936
    logits, ids = _logits(2, v, dtype, scale=4.0), _ids(2, v)
    _check_forward(logits, ids, 1.0, True)
    _check_backward(logits, ids, 1.0, True)
    _check_backward(logits, ids, 0.7, False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [7, 1000, 4099])
def test_strided_rows(dtype, v):
    wide = _logits(4, v + 5, dtype)
    logits = wide[:, :v]
    assert not logits.is_contiguous() and logits.stride(0) == v + 5
    ids = _ids(4, v)
    logp, lse, ent = _check_forward(logits, ids, 2.0, True)
    dense = native.logprob_forward(logits.contiguous(), ids, 2.0, True)
    for a, b in zip((logp, lse, ent), dense):
        assert torch.equal(a, b)
    grad = _check_backward(logits, ids, 2.0, True)
    assert grad.stride() == (v, 1)
    g = native.logprob_backward(logits.contiguous(), ids, lse, 2.0, torch.randn(4, generator=_gen(5)),
                                torch.randn(4, generator=_gen(6)), ent)
    assert torch.equal(grad, g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inv_temp", [0.5, 1.0, 2.0])
def test_extreme_logits(dtype, inv_temp):
    n, v = 4, 3000
    logits = _logits(n, v, torch.float32, scale=50.0)
    logits[:, ::7] = 1e4
    logits[:, 3::11] = -1e4
    logits[1] = -1e4
    logits[1, 123] = 1e4
    logits[2] = 1e4  # all equal: uniform
    logits = logits.to(dtype)
    ids = torch.tensor([0, 123, 5, 3])  # +1e4, the lone max, uniform, -1e4
    logp, lse, ent = _check_forward(logits, ids, inv_temp, True)
    assert torch.isfinite(logp).all() and torch.isfinite(lse).all() and torch.isfinite(ent).all()
    assert abs(logp[1].item()) < 1e-6 and abs(ent[1].item()) < 1e-6  # one-hot row
    assert abs(ent[2].item() - math.log(v)) < 1e-4 and abs(logp[2].item() + math.log(v)) < 1e-4
    for with_entropy in (False, True):
        grad = _check_backward(logits, ids, inv_temp, with_entropy)
        assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_blocks_and_rescaling(dtype):
    """Rows longer than the kernel's block, with the max late, early, or after all -inf blocks."""
    v = 3 * 2048 + 17
    n = 4
    base = torch.linspace(-30, 30, v)
    logits = torch.stack([base, base.flip(0), base.clone(), torch.randn(v, generator=_gen(3))])
    logits[2, :2 * 2048 + 5] = float("-inf")  # whole leading blocks masked out
    logits = logits.to(dtype)
    ids = torch.tensor([v - 1, 0, v - 2, 1000])
    _check_forward(logits, ids, 1.0, True)
    _check_forward(logits, ids, 0.5, False)
    _check_backward(logits, ids, 1.0, False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_logits(dtype):
    """-inf logits (masked vocab) contribute nothing: no NaN anywhere, zero gradient there."""
    n, v = 3, 1000
    logits = _logits(n, v, torch.float32)
    mask = torch.rand(n, v, generator=_gen(9)) < 0.3
    logits[mask] = float("-inf")
    logits[0, 500:] = float("-inf")
    ids = torch.tensor([3, 10, 999])
    logits[torch.arange(n), ids] = 1.0
    logits = logits.to(dtype)
    logp, lse, ent = native.logprob_forward(logits, ids, 1.0, True)
    e_logp, e_lse, e_ent = _ref64(logits, ids, 1.0)
    _assert_close_fp32(logp, e_logp, 10.0, "logp")
    _assert_close_fp32(lse, e_lse, 10.0, "lse")
    _assert_close_fp32(ent, e_ent, 10.0, "entropy")  # torch_backend gives NaN here (0 * -inf)
    g, ge = torch.randn(n, generator=_gen(1)), torch.randn(n, generator=_gen(2))
    grad = native.logprob_backward(logits, ids, lse, 1.0, g, None, None)
    _assert_grad_close(grad, torch_backend.logprob_backward(logits, ids, lse, 1.0, g), "grad")
    grad = native.logprob_backward(logits, ids, lse, 1.0, g, ge, ent)
    finite = torch.isfinite(logits.float())
    assert torch.isfinite(grad.float()).all()
    assert (grad[~finite] == 0).all()
    ref = torch_backend.logprob_backward(logits, ids, lse, 1.0, g, ge, ent)
    _assert_grad_close(torch.where(finite, grad, 0), torch.where(finite, ref, 0), "grad (entropy)")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_logits_propagate(dtype):
    """A NaN logit makes its row's outputs NaN (as in torch), even among -inf; other rows are untouched."""
    v = 5000
    logits = _logits(4, v, torch.float32)
    logits[1, 17] = float("nan")
    logits[2, :] = float("-inf")
    logits[2, 100] = 2.0
    logits[2, 4500] = float("nan")  # in an otherwise all -inf block
    logits[3, :] = float("nan")
    logits = logits.to(dtype)
    ids = torch.tensor([0, 1, 100, 2])
    logp, lse, ent = native.logprob_forward(logits, ids, 1.0, True)
    for out in (logp, lse, ent):
        assert torch.isfinite(out[0]) and torch.isnan(out[1:]).all()
    grad = native.logprob_backward(logits, ids, lse, 1.0, torch.ones(4), torch.ones(4), ent)
    assert torch.isfinite(grad[0].float()).all() and torch.isnan(grad[1:].float()).all()


# --------------------------------------------------------------------------- token side: backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [1, 7, 1000, 4099])
@pytest.mark.parametrize("inv_temp", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_backward_matches_torch_backend(dtype, v, inv_temp, with_entropy):
    n = 3
    grad = _check_backward(_logits(n, v, dtype, seed=v), _ids(n, v, seed=v + 1), inv_temp, with_entropy,
                           what=f"{dtype} V={v} t={inv_temp}")
    assert grad.dtype == dtype


def test_backward_zero_grad_entropy_rows():
    """Rows whose grad_entropy is 0 take the entropy-free path: same values as without entropy."""
    logits, ids = _logits(3, 500, torch.float32), _ids(3, 500)
    _, lse, ent = native.logprob_forward(logits, ids, 1.0, True)
    g = torch.randn(3, generator=_gen(0))
    a = native.logprob_backward(logits, ids, lse, 1.0, g, torch.zeros(3), ent)
    b = native.logprob_backward(logits, ids, lse, 1.0, g, None, None)
    assert torch.equal(a, b)


def test_gradient_matches_autograd():
    """Through the public formula: d/dlogits of sum(g logp + ge entropy) by autograd in fp64."""
    n, v, t = 4, 300, 0.7
    logits, ids = _logits(n, v, torch.float32), _ids(n, v)
    g, ge = torch.randn(n, generator=_gen(1)), torch.randn(n, generator=_gen(2))
    x = logits.double().requires_grad_(True)
    lp = torch.log_softmax(x * t, -1)
    ((lp.gather(-1, ids[:, None]).squeeze(-1) * g.double()).sum()
     + (-(lp.exp() * lp).sum(-1) * ge.double()).sum()).backward()
    _, lse, ent = native.logprob_forward(logits, ids, t, True)
    grad = native.logprob_backward(logits, ids, lse, t, g, ge, ent)
    assert (grad.double() - x.grad).abs().max().item() < 1e-5 * x.grad.abs().max().item()


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize("bad", [-1, 50, 10**12])
def test_bad_ids_raise_value_error(bad):
    logits = _logits(4, 50, torch.float32)
    ids = torch.tensor([0, 49, bad, -7])
    with pytest.raises(ValueError, match=rf"ids\[2\] = {bad}\b"):
        native.logprob_forward(logits, ids, 1.0, False)
    lse = torch.zeros(4)
    with pytest.raises(ValueError, match=rf"ids\[2\] = {bad}\b"):
        native.logprob_backward(logits, ids, lse, 1.0, torch.ones(4))


def _fwd_args(logits, ids, out):
    n, v = logits.shape
    return dict(logits=logits.data_ptr(), dtype=0, N=n, V=v, row_stride=v, ids=ids.data_ptr(), inv_temp=1.0,
                logp=out[0].data_ptr(), lse=out[1].data_ptr(), entropy=0)


@pytest.mark.parametrize("field,value,arg", [
    ("dtype", 3, "dtype"), ("dtype", -1, "dtype"), ("N", 0, "N"), ("V", 0, "V"), ("row_stride", 9, "row_stride"),
    ("logits", 0, "logits"), ("ids", 0, "ids"), ("logp", 0, "logp"), ("lse", 0, "lse"),
    ("inv_temp", 0.0, "inv_temp"), ("inv_temp", float("inf"), "inv_temp"), ("inv_temp", float("nan"), "inv_temp"),
])
def test_bad_arguments_raise_value_error(field, value, arg):
    logits, ids = _logits(2, 10, torch.float32), _ids(2, 10)
    out = (torch.empty(2), torch.empty(2))
    kwargs = _fwd_args(logits, ids, out)
    kwargs[field] = value
    with pytest.raises(ValueError, match=rf"logprob_forward: argument '{arg}'"):
        _C.logprob_forward(**kwargs)


def test_bad_arguments_backward_and_flow():
    logits, ids = _logits(2, 10, torch.float32), _ids(2, 10)
    vec = torch.zeros(2)
    grad = torch.empty(2, 10)
    p = lambda t: t.data_ptr()  # noqa: E731
    with pytest.raises(ValueError, match="logprob_backward: argument 'dtype'"):
        _C.logprob_backward(p(logits), 7, 2, 10, 10, p(ids), p(vec), 1.0, p(vec), 0, 0, p(grad))
    with pytest.raises(ValueError, match="logprob_backward: argument 'entropy'"):
        _C.logprob_backward(p(logits), 0, 2, 10, 10, p(ids), p(vec), 1.0, p(vec), p(vec), 0, p(grad))
    with pytest.raises(ValueError, match="logprob_backward: argument 'grad_out'"):
        _C.logprob_backward(p(logits), 0, 2, 10, 10, p(ids), p(vec), 1.0, p(vec), 0, 0, 0)
    x = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="flow_row_sums: argument 'dtype'"):
        _C.flow_row_sums(5, 2, 10, p(x), p(x), p(x), p(vec), p(vec), p(x), 0, 0, p(vec), 0)
    with pytest.raises(ValueError, match="flow_row_sums: argument 'cx'"):
        _C.flow_row_sums(0, 2, 10, p(x), p(x), p(x), 0, p(vec), p(x), 0, 0, p(vec), 0)
    with pytest.raises(ValueError, match="flow_row_sums: argument 'D'"):
        _C.flow_row_sums(0, 2, 0, p(x), p(x), p(x), p(vec), p(vec), p(x), 0, 0, p(vec), 0)
    with pytest.raises(ValueError, match="flow_row_sums: argument 'weight_row_stride'"):
        _C.flow_row_sums(0, 2, 10, 0, 0, p(x), 0, 0, p(x), p(x), 3, 0, p(vec))
    with pytest.raises(ValueError, match="flow_row_grad: argument 'dtype'"):
        _C.flow_row_grad(9, 2, 10, p(x), p(x), p(x), p(vec), p(vec), p(x), 0, 0, p(vec), p(vec), p(x))
    with pytest.raises(ValueError, match="flow_row_grad: argument 'v_ref'"):
        _C.flow_row_grad(0, 2, 10, p(x), p(x), p(x), p(vec), p(vec), 0, 0, 0, p(vec), p(vec), p(x))
    with pytest.raises(ValueError, match="flow_row_grad: argument 'B'"):
        _C.flow_row_grad(0, -1, 10, p(x), p(x), p(x), p(vec), p(vec), p(x), 0, 0, p(vec), p(vec), p(x))


def test_unsupported_dtype_in_python_layer():
    with pytest.raises(TypeError, match="float64"):
        native.logprob_forward(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.long), 1.0, False)


# --------------------------------------------------------------------------- image side


def _flow_inputs(b, d, dtype, weight_kind, seed=0):
    x, x_next, v, v_ref = (torch.randn(b, d, generator=_gen(seed + i)).to(dtype) for i in range(4))
    cx = torch.rand(b, generator=_gen(seed + 10)) + 0.5
    cv = torch.randn(b, generator=_gen(seed + 11))
    weight = {"none": None,
              "row": torch.rand(d, generator=_gen(seed + 12)).to(dtype),
              "full": torch.rand(b, d, generator=_gen(seed + 13)).to(dtype)}[weight_kind]
    return x, x_next, v, cx, cv, v_ref, weight


def _sum_scale(x, x_next, v, cx, cv, v_ref, weight):
    """fp32 error of a sum of non-negative terms is relative to the sum itself (terms are >= 0 here)."""
    s1, s2 = torch_backend.flow_row_sums(x, x_next, v, cx, cv, v_ref, weight, True, True)
    return s1.abs().max().item(), s2.abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,d", [(1, 1), (3, 37), (2, 4096), (5, 2 * 4096 + 21)])
@pytest.mark.parametrize("weight_kind", ["none", "row", "full"])
@pytest.mark.parametrize("want", [(True, True), (True, False), (False, True)])
def test_flow_row_sums(dtype, b, d, weight_kind, want):
    x, x_next, v, cx, cv, v_ref, weight = _flow_inputs(b, d, dtype, weight_kind)
    want_s1, want_s2 = want
    ref = torch_backend.flow_row_sums(x, x_next, v, cx, cv, v_ref, weight, want_s1, want_s2)
    scale = _sum_scale(x, x_next, v, cx, cv, v_ref, weight)
    # tensors a term does not use may be None
    out = native.flow_row_sums(x if want_s1 else None, x_next if want_s1 else None, v,
                               cx if want_s1 else None, cv if want_s1 else None,
                               v_ref if want_s2 else None, weight if want_s2 else None, want_s1, want_s2)
    for got, exp, s, wanted, label in zip(out, ref, scale, want, ("s1", "s2")):
        if not wanted:
            assert got is None
            continue
        assert got.shape == (b,) and got.dtype == torch.float32
        _assert_close_fp32(got, exp, s, f"{label} {dtype} B={b} D={d} w={weight_kind}", rel=4e-6)


def test_flow_row_sums_nothing_wanted():
    x, x_next, v, cx, cv, v_ref, weight = _flow_inputs(2, 5, torch.float32, "none")
    assert native.flow_row_sums(x, x_next, v, cx, cv, v_ref, weight, False, False) == (None, None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,d", [(1, 1), (3, 37), (5, 2 * 4096 + 21)])
@pytest.mark.parametrize("weight_kind", ["none", "row", "full"])
@pytest.mark.parametrize("terms", ["ab", "a", "b", ""])
def test_flow_row_grad(dtype, b, d, weight_kind, terms):
    x, x_next, v, cx, cv, v_ref, weight = _flow_inputs(b, d, dtype, weight_kind, seed=3)
    a = torch.randn(b, generator=_gen(20)) if "a" in terms else None
    bb = torch.randn(b, generator=_gen(21)) if "b" in terms else None
    ref = torch_backend.flow_row_grad(x, x_next, v, cx, cv, v_ref, weight, a, bb)
    got = native.flow_row_grad(x if a is not None else None, x_next if a is not None else None, v,
                               cx if a is not None else None, cv if a is not None else None,
                               v_ref if bb is not None else None, weight if bb is not None else None, a, bb)
    assert got.shape == (b, d) and got.dtype == dtype and got.is_contiguous()
    if not terms:
        assert (got == 0).all()
    _assert_grad_close(got, ref, f"flow grad {dtype} B={b} D={d} w={weight_kind} terms={terms}")

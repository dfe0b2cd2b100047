"""What only the native CPU backend (unigrpo._C through unigrpo.ops.backends.native)
promises: its module surface, a missing or stale extension reported rather than
raised, OpenMP thread counts, results bitwise independent of thread count and
row layout, the entropy-free fast path, and its argument checks (bad ids, the
raw ABI). Its values against torch_backend and fp64 are checked, with every
other backend's, in test_backend_contract.py.
"""

from __future__ import annotations

import pytest
import torch

_C = pytest.importorskip("unigrpo._C")

from ops.backend_support import make_logits  # noqa: E402

from unigrpo.ops.backends import native  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CPU = torch.device("cpu")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(n: int, v: int, dtype, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return (torch.randn(n, v, generator=_gen(seed)) * scale).to(dtype)


def _ids(n: int, v: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, v, (n,), generator=_gen(seed))


# --------------------------------------------------------------------------- module surface


def test_module_surface():
    assert native.name == "native"
    assert native._cpu_error is None  # load_error may still report a missing CUDA module on CUDA torch
    assert native.available_for(CPU) and native.available_for("cpu")
    assert not native.available_for(torch.device("meta"))
    assert isinstance(_C.has_openmp(), bool)
    assert _C.get_num_threads() >= 1


def test_isa_levels_best_at_load_switchable_and_forced_by_environment():
    import os
    import platform
    import subprocess
    import sys

    levels = _C.cpu_isa_levels()
    assert levels[-1] == "baseline" and _C.cpu_isa() in levels
    if platform.machine() in ("x86_64", "AMD64"):
        assert levels == ["x86-64-v4", "x86-64-v3", "baseline"]
    best = _C.cpu_isa()
    try:
        _C.set_cpu_isa("baseline")
        assert _C.cpu_isa() == "baseline"
    finally:
        _C.set_cpu_isa(best)
    with pytest.raises(ValueError, match="unknown CPU ISA level 'avx9'; this build has: .*baseline"):
        _C.set_cpu_isa("avx9")
    code = "import unigrpo._C as C; print(C.cpu_isa())"
    for forced in ("baseline", levels[0]):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "UNIGRPO_CPU_ISA": forced},
                             capture_output=True, text=True, cwd="/", check=True).stdout.strip()
        assert out == (forced if forced == "baseline" else best)  # a level the CPU lacks falls back to its best


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
            sums = native.sde_row_sums(args[0], args[1], args[2], cx, cv, args[3], None, True, True)
            outs.append((logp, lse, ent, grad, *sums))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- bitwise properties


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [7, 1000, 4099])
@pytest.mark.parametrize("layout", ["stride", "offset"])
def test_strided_rows_match_dense_bitwise(dtype, v, layout):
    """Rows with a stride > V (or an unaligned start) give bitwise the dense rows' results."""
    logits, ids = make_logits(CPU, 4, v, dtype, layout)
    assert not logits.is_contiguous()
    dense = logits.contiguous()
    out = native.logprob_forward(logits, ids, 2.0, True)
    for a, b in zip(out, native.logprob_forward(dense, ids, 2.0, True)):
        assert torch.equal(a, b)
    g, ge = torch.randn(4, generator=_gen(5)), torch.randn(4, generator=_gen(6))
    grad = native.logprob_backward(logits, ids, out[1], 2.0, g, ge, out[2])
    assert grad.stride() == (v, 1)
    assert torch.equal(grad, native.logprob_backward(dense, ids, out[1], 2.0, g, ge, out[2]))


def test_backward_zero_grad_entropy_rows():
    """Rows whose grad_entropy is 0 take the entropy-free path: same values as without entropy."""
    logits, ids = _logits(3, 500, torch.float32), _ids(3, 500)
    _, lse, ent = native.logprob_forward(logits, ids, 1.0, True)
    g = torch.randn(3, generator=_gen(0))
    a = native.logprob_backward(logits, ids, lse, 1.0, g, torch.zeros(3), ent)
    b = native.logprob_backward(logits, ids, lse, 1.0, g, None, None)
    assert torch.equal(a, b)


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
                logp=out[0].data_ptr(), lse_parts=out[1].data_ptr(), entropy=0)


@pytest.mark.parametrize("field,value,arg", [
    ("dtype", 3, "dtype"), ("dtype", -1, "dtype"), ("N", 0, "N"), ("V", 0, "V"), ("row_stride", 9, "row_stride"),
    ("logits", 0, "logits"), ("ids", 0, "ids"), ("logp", 0, "logp"), ("lse_parts", 0, "lse_parts"),
    ("inv_temp", 0.0, "inv_temp"), ("inv_temp", float("inf"), "inv_temp"), ("inv_temp", float("nan"), "inv_temp"),
])
def test_bad_arguments_raise_value_error(field, value, arg):
    logits, ids = _logits(2, 10, torch.float32), _ids(2, 10)
    out = (torch.empty(2), torch.empty(2, 2))
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
    with pytest.raises(ValueError, match="sde_row_sums: argument 'dtype'"):
        _C.sde_row_sums(5, 2, 10, p(x), p(x), p(x), p(vec), p(vec), p(x), 0, 0, p(vec), 0)
    with pytest.raises(ValueError, match="sde_row_sums: argument 'cx'"):
        _C.sde_row_sums(0, 2, 10, p(x), p(x), p(x), 0, p(vec), p(x), 0, 0, p(vec), 0)
    with pytest.raises(ValueError, match="sde_row_sums: argument 'D'"):
        _C.sde_row_sums(0, 2, 0, p(x), p(x), p(x), p(vec), p(vec), p(x), 0, 0, p(vec), 0)
    with pytest.raises(ValueError, match="sde_row_sums: argument 'weight_row_stride'"):
        _C.sde_row_sums(0, 2, 10, 0, 0, p(x), 0, 0, p(x), p(x), 3, 0, p(vec))
    with pytest.raises(ValueError, match="sde_row_grad: argument 'dtype'"):
        _C.sde_row_grad(9, 2, 10, p(x), p(x), p(x), p(vec), p(vec), p(x), 0, 0, p(vec), p(vec), p(x))
    with pytest.raises(ValueError, match="sde_row_grad: argument 'v_ref'"):
        _C.sde_row_grad(0, 2, 10, p(x), p(x), p(x), p(vec), p(vec), 0, 0, 0, p(vec), p(vec), p(x))
    with pytest.raises(ValueError, match="sde_row_grad: argument 'B'"):
        _C.sde_row_grad(0, -1, 10, p(x), p(x), p(x), p(vec), p(vec), p(x), 0, 0, p(vec), p(vec), p(x))


def test_unsupported_dtype_in_python_layer():
    with pytest.raises(TypeError, match="float64"):
        native.logprob_forward(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.long), 1.0, False)

import warnings

import pytest
import torch

from unigrpo import ops
from unigrpo.ops import dispatch


def test_argument_and_environment_force_a_backend(monkeypatch):
    cpu = torch.device("cpu")
    assert dispatch.get_backend(cpu, "torch").name == "torch"
    monkeypatch.setenv("UNIGRPO_BACKEND", "torch")
    assert dispatch.get_backend(cpu).name == "torch"
    monkeypatch.setenv("UNIGRPO_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="UNIGRPO_BACKEND must be one of"):
        dispatch.get_backend(cpu)


def test_auto_prefers_native_on_cpu_when_built():
    cpu = torch.device("cpu")
    expected = "native" if "native" in ops.available_backends(cpu) else "torch"
    assert dispatch.get_backend(cpu).name == expected


def test_broken_extension_warns_once_and_falls_back(monkeypatch):
    broken = type(dispatch)("native")
    broken.load_error = "ImportError: simulated"
    broken.available_for = lambda device: False
    monkeypatch.setitem(dispatch._modules, "native", broken)
    monkeypatch.setattr(dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match="simulated"):
        assert dispatch.get_backend(torch.device("cpu")).name == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatch.get_backend(torch.device("cpu"))  # no second warning
    with pytest.raises(RuntimeError, match="'native' was requested but is unavailable.*simulated"):
        dispatch.get_backend(torch.device("cpu"), "native")


def test_ops_follow_the_forced_backend(monkeypatch):
    calls = []
    be = dispatch._module("torch")
    spy = type(dispatch)("spy")
    for name in ("logprob_forward", "logprob_backward", "sde_row_sums", "sde_row_grad"):
        fn = getattr(be, name)
        setattr(spy, name, lambda *a, _fn=fn, _n=name: (calls.append(_n), _fn(*a))[1])
    spy.name, spy.available_for = "torch", lambda device: True
    monkeypatch.setitem(dispatch._modules, "torch", spy)
    logits = torch.randn(2, 5, requires_grad=True)
    ops.token_logprobs(logits, torch.tensor([1, 2]), backend="torch").sum().backward()
    v = torch.randn(2, 3, requires_grad=True)
    ops.velocity_mse(v, torch.zeros(2, 3), backend="torch").sum().backward()
    assert calls == ["logprob_forward", "logprob_backward", "sde_row_sums", "sde_row_grad"]


def test_describe_says_what_runs_and_why_not_the_fastest(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("UNIGRPO_BACKEND", raising=False)
    if "native" in ops.available_backends(cpu):
        assert dispatch.describe(cpu).startswith("native (C++ kernels at ISA level x86-64")
    monkeypatch.setenv("UNIGRPO_BACKEND", "torch")
    assert dispatch.describe(cpu) == "torch, forced by UNIGRPO_BACKEND"
    monkeypatch.delenv("UNIGRPO_BACKEND")
    broken = type(dispatch)("native")
    broken.load_error = "ImportError: simulated"
    broken.available_for = lambda device: False
    monkeypatch.setitem(dispatch._modules, "native", broken)
    monkeypatch.setattr(dispatch, "_warned", {"native"})
    assert dispatch.describe(cpu) == "torch: native is unavailable (ImportError: simulated)"


def test_the_native_cuda_reason_names_the_driver(monkeypatch):
    from unigrpo.ops.backends import native

    monkeypatch.setattr(native, "_C_cuda", object())  # built, loaded...
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # ...torch sees GPUs...
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)  # ...the kernels' runtime does not
    assert "NVIDIA driver is older than the CUDA toolkit" in native.why_unavailable(torch.device("cuda"))
    monkeypatch.setattr(native, "_C_cuda", None)
    monkeypatch.setattr(native, "_cuda_error", None)
    assert "no CUDA kernels" in native.why_unavailable(torch.device("cuda"))

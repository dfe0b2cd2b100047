import pytest
import torch
import torch.nn.functional as F

from unigrpo import precision
from unigrpo.precision import autocast, bf16_autocast_choice, native_bf16, sdpa_fp32_on_cpu


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, (True, "AMX")),
                                                         (False, True, (True, "AVX-512 BF16")),
                                                         (False, False, (False, "neither AMX nor AVX-512 BF16"))])
def test_native_bf16_on_cpu_follows_the_cpus_matrix_units(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    ok, why = native_bf16(torch.device("cpu"))
    assert ok is expected[0] and expected[1] in why
    assert native_bf16(torch.device("cuda", 0)) == (True, "CUDA")
    assert native_bf16(torch.device("meta"))[0] is False


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_is_on_by_default_on_cuda_only_and_on_cpu_when_asked_where_native(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: (native, "AMX" if native else "no bf16 units"))
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert bf16_autocast_choice(None, cpu) == (False, "the default on cpu; train.bf16_autocast=true for bf16")
    assert bf16_autocast_choice(None, cuda) == (native, "AMX" if native else "no bf16 units")
    assert bf16_autocast_choice(True, cpu) == (native, "AMX" if native else "no bf16 units")
    assert bf16_autocast_choice(False, cuda) == (False, "train.bf16_autocast=false")


def test_autocast_runs_products_in_bf16_only_when_enabled():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu"), True):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), False):
        assert (a @ b).dtype == torch.float32


class _Attn(torch.nn.Module):  # what transformers' SDPA integration reads from the module
    is_causal = True
    num_key_value_groups = 1


def test_sdpa_fp32_on_cpu_computes_bf16_attention_in_fp32():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with autocast(torch.device("cpu"), True):
        out, _ = sdpa_fp32_on_cpu(_Attn(), q, k, v, None, scaling=0.25)
    assert out.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, scale=0.25)
    assert torch.equal(out, want.transpose(1, 2).to(torch.bfloat16))  # transformers returns (B, L, heads, dim)
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and bool(torch.isfinite(q.grad).all())


def test_sdpa_fp32_on_cpu_computes_mixed_inputs_under_autocast_in_fp32():
    # what the built-in model passes under autocast: q, k fp32 (the rotary embedding's fp32
    # cos/sin promote them), v bf16; autocast by itself would run SDPA in bf16
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 7, 16), torch.randn(2, 4, 7, 16)
    v = torch.randn(2, 4, 7, 16, dtype=torch.bfloat16)
    with autocast(torch.device("cpu"), True):
        out, _ = sdpa_fp32_on_cpu(_Attn(), q, k, v, None, scaling=0.25)
    assert out.dtype == torch.float32
    want = F.scaled_dot_product_attention(q, k, v.float(), is_causal=True, scale=0.25)
    assert torch.equal(out, want.transpose(1, 2))


def test_sdpa_fp32_on_cpu_is_plain_sdpa_for_fp32_inputs():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    out, _ = sdpa_fp32_on_cpu(_Attn(), q, k, v, None)
    want, _ = precision.sdpa_attention_forward(_Attn(), q, k, v, None)
    assert torch.equal(out, want)

"""Mixed precision: where bf16 autocast pays, and the autocast context the rollout and the
loss share.

bf16 autocast runs the matrix products in bf16 (weights stay fp32, as do the optimizer's
states and the gradients it applies). It can pay where the device has bf16 matrix units:
every CUDA GPU the trainer targets, and CPUs with AMX or AVX-512 BF16 (on a 2-core Xeon
with AMX, the built-in model's (5120 x 192) x (192 x 576) product runs at ~2.1 TFLOP/s in
bf16 against ~0.23 in fp32). Elsewhere oneDNN emulates bf16 and it is slower than fp32, so
the trainer stays in fp32 there and says so.

Attention is the exception on CPU: torch's bf16 SDPA backward is ~3x slower than fp32 there
(16 x 4 heads x 140 positions x 48 dims: 19 ms against 7 ms forward+backward), so
:func:`sdpa_fp32_on_cpu` (registered with transformers as ``"sdpa_fp32_on_cpu"``) runs it in
fp32 on CPU tensors and is plain SDPA elsewhere. The rollout and the loss both use it, so
the image steps' first-update ratio stays exactly 1.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

__all__ = ["native_bf16", "bf16_autocast_choice", "autocast", "sdpa_fp32_on_cpu", "SDPA_FP32_ON_CPU"]

SDPA_FP32_ON_CPU = "sdpa_fp32_on_cpu"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 matrix products natively, and which unit (or why not)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True, "CUDA"
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return True, "AMX"
        if torch.cpu._is_avx512_bf16_supported():
            return True, "AVX-512 BF16"
        return False, "this CPU has neither AMX nor AVX-512 BF16 (emulated bf16 is slower than fp32)"
    return False, f"no bf16 autocast on {device.type}"


def bf16_autocast_choice(setting: bool | None, device: torch.device) -> tuple[bool, str]:
    """Whether a run with ``train.bf16_autocast=setting`` trains in bf16 on ``device``, and why.
    None (the default): on CUDA only. On CPU it is asked for with true: on a 2-core AMX VM
    whole bf16 runs were 1.5-1.6x faster per iteration and learned about as much as fp32 over
    three seeds, too few to change the default (README, "Seeds and threads"; bench/RESULTS.md)."""
    device = torch.device(device)
    if setting is False:
        return False, "train.bf16_autocast=false"
    if setting is None and device.type != "cuda":
        return False, f"the default on {device.type}; train.bf16_autocast=true for bf16"
    return native_bf16(device)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on ``device`` when ``enabled``. The weights' bf16 casts are cached for the
    context on CPU (one cast per rollout or minibatch, not one per call); on CUDA they are not,
    because the rollout captures CUDA graphs, which must not hold cached casts."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=device.type != "cuda")


def sdpa_fp32_on_cpu(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, computed in fp32 when the tensors are on the CPU, whatever
    their dtypes and autocast say (the output returns in the query's dtype); unchanged on
    other devices. Under autocast the rotary embedding leaves q and k in fp32 and v in bf16,
    and autocast alone would run SDPA in bf16."""
    if query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(query.dtype), weights


AttentionInterface.register(SDPA_FP32_ON_CPU, sdpa_fp32_on_cpu)

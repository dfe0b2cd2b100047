"""LoRA through peft, on transformers and diffusers models alike: peft's
``inject_adapter_in_model`` on the bare module (no wrapper class, so the model's own
forward and submodule names stay as they are), and the frozen reference as the same
model with its adapter layers disabled: no second copy of the weights.

(transformers' and diffusers' own ``add_adapter`` wrap the same peft call but pin
newer peft releases than every transformers 5 supports.)"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

__all__ = ["ADAPTER", "PEFT_WEIGHTS", "add_lora", "adapters_disabled", "lora_state_dict", "load_lora_state_dict",
           "save_peft_adapter", "read_peft_adapter"]

ADAPTER = "default"
PEFT_WEIGHTS = "adapter_model.safetensors"  # PeftModel.save_pretrained's file
_PEFT_PREFIX = "base_model.model."           # ... and its key prefix


def add_lora(module: nn.Module, rank: int, alpha: float, targets: str, key: str) -> None:
    """Add a LoRA adapter (fp32 weights, B = 0 so the model is unchanged) and make it the
    module's only trainable parameters; a target that matches nothing names ``key``."""
    from peft import LoraConfig, inject_adapter_in_model

    modules = [m.strip() for m in targets.split(",") if m.strip()]
    if not modules:
        raise ValueError(f"{key} must name at least one module, e.g. q_proj,v_proj")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0, init_lora_weights=True)
    try:
        inject_adapter_in_model(config, module, adapter_name=ADAPTER)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"{key}={targets!r}: {e}") from None
    for name, p in module.named_parameters():
        is_lora = "lora_" in name
        if is_lora:
            p.data = p.data.float()  # peft casts the input to the adapter's dtype
        p.requires_grad_(is_lora)


@contextmanager
def adapters_disabled(modules: Iterable[nn.Module]):
    """Run the base weights of every LoRA layer in ``modules``; re-enabled on exit."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for module in modules for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights under peft's names (no adapter name in the keys)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(module, adapter_name=ADAPTER)


def load_lora_state_dict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load :func:`lora_state_dict`-named weights into the module's adapter, exactly: a
    missing or unexpected adapter weight is an error naming ``what``."""
    from peft import set_peft_model_state_dict

    expected = set(lora_state_dict(module))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{what}: the LoRA weights do not match the model's adapter "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}; same lora_rank and target modules?)")
    set_peft_model_state_dict(module, state, adapter_name=ADAPTER)


def save_peft_adapter(module: nn.Module, directory: Path, base: str) -> None:
    """The adapter as ``PeftModel.save_pretrained`` writes it (``adapter_config.json`` +
    ``adapter_model.safetensors``), loadable with ``PeftModel.from_pretrained(base_model, directory)``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(module.peft_config[ADAPTER])
    config.base_model_name_or_path = base
    config.save_pretrained(str(directory))
    save_file({_PEFT_PREFIX + k: v.contiguous() for k, v in lora_state_dict(module).items()},
              str(directory / PEFT_WEIGHTS), metadata={"format": "pt"})


def read_peft_adapter(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`save_peft_adapter`'s key naming."""
    return {k.removeprefix(_PEFT_PREFIX): v for k, v in state.items()}

"""FSDP2 for ``parallel.strategy=fsdp``: every rank holds 1/N of each block's weights,
gradients and optimizer state.

``torch.distributed.fsdp.fully_shard`` is applied to each block (the module classes the
models list in ``_no_split_modules``, as transformers, diffusers and accelerate do) and
then to the root. Training forwards go through the root's ``forward``, so FSDP gathers
a block's weights just before it runs and frees them after. Generation is different:
a rank's decode loop stops when its own rows are done, so ranks run different numbers
of forwards and must not meet in a collective inside it. :func:`run_gathered` therefore
all-gathers every block once before a rollout or evaluation and frees them after, and
nothing in between communicates.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict, set_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

from ..integrity import CheckpointError


def block_classes(root: nn.Module) -> set[str]:
    """The class names the models under ``root`` say must not be split."""
    names: set[str] = set()
    for m in root.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


class Sharded(nn.Module):
    """Base of a root module :func:`shard` can wrap: ``run(fn, *args)`` calls ``fn`` as one
    of the root's forwards (FSDP initialises and gathers the root's own weights)."""

    def run(self, fn: Callable, *args, **kwargs):
        return fn(*args, **kwargs)

    def generation_modules(self) -> nn.Module:
        """The part of the tree rollouts and evaluation run (:func:`run_gathered` gathers
        only its blocks): all of it by default."""
        return self


def shard(root: Sharded, device: torch.device, bf16: bool, reshard_after_forward: bool = True) -> None:
    """``fully_shard`` each block of ``root`` (innermost first), then ``root`` itself.
    ``bf16`` (CUDA): bf16 weights and compute, fp32 gradient reduction;
    ``reshard_after_forward`` (``parallel.reshard_after_forward``): each block's."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if bf16 and device.type == "cuda" else MixedPrecisionPolicy()
    names = block_classes(root)
    blocks = [m for m in root.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError("parallel.strategy=fsdp: the policy names no blocks to shard (no model in it sets "
                         "_no_split_modules, the block classes); use parallel.strategy=ddp")
    for m in [*reversed(blocks), root]:
        dtypes = {p.dtype for p in m.parameters() if not isinstance(p, DTensor)}
        if len(dtypes) > 1 and mp.param_dtype is None:
            raise ValueError(f"parallel.strategy=fsdp: {type(m).__name__} holds parameters of several dtypes "
                             f"({sorted(map(str, dtypes))}), which FSDP can only gather with bf16 mixed precision "
                             "(CUDA with train.bf16_autocast); set model.dtype=float32 or use parallel.strategy=ddp")
        fully_shard(m, mp_policy=mp, reshard_after_forward=reshard_after_forward if m is not root else None)
    root.blocks_reshard_after_forward = reshard_after_forward  # what run_gathered restores
    register_fsdp_forward_method(root, "run")


def _units(root: Sharded) -> list[FSDPModule]:
    return [m for m in root.generation_modules().modules() if isinstance(m, FSDPModule) and m is not root]


def run_gathered(root: nn.Module, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` with every block's full weights on every rank and no
    collective inside: for rollouts and evaluation, whose forwards differ between ranks.
    Outside FSDP (``root`` not sharded) it is a plain call."""
    if not isinstance(root, FSDPModule):
        return fn(*args, **kwargs)
    return root.run(_gathered, root, fn, *args, **kwargs)  # the root's forward: FSDP's lazy init, root weights


def _gathered(root: FSDPModule, fn: Callable, *args, **kwargs):
    units = _units(root)
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()  # every rank, same order: the only collectives of the call
    try:
        return fn(*args, **kwargs)
    finally:
        for m in [*units, root]:
            m.reshard()
        for m in units:
            m.set_reshard_after_forward(root.blocks_reshard_after_forward, recurse=False)


def sync_gradients(root: nn.Module, sync: bool) -> None:
    """Reduce-scatter gradients at the next backward (True) or keep accumulating them
    unsharded (False: the micro-batches before the last of an optimizer step)."""
    if isinstance(root, FSDPModule):
        root.set_requires_gradient_sync(sync)


# ----------------------------------------------------------------- checkpoints
# Trained weights, optimizer and EMA keyed by parameter name, in the layout
# ``torch.distributed.checkpoint`` reshards: a checkpoint written by N ranks loads on M,
# on one process too. Frozen weights (a LoRA run's bases) are the run's inputs and stay out.
_OPTIONS = StateDictOptions(ignore_frozen_params=True)
_SET = StateDictOptions(ignore_frozen_params=True, strict=False)  # the frozen keys were never meant to load


def trained_names(policy: nn.Module) -> list[str]:
    """The trained parameters' names, in the optimizer's order."""
    return [n for n, p in policy.named_parameters() if p.requires_grad]


def _state(policy: nn.Module, optimizer, ema) -> dict:
    model, optim = get_state_dict(policy, optimizer, options=_OPTIONS)
    state = {"model": model, "optimizer": optim}
    if ema is not None:
        state["ema"] = _ema_state(policy, ema)
    return state


def _ema_state(policy: nn.Module, ema) -> dict:
    return dict(zip(trained_names(policy), ema.shadow))


def save_state(directory: Path, policy: nn.Module, optimizer, ema) -> None:
    """Every rank writes its shards of the trained state into ``directory`` (a collective)."""
    dcp.save(_state(policy, optimizer, ema), checkpoint_id=str(directory))


def _load(state: dict, directory: Path) -> None:
    """``dcp.load`` in place, its failures (a missing key, another model's shapes, a torn
    file) as one :class:`CheckpointError` naming the first."""
    try:
        with warnings.catch_warnings():  # one process reading a sharded checkpoint is what we mean
            warnings.filterwarnings("ignore", message="torch.distributed is .*assuming the intent")
            dcp.load(state, checkpoint_id=str(directory), no_dist=not dist.is_initialized())
    except (Exception, CheckpointException) as e:
        first = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) and e.failures else e
        text = " ".join(str(first).split())[:400]
        raise CheckpointError(f"{directory} does not load into this policy: {type(first).__name__}: {text}") from None


def load_ema(directory: Path, policy: nn.Module, ema) -> None:
    """Only the EMA averages of what :func:`save_state` wrote, into ``ema``'s (a
    :class:`~unigrpo.train.ema.ParameterEMA` of ``policy``'s trained parameters) in place."""
    _load({"ema": _ema_state(policy, ema)}, directory)


def load_state(directory: Path, policy: nn.Module, optimizer, ema) -> None:
    """Load what :func:`save_state` wrote, resharded to this job (sharded or not)."""
    state = _state(policy, optimizer, ema)
    _load(state, directory)
    set_state_dict(policy, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=_SET)  # EMA shadows were loaded in place


def load_full_optimizer(policy: nn.Module, optimizer, full: dict) -> None:
    """Load torch's own (parameter-index) optimizer state of an unsharded run into this
    sharded one: each rank keeps its slice."""
    names = trained_names(policy)
    by_name = {"state": {names[i]: v for i, v in full["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in full["param_groups"]]}
    set_optimizer_state_dict(policy, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


@torch.no_grad()
def copy_full_(dst: torch.Tensor, full: torch.Tensor) -> None:
    """``dst`` <- ``full`` (a whole tensor), for ``dst`` sharded or not."""
    if isinstance(dst, DTensor):
        full = distribute_tensor(full.to(dst.device, dst.dtype), dst.device_mesh, dst.placements)
    dst.copy_(full)


def local_tensors(state: dict) -> dict:
    """This rank's shards of a state dict (whole tensors stay as they are)."""
    return {k: v.to_local() if isinstance(v, DTensor) else v for k, v in state.items()}


def load_weights(directory: Path, policy: nn.Module) -> None:
    """Only the trained weights of what :func:`save_state` wrote (exporting a checkpoint)."""
    model = get_model_state_dict(policy, options=_OPTIONS)
    _load({"model": model}, directory)
    set_model_state_dict(policy, model, options=_SET)

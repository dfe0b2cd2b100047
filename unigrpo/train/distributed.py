"""Past one process: ``torchrun --nproc-per-node N -m unigrpo.train ...``.

Data parallel on PyTorch's own stack: every rank rolls out the rounds of its share of the
iteration's prompts (whole groups, so advantages need no communication beyond the
rewards), and DistributedDataParallel or FSDP2 (:mod:`unigrpo.train.sharding`) averages the
gradients. The loss is
scaled so that N processes train the objective one process would on the same rounds
(token normalisers count the tokens of every rank). Rank 0 writes every run file.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from ..config_bounds import bounded, check_bounds

STRATEGIES = ("auto", "none", "ddp", "fsdp")


@dataclass
class ParallelConfig:
    """``strategy``: auto (fsdp when launched with more than one process, else none),
    none (one process), ddp (DistributedDataParallel: every rank holds the whole model),
    fsdp (FSDP2: every rank holds 1/N of each block's weights, gradients and optimizer
    state). The backend is NCCL on CUDA, gloo on CPU."""

    strategy: str = "auto"
    # fsdp: free each block's gathered weights after its forward and gather them again for its
    # backward (ZeRO-3, the least memory), or keep them to the backward (one all-gather fewer a
    # block, the memory of the whole weights during the loss: ZeRO-2-like)
    reshard_after_forward: bool = True
    timeout_s: int = bounded(1800, ge=10, help="seconds a collective may wait for a rank before the job fails")

    def validate(self) -> None:
        check_bounds(self, "parallel")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"parallel.strategy must be one of {STRATEGIES}, got {self.strategy!r}")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    strategy: str = "none"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: torch.device) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if device.type == "cuda" and device.index is None and launched_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup(cfg: ParallelConfig, device: torch.device) -> World:
    """Join torchrun's process group (once per process) and say who we are."""
    size = launched_size()
    strategy = cfg.strategy if cfg.strategy != "auto" else ("fsdp" if size > 1 else "none")
    if strategy == "none":
        if size > 1:
            raise ValueError(f"parallel.strategy=none, but torchrun started {size} processes: use fsdp, ddp or one "
                             "process")
        return World()
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ValueError(f"parallel.strategy={strategy} runs in processes torchrun starts: torchrun "
                             "--nproc-per-node N -m unigrpo.train ... (alone, parallel.strategy=none)")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.timeout_s))
    return World(dist.get_rank(), dist.get_world_size(), strategy)


def all_gather(t: Tensor, world: World) -> Tensor:
    """Every rank's ``t`` (same shape on each), concatenated along dim 0 in rank order."""
    if not world.distributed:
        return t
    parts = [torch.empty_like(t) for _ in range(world.size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_true(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank iff ``flag`` is true on every rank (so all ranks skip a step together)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_objects(obj, world: World) -> list:
    """Every rank's picklable ``obj``, in rank order (on every rank)."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(finished: bool = True) -> None:
    """Leave the process group (torchrun's processes end cleanly). ``finished``: every rank
    got to the end, so they meet at a barrier first (no rank tears Gloo down while a peer
    still has collectives in flight); after a failure there is no barrier, a failed peer
    would never come."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a torchrun worker after :func:`shutdown` without Python's interpreter teardown.

    ``destroy_process_group`` does not free a Gloo group that DTensor's caches still reach
    (FSDP2's meshes stay in torch's sharding-propagation and redistribution caches), so its
    worker threads are alive when the interpreter finalizes, where one of them can abort the
    process ("terminate called without an active exception", exit -6) after a run that
    finished and wrote everything. Every run file is already written atomically and closed;
    this flushes what is buffered and leaves at once."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe has nothing left to deliver
            pass
    logging.shutdown()
    os._exit(code)

"""Multi-process training on torch.distributed: torchrun sets the environment, this module does the rest.

* ``init_distributed`` joins the process group torchrun describes (NCCL on CUDA, gloo on CPU) and says which rank
  this process is; one process without torchrun is world size 1 and nothing here does anything.
* ``wrap_model``: ``ddp`` — DistributedDataParallel, which synchronises only parameters that require gradients (the
  frozen base is never communicated); ``fsdp`` — FSDP2 ``fully_shard`` per transformer block and at the root, for
  bases too large for one device, frozen and trainable parameters sharded alike.
* Data: every rank builds the same seeded, length-grouped *global* batches of ``batch_size x world`` examples and
  takes its own slice, so 2 processes x batch 4 see exactly the examples 1 process x batch 8 sees, step by step.
* ``full_tensor`` / ``local_shard`` move between a sharded (DTensor) parameter and its whole value, so saved
  adapters always hold every parameter in full.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from leantune.errors import LeantuneError


@dataclass
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "none"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """The sums over all ranks of a few numbers (float64 on the wire)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum(1.0 if flag else 0.0)[0] > 0

    @property
    def comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(strategy: str, backend: str = "auto") -> Dist:
    """Join torchrun's process group (if there is one); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if strategy == "none":
        strategy = "ddp"
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, strategy=strategy)


def device_for(d: Dist) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def shutdown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- model
class _DDP(nn.parallel.DistributedDataParallel):
    """DDP whose wrapped model's attributes (config, get_output_embeddings, ...) stay reachable, so task code
    works on the wrapper unchanged."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_model(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The model as the strategy trains it (the model itself on one process)."""
    if not d.active:
        return model
    if d.strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return _DDP(model, device_ids=ids, find_unused_parameters=False)
    if d.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from leantune.train.checkpointing import transformer_blocks

        blocks = transformer_blocks(model)
        if not blocks:
            raise LeantuneError(f"distributed.strategy fsdp shards per transformer block; {type(model).__name__} "
                                "has none leantune recognises. Use strategy: ddp.")
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    raise LeantuneError(f"unknown distributed.strategy {d.strategy!r}; choose ddp or fsdp")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Within the block, backward accumulates locally (gradient accumulation micro-batches but the last)."""
    if not skip:
        yield
        return
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


# ------------------------------------------------------------------------------------------------- tensors
def is_sharded(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole value of a parameter, gathered from every rank when it is sharded (collective: all ranks call)."""
    return t.full_tensor() if is_sharded(t) else t


def load_full_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole value into a parameter, keeping only this rank's shard when it is sharded."""
    with torch.no_grad():
        if is_sharded(param):
            from torch.distributed.tensor import distribute_tensor

            shard = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
            param.to_local().copy_(shard.to_local())
        else:
            param.copy_(value)


def global_batches(batches: list[list[int]], d: Dist) -> list[list[int]]:
    """This rank's slice of every global batch (contiguous; a last batch too small for every rank is dropped)."""
    if not d.active:
        return batches
    out = []
    for b in batches:
        if len(b) < d.world:
            continue
        per = len(b) // d.world
        extra = len(b) % d.world
        start = d.rank * per + min(d.rank, extra)
        out.append(b[start:start + per + (1 if d.rank < extra else 0)])
    return out

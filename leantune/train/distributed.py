"""Multi-process training on torch.distributed: torchrun sets the environment, this module does the rest.

* ``init_distributed`` joins the process group torchrun describes (NCCL on CUDA, gloo on CPU) and says which rank
  this process is; one process without torchrun is world size 1 and nothing here does anything.
* ``wrap_model``: ``ddp`` — DistributedDataParallel, which synchronises only parameters that require gradients (the
  frozen base is never communicated); ``fsdp`` — FSDP2 ``fully_shard`` per transformer block and at the root, for
  bases too large for one device, frozen and trainable parameters sharded alike.
* Data: every rank builds the same seeded, length-grouped *global* batches of ``batch_size x world`` examples and
  takes its own slice, so 2 processes x batch 4 see exactly the examples 1 process x batch 8 sees, step by step.
* Sharded (DTensor) parameters are read and written whole through :mod:`leantune.tensors`, so saved adapters and
  checkpoints always hold every parameter in full.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist
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
            torch_dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """The sums over all ranks of a few numbers (float64 on the wire)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        torch_dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum(1.0 if flag else 0.0)[0] > 0

    @property
    def comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch_dist.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(strategy: str, backend: str = "auto") -> Dist:
    """Join torchrun's process group (if there is one) and say where this process stands in it."""
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
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return Dist(rank=torch_dist.get_rank(), world=torch_dist.get_world_size(), local_rank=local_rank, strategy=strategy)


def shutdown(dist: Dist) -> None:
    if dist.active and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- model
class _DDP(nn.parallel.DistributedDataParallel):
    """DDP whose wrapped model's attributes (config, get_output_embeddings, ...) stay reachable, so task code
    works on the wrapper unchanged."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_model(model: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """The model as the strategy trains it (the model itself on one process)."""
    if not dist.active:
        return model
    if dist.strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return _DDP(model, device_ids=ids, find_unused_parameters=False)
    if dist.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from leantune.train.activation_checkpointing import transformer_blocks

        blocks = transformer_blocks(model)
        if not blocks:
            raise LeantuneError(f"distributed.strategy fsdp shards per transformer block; {type(model).__name__} "
                                "has none leantune recognises. Use strategy: ddp.")
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    raise LeantuneError(f"unknown distributed.strategy {dist.strategy!r}; choose ddp or fsdp")


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


def global_batches(batches: list[list[int]], dist: Dist) -> list[list[int]]:
    """This rank's slice of every global batch (contiguous; a last batch too small for every rank is dropped)."""
    if not dist.active:
        return batches
    out = []
    for b in batches:
        if len(b) < dist.world:
            continue
        per = len(b) // dist.world
        extra = len(b) % dist.world
        start = dist.rank * per + min(dist.rank, extra)
        out.append(b[start:start + per + (1 if dist.rank < extra else 0)])
    return out

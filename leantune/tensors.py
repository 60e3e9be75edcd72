"""Whole values of parameters that may be sharded across processes (FSDP2 DTensors), for saving and loading.

Below both the adapter API and the training loop: saved adapters and checkpoints always hold every parameter in
full, whichever process wrote them.
"""

from __future__ import annotations

import torch


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor (one shard of a parameter per process)."""
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

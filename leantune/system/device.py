"""Where a process computes and how: its device, the autocast dtype, and the seeds of every random generator."""

from __future__ import annotations

import random

import torch


def pick_device(local_rank: int | None = None) -> torch.device:
    """This process's device: its own GPU (``local_rank``'s, under torchrun) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware has it; fp32 on CPU (where bf16 runs slower than fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if precision == "bf16":
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass

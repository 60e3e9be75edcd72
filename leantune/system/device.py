"""Where a process computes and how: its device, the precision policy (compute dtype, autocast, the dtype the
frozen base is kept in), and the seeds of every random generator."""

from __future__ import annotations

import random

import torch

from leantune.errors import LeantuneError

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(local_rank: int | None = None) -> torch.device:
    """This process's device: its own GPU (``local_rank``'s, under torchrun) when there is one, else Apple
    silicon's GPU (MPS), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cuda_has_bf16() -> bool:
    """Whether the current GPU computes bf16 natively (Ampere and later; not T4 / V100, which only emulate it)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # pragma: no cover - torch without the argument
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` made concrete for ``device``: fp32, bf16 or fp16.

    auto: bf16 autocast on GPUs with bf16, fp16 autocast with a loss scaler on GPUs without it (T4, V100), fp32 on
    the CPU (where bf16 runs slower than fp32) and on MPS. An explicit choice is kept, except bf16 on a GPU that
    lacks it, which is refused."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_bf16() else "fp16"
        return "fp32"
    if precision not in ("fp32", *HALF):
        raise LeantuneError(f"train.precision {precision!r}: choose auto, fp32, bf16 or fp16")
    if precision == "bf16" and device.type == "cuda" and not cuda_has_bf16():
        raise LeantuneError("train.precision bf16: this GPU has no native bf16; use fp16 (with its loss scaler), "
                            "fp32 or auto")
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``train.precision``, or already resolved) on ``device``; None: fp32,
    no autocast."""
    return HALF.get(resolve_precision(precision, device))


def base_dtype(precision: str, device: torch.device, stored: torch.dtype) -> torch.dtype:
    """The dtype the frozen base keeps a tensor stored in ``stored`` in: fp32 when the run computes in fp32 (a bf16
    checkpoint is upcast); under autocast, fp32 tensors stay fp32 and half ones take the autocast dtype."""
    if not stored.is_floating_point:
        return stored
    compute = autocast_dtype(precision, device)
    if compute is None:
        return torch.float32
    return stored if stored == torch.float32 else compute


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass

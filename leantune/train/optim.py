"""AdamW over the trainable parameters only, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    rates: dict[int, float] | None = None) -> torch.optim.AdamW:
    """AdamW on trainable parameters, one group per (learning rate, weight decay): a parameter trains at
    ``rates[id(p)]`` if given (LoRA+), else at ``lr``; no weight decay for biases, norms and other 1-D parameters.
    The groups at ``lr`` come first (the logged rate is the first group's)."""
    rates = rates or {}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((rates.get(id(p), lr), p.dim() >= 2), []).append(p)
    order = sorted(groups, key=lambda key: (key[0] != lr, key[0], not key[1]))
    return torch.optim.AdamW([{"params": groups[key], "lr": key[0], "weight_decay": weight_decay if key[1] else 0.0}
                              for key in order], lr=lr)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warmup, then linear/cosine/constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def build_scheduler(opt: torch.optim.Optimizer, total: int, warmup: int, schedule: str):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, schedule))

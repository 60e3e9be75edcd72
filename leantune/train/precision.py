"""The precision policy applied to a run: the frozen base in the compute dtype, every trainable weight (and so
the optimizer state) in fp32, autocast around the forward passes, and fp16's loss scaler."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from leantune.system.device import base_dtype


def cast_base(model: nn.Module, precision: str, device: torch.device) -> None:
    """Cast the model's floating tensors to the dtype the base computes in (:func:`base_dtype`): a bf16
    checkpoint becomes fp32 for an fp32 run; tensors a model keeps in fp32 on purpose stay fp32 under autocast."""
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None and (dtype := base_dtype(precision, device, param.dtype)) != param.dtype:
                param.data = param.data.to(dtype)
        for name, buffer in module._buffers.items():
            if buffer is not None and (dtype := base_dtype(precision, device, buffer.dtype)) != buffer.dtype:
                module._buffers[name] = buffer.to(dtype)


def upcast_trainable(model: nn.Module) -> int:
    """Keep every trainable weight (adapters, heads, BitFit's biases; all of them in full fine-tuning) in fp32, as
    peft keeps adapters: the updates of a half-precision weight round away. A module holding a trainable weight
    is cast whole (a norm's weight and bias must share a dtype). Returns how many tensors were cast."""
    cast = 0
    for module in model.modules():
        own = [p for p in module._parameters.values() if p is not None]
        if any(p.requires_grad and p.is_floating_point() and p.dtype != torch.float32 for p in own):
            for param in own:
                if param.is_floating_point() and param.dtype != torch.float32:
                    param.data = param.data.float()
                    cast += 1
    return cast


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (None: off): how the forward passes of a run compute, in training and
    in its evaluations."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(precision: str, device: torch.device, strategy: str = "none") -> torch.amp.GradScaler:
    """fp16's dynamic loss scaler (``precision``: resolved); for every other precision a disabled one, whose
    ``scale`` returns the loss as it is and whose ``step`` is the optimizer's. Under FSDP the sharded scaler, which
    agrees on overflow across the ranks."""
    if precision == "fp16" and strategy == "fsdp":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")

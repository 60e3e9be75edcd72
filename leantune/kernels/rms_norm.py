"""RMSNorm as one autograd node: ``y = x / rms(x) · (w + offset)``, offset 0 in Llama, Mistral, Qwen; 1 in Gemma.

transformers writes the norm as six tensor ops (``pow``, ``mean``, ``add``, ``rsqrt``, two ``mul``), and autograd
runs about ten more in backward, each a pass over the hidden states with a fresh buffer. Here the forward is one
reduction (the vector norm) and two passes into one buffer; backward is four passes into one buffer and keeps
only the input and the per-token ``1 / rms`` (autograd also keeps the normalised tensor). Every norm of a decoder
runs twice per layer on every token (Gemma 3: four times, plus its query and key norms).
Outputs and gradients equal the model's own norm up to floating-point rounding; float32 only (other dtypes run
the model's own forward, which casts between the reduction and the weight in a family-specific order).
"""

from __future__ import annotations

import types

import torch
from torch import nn

WEIGHT_TIMES_NORM = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}
"""transformers norms computing ``weight * x / rms(x)`` with the epsilon in ``variance_epsilon``."""
ONE_PLUS_WEIGHT = {"GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm"}
"""transformers norms computing ``(1 + weight) * x / rms(x)`` with the epsilon in ``eps``."""


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
        n = x.shape[-1]
        inv_rms = torch.linalg.vector_norm(x, 2, -1, keepdim=True).square_().div_(n).add_(eps).rsqrt_()
        scale = weight + offset if offset else weight
        ctx.save_for_backward(x, scale, inv_rms)
        return (x * inv_rms).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, scale, inv_rms = ctx.saved_tensors
        n = x.shape[-1]
        grad_w = (grad * x).mul_(inv_rms).reshape(-1, n).sum(0) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d/dx of x·r·s with r = 1/rms(x): r·(g·s) - x·r³·<g·s, x>/n, written into one buffer
            grad_scaled = grad * scale
            coeff = torch.linalg.vecdot(grad_scaled, x).unsqueeze_(-1).mul_(inv_rms.pow(3)).div_(n)
            grad_x = grad_scaled.mul_(inv_rms).addcmul_(x, coeff, value=-1.0)
        return grad_x, grad_w, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) · (weight + offset)`` over the last dimension, one autograd node."""
    return _RMSNorm.apply(x, weight, eps, offset)


def _lean_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if x.dtype is not torch.float32 or self.weight.dtype is not torch.float32:
        return type(self).forward(self, x)
    if type(self).__name__ in ONE_PLUS_WEIGHT:
        return rms_norm(x, self.weight, self.eps, 1.0)
    return rms_norm(x, self.weight, self.variance_epsilon)


def patch_model_rms_norms(model: nn.Module) -> int:
    """Patch the RMSNorm instances of ``model`` (:data:`WEIGHT_TIMES_NORM`, :data:`ONE_PLUS_WEIGHT`; their
    classes and other models are left alone) so that each is one autograd node; returns how many."""
    norms = [m for m in model.modules() if type(m).__name__ in WEIGHT_TIMES_NORM | ONE_PLUS_WEIGHT]
    for norm in norms:
        norm.forward = types.MethodType(_lean_forward, norm)
    return len(norms)

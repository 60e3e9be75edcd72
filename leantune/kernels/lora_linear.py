"""A LoRA linear layer in training as one autograd node: ``y = x Wᵀ + b + s (x Aᵀ) Bᵀ`` with W and b frozen.

Autograd would run the base projection and the adapter as separate nodes: the adapter's output is written to a
buffer and added to the base output in forward, and in backward the adapter's input gradient is written to its
own buffer and added to the base's. Here both additions happen inside the GEMMs (``addmm_`` accumulates into the
output that is already there), saving two passes over the layer's output in forward and two over its input in
backward, and most of the autograd bookkeeping per layer. What is saved for backward is what autograd saves for the same
computation: the input, the rank-r activations and references to the weights. Results equal the unfused
computation up to floating-point summation order.
"""

from __future__ import annotations

import torch


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scaling: float) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        out = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        xa = (x2 @ a.t()).mul_(scaling)
        out.addmm_(xa, b.t())
        ctx.save_for_backward(x2, weight, a, b, xa)
        ctx.scaling = scaling
        ctx.x_shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2, weight, a, b, xa = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        dxa = (g @ b).mul_(ctx.scaling)
        grad_x = (g @ weight).addmm_(dxa, a).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        grad_a = dxa.t() @ x2 if ctx.needs_input_grad[3] else None
        grad_b = g.t() @ xa if ctx.needs_input_grad[4] else None
        return grad_x, None, None, grad_a, grad_b, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor,
                scaling: float) -> torch.Tensor:
    """``x Wᵀ + bias + scaling · (x Aᵀ) Bᵀ`` for a frozen (out, in) ``weight`` and ``bias``; A is (r, in), B (out, r).
    All tensors share one dtype; gradients flow to ``x``, A and B."""
    return _LoraLinear.apply(x, weight, bias, a, b, scaling)

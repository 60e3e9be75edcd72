"""Gated MLPs (``down(act(gate(x)) * up(x))``: SwiGLU in Llama, Mistral, Qwen; GeGLU in Gemma) that keep less for
backward.

Autograd keeps three tensors of the intermediate size per layer for the gated product: ``gate(x)`` for the
activation's gradient, ``act(gate(x))`` and ``up(x)`` for the product's. Here only ``gate(x)`` and ``up(x)`` are
kept and the activation is recomputed in backward (one elementwise pass): one tensor of tokens x intermediate
size less per layer, the largest activations of these models (SmolLM2: 1536 floats per token per layer, about
0.5 GB for a batch of 8 x 320 over 30 layers). Outputs and gradients equal the plain computation; evaluation
(no gradients) runs the model's own forward.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import nn

GATED_MLP_CLASSES = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "GemmaMLP", "Gemma2MLP", "Gemma3MLP"}
"""transformers MLP classes whose forward is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``."""


class _GatedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.act = act
        ctx.save_for_backward(gate, up)
        return act(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        with torch.enable_grad():
            g = gate.detach().requires_grad_()
            activated = ctx.act(g)
        grad_up = grad * activated.detach() if ctx.needs_input_grad[1] else None
        grad_gate = torch.autograd.grad(activated, g, grad * up)[0] if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up, None


def gated_product(gate: torch.Tensor, up: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``act(gate) * up``, keeping only ``gate`` and ``up`` for backward."""
    return _GatedProduct.apply(gate, up, act)


def _forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return type(self).forward(self, x)  # the model's own forward
    return self.down_proj(gated_product(self.gate_proj(x), self.up_proj(x), self.act_fn))


def lean_gated_mlps(model: nn.Module) -> int:
    """Make every gated MLP of ``model`` (:data:`GATED_MLP_CLASSES`) keep less for backward; returns how many."""
    mlps = [m for m in model.modules() if type(m).__name__ in GATED_MLP_CLASSES]
    for mlp in mlps:
        mlp.forward = types.MethodType(_forward, mlp)
    return len(mlps)

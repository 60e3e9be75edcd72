"""Gated MLPs (``down(act(gate(x)) * up(x))``: SwiGLU in Llama, Mistral, Qwen; GeGLU in Gemma) that keep less for
backward.

Autograd keeps three tensors of the intermediate size per layer for the gated product: ``gate(x)`` for the
activation's gradient, ``act(gate(x))`` and ``up(x)`` for the product's. Here only ``gate(x)`` and ``up(x)`` are
kept and the activation is recomputed in backward (one elementwise pass): one tensor of tokens x intermediate
size less per layer, the largest activations of these models (SmolLM2: 1536 floats per token per layer, about
0.5 GB for a batch of 8 x 320 over 30 layers). For SiLU and GELU (tanh approximation) the product is computed
into the activation's buffer, and backward writes its two gradients into two buffers with ATen's one-kernel
derivative (autograd: four), fewer fresh pages to fault in per layer. Outputs and gradients equal the plain
computation; evaluation (no gradients) runs the model's own forward.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GATED_MLP_CLASSES = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "GemmaMLP", "Gemma2MLP", "Gemma3MLP"}
"""transformers MLP classes whose forward is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``."""


def _silu_derivative(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.silu_backward.grad_input(grad, x, grad_input=grad)


def _gelu_tanh_derivative(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward.grad_input(grad, x, approximate="tanh", grad_input=grad)


def _in_place_derivative(act: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``(grad, x) -> grad · act'(x)`` written into ``grad``, for the activations whose derivative ATen has as one
    kernel (SiLU; GELU, tanh approximation); None for any other."""
    if isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation":
        return _silu_derivative
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return _gelu_tanh_derivative
    fn = getattr(act, "act", None)  # transformers' GELUTanh keeps functools.partial(F.gelu, approximate="tanh")
    if type(act).__name__ == "GELUTanh" and getattr(fn, "func", None) is F.gelu and fn.keywords == {"approximate": "tanh"}:
        return _gelu_tanh_derivative
    return None


class _GatedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.act = act
        ctx.derivative = _in_place_derivative(act)
        ctx.save_for_backward(gate, up)
        return act(gate).mul_(up) if ctx.derivative else act(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        need_gate, need_up = ctx.needs_input_grad[:2]
        if ctx.derivative is not None:  # two buffers: act(gate) becomes grad_up, grad·up becomes grad_gate
            grad_up = ctx.act(gate).mul_(grad) if need_up else None
            grad_gate = ctx.derivative(grad * up, gate) if need_gate else None
            return grad_gate, grad_up, None
        with torch.enable_grad():
            g = gate.detach().requires_grad_()
            activated = ctx.act(g)
        grad_up = grad * activated.detach() if need_up else None
        grad_gate = torch.autograd.grad(activated, g, grad * up)[0] if need_gate else None
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

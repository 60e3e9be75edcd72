"""Rotary position embedding as one autograd node per tensor.

transformers rotates the queries and keys as ``q·cos + rotate_half(q)·sin``, where ``rotate_half`` slices, negates
and concatenates: five passes and three fresh buffers per tensor, and as many again in backward. Here it is one
multiplication and two in-place ``addcmul`` on the halves, and backward is the inverse rotation, the same three
passes; nothing but ``cos`` and ``sin`` is kept for backward.

transformers' attention layers call the module-level function ``apply_rotary_pos_emb`` of their modeling module,
so, as Liger-Kernel and Unsloth do, :func:`patch_transformers_rotary` replaces that function in the modeling module of the
model's family (:data:`ROTARY_FAMILIES`): every model of that family in the process then uses it. The replacement
gives the same results up to floating-point rounding and falls back to the original for anything but the plain
case (partial rotary dimensions, mixed dtypes).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

ROTARY_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"}
"""transformers model families whose ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)`` rotates all of
``q``'s and ``k``'s last dimension by ``cos`` and ``sin`` as ``x·cos + rotate_half(x)·sin``."""


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        half = sin.shape[-1] // 2
        return _rotate(x, cos, sin[..., :half], sin[..., half:])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        half = sin.shape[-1] // 2
        return _rotate(grad, cos, -sin[..., half:], -sin[..., :half]), None, None  # the transposed rotation


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_low: torch.Tensor, sin_high: torch.Tensor) -> torch.Tensor:
    """``x·cos + rotate_half(x)·sin`` for ``sin`` = (``sin_low``, ``sin_high``) along the last dimension."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin_low, value=-1.0)
    out[..., half:].addcmul_(x[..., :half], sin_high)
    return out


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x·cos + rotate_half(x)·sin`` with ``cos`` and ``sin`` broadcasting to ``x``, one autograd node."""
    return _Rotate.apply(x, cos, sin)


def _lean_apply(original: Callable) -> Callable:
    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        dims = {q.shape[-1], k.shape[-1], cos.shape[-1], sin.shape[-1]}
        dtypes = {q.dtype, k.dtype, cos.dtype, sin.dtype}
        if len(dims) != 1 or len(dtypes) != 1 or q.shape[-1] % 2:
            return original(q, k, cos, sin, unsqueeze_dim)
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return rotate(q, cos, sin), rotate(k, cos, sin)

    apply_rotary_pos_emb.leantune_original = original
    return apply_rotary_pos_emb


def patch_transformers_rotary(model: nn.Module) -> bool:
    """Patch transformers for the whole process: replace ``apply_rotary_pos_emb`` in the modeling module of
    ``model``'s family (:data:`ROTARY_FAMILIES`) with the one-node rotation, so every model of that family in this
    process uses it (once; the original is the fallback). Returns whether the family is one of them."""
    family = (getattr(getattr(model, "config", None), "model_type", None) or "").removesuffix("_text")
    module = sys.modules.get(f"transformers.models.{family}.modeling_{family}")
    if family not in ROTARY_FAMILIES or module is None:
        return False
    current = module.apply_rotary_pos_emb
    if not hasattr(current, "leantune_original"):
        module.apply_rotary_pos_emb = _lean_apply(current)
    return True

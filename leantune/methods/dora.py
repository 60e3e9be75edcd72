"""DoRA (Liu et al. 2024), weight-decomposed LoRA, as a LoRA variant (``LoraConfig(use_dora=True)``, ``method: dora``).

The adapted weight ``W + s·BA`` is split into a direction and a learned magnitude ``m`` per output feature:
``W' = m · (W + s·BA) / ‖W + s·BA‖``, the norm taken over each output's input features (:func:`weight_norm`, the
one place it is computed). ``m`` starts at that norm, so the model starts as the base. In the forward pass the
norm is a constant for the gradient (paper §4.3), as in peft. ``m`` is saved as peft saves it, in
``lora_magnitude_vector`` beside A and B.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from leantune.methods.lora_variant import LoraVariant

if TYPE_CHECKING:
    from leantune.methods.lora import LoraConfig, LoraLayer


def weight_norm(weight: torch.Tensor, delta: torch.Tensor, in_axis: int, spend_delta: bool = False) -> torch.Tensor:
    """``‖W + ΔW‖`` per output feature (the norm over ``in_axis``), computed in ``delta``'s dtype; with
    ``spend_delta`` the sum is made in ``delta`` itself (no second matrix of the weight's size)."""
    total = delta.add_(weight.to(delta.dtype)) if spend_delta else weight.to(delta.dtype) + delta
    return torch.linalg.norm(total, dim=in_axis)


class DoraVariant(LoraVariant):
    """DoRA beside an ``nn.Linear`` or GPT-2 ``Conv1D``; merging is the same for every layer kind."""

    containers = {"lora_magnitude_vector": nn.ParameterDict}

    def __init__(self) -> None:
        self.merged_norm: torch.Tensor | None = None  # the norm the merge divided by, which unmerge needs

    def init(self, layer: LoraLayer, name: str, config: LoraConfig) -> None:
        with torch.no_grad():
            norm = weight_norm(layer.base_weight(), layer.delta_weight(name), layer.in_axis, spend_delta=True)
        layer.lora_magnitude_vector[name] = nn.Parameter(norm)

    def magnitude_scale(self, layer: LoraLayer, name: str, weight: torch.Tensor) -> torch.Tensor:
        """``m / ‖W + s·BA‖`` per output feature, the norm detached from the graph."""
        norm = weight_norm(weight, layer.delta_weight(name).detach(), layer.in_axis, spend_delta=True).detach()
        return layer.lora_magnitude_vector[name] / norm

    def row_scale(self, layer: LoraLayer, name: str) -> torch.Tensor:
        with torch.no_grad():
            return self.magnitude_scale(layer, name, layer.base_weight())

    def forward(self, layer: LoraLayer, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        dropout = layer.lora_dropout[name]
        xd = dropout(x)
        weight = layer.base_weight().to(xd.dtype)
        scale = self.magnitude_scale(layer, name, weight)
        if isinstance(dropout, nn.Identity) or not layer.training:
            bias = layer.base_layer.bias
            base_out = result - bias if bias is not None else result
        else:  # the base term must see the same dropped-out input as the adapter
            base_out = F.linear(xd, weight)
        lora_out = layer.lora_B[name](layer.lora_A[name](xd)) * layer.scaling[name]
        return result + ((scale - 1) * base_out + scale * lora_out).to(result.dtype)

    def merged(self, layer: LoraLayer, name: str, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        self.merged_norm = weight_norm(weight, delta, layer.in_axis)
        factor = (layer.lora_magnitude_vector[name] / self.merged_norm).unsqueeze(layer.in_axis)
        return (factor * (weight.to(delta.dtype) + delta)).to(weight.dtype)

    def unmerged(self, layer: LoraLayer, name: str, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        assert self.merged_norm is not None, "unmerge without a merge"
        factor = (layer.lora_magnitude_vector[name] / self.merged_norm).unsqueeze(layer.in_axis)
        self.merged_norm = None
        return (weight.to(delta.dtype) / factor - delta).to(weight.dtype)


class DoraEmbeddingVariant(DoraVariant):
    """DoRA beside an ``nn.Embedding`` (no bias, no dropout): ``scale · (base(x) + s·(BA)ᵀ[x])``."""

    def forward(self, layer: LoraLayer, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        scale = self.magnitude_scale(layer, name, layer.base_weight())
        return result * scale + scale * layer.lora_output(name, x)

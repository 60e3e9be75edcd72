"""The seam for LoRA variants (peft's ``LoraVariant``): what a variant may change in a LoRA layer.

Every adapter of a LoRA layer has a variant object (one per layer and adapter, so it may keep per-adapter state
that is not a parameter). :class:`LoraVariant` itself is plain LoRA: ``y = base(x) + s·B A dropout(x)``, merged
by adding ``s·BA`` to the base weight. A variant subclasses it and overrides what it changes; DoRA
(:mod:`leantune.methods.dora`) overrides all five hooks. ``LoraConfig.variant`` names the variant an adapter
uses, and each layer kind maps that name to its class (``LoraLinear.variant_types``).

What a layer offers its variants (``leantune.methods.lora.LoraLayer``): ``scaling[name]``, its A/B (and
dropout) modules, ``lora_output(name, x)`` (``s·B A dropout(x)``), and its weights in one layout, with
``in_axis`` the input-feature axis: ``base_weight()`` (a quantized one dequantised), ``delta_weight(name)``
(``s·BA``). Linear layers use ``(out_features, in_features)``, embeddings ``(num_embeddings, dim)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from leantune.methods.lora import LoraConfig, LoraLayer


class LoraVariant:
    """Plain LoRA; the base class of LoRA variants, which override the hooks they change."""

    containers: ClassVar[dict[str, Callable[[], nn.Module]]] = {}
    """Per-adapter containers the variant adds to the layer (peft's names, so saved keys match peft's)."""

    def init(self, layer: LoraLayer, name: str, config: LoraConfig) -> None:
        """Called when adapter ``name`` is added, once its A and B exist and are initialised."""

    def forward(self, layer: LoraLayer, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """The layer's output, given its input ``x`` (in the adapter's dtype) and ``result``, the base layer's."""
        return result + layer.lora_output(name, x).to(result.dtype)

    def row_scale(self, layer: LoraLayer, name: str) -> torch.Tensor | None:
        """Serving: the factor per output feature that a row's adapted output is scaled by (around the bias), with
        the weights fixed; None for plain LoRA. A variant whose output is not of that form cannot be served."""
        return None

    def merged(self, layer: LoraLayer, name: str, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The base weight with adapter ``name`` folded in; ``delta`` is ``s·BA`` in the weight's layout."""
        return weight + delta.to(weight.dtype)

    def unmerged(self, layer: LoraLayer, name: str, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The base weight before :meth:`merged` folded adapter ``name`` into ``weight``."""
        return weight - delta.to(weight.dtype)

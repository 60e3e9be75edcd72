"""What the weight-update methods added beside LoRA (LoKr, OFT, VeRA) share.

Each adapts ``nn.Linear`` and GPT-2's ``Conv1D`` (weight stored transposed) and computes its update as a matrix in
the (out_features, in_features) layout; :func:`write_weight` stores such a matrix back into either kind of layer.
LoKr and VeRA add a delta ``ΔW`` to the weight (:class:`DeltaLayer`); OFT multiplies it by a rotation. Their
:class:`LinearAdapterMethod` wraps the configured linear targets in the method's layer and trains the biases that
the config's ``bias`` option names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import (
    LINEAR_TYPES,
    AdapterLayer,
    Method,
    MethodConfig,
    base_biases,
    is_conv1d,
    weight_as_out_in,
)
from leantune.methods.rows import RowOp
from leantune.methods.targeting import (
    inject_layers,
    keep_layers,
    portable_target_names,
    resolve_linear_targets,
)
from leantune.models.quantize import is_quantized_layer


def adapter_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype of the adapter parameters beside ``layer``: its weight's, float32 beside an integer (quantized)
    weight."""
    w = layer.weight
    return w.dtype if w.is_floating_point() else torch.float32


def write_weight(layer: nn.Module, w_out_in: torch.Tensor) -> None:
    """Store ``w_out_in`` (out × in) as ``layer``'s weight, transposed for a Conv1D."""
    if is_quantized_layer(layer):
        raise LeantuneError("merging writes to the base weight, which is quantized here; merge with lt.merge(model), "
                            "which dequantises the base first, or keep the adapter unmerged.")
    layer.weight.data.copy_(w_out_in.T if is_conv1d(layer) else w_out_in)


def delta_output(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``ΔW x`` (``delta``: out × in), in the delta's dtype."""
    return F.linear(x.to(delta.dtype), delta)


@dataclass(eq=False)
class DeltaRowOp(RowOp):
    """A dense weight update on a slice of rows, ``y + ΔW x``, with ``ΔW`` computed once (fixed while serving):
    the memory of a copy of the layer."""

    delta: torch.Tensor  # (out, in)

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        out[s:e] += delta_output(x[s:e], self.delta).to(out.dtype)


class DeltaLayer(AdapterLayer):
    """An adapter layer whose update is an additive weight delta: ``y = W x + ΔW x``; merging adds ``ΔW`` to W."""

    def delta_weight(self, name: str) -> torch.Tensor:
        """``ΔW`` of adapter ``name`` as (out_features, in_features), in the adapter's dtype."""
        raise NotImplementedError

    def row_op(self, name: str) -> RowOp:
        with torch.no_grad():
            return DeltaRowOp(self.delta_weight(name))

    def _merge(self, name: str) -> None:
        W = weight_as_out_in(self.base_layer)
        write_weight(self.base_layer, W + self.delta_weight(name).to(W.dtype))

    def _unmerge(self, name: str) -> None:
        W = weight_as_out_in(self.base_layer)
        write_weight(self.base_layer, W - self.delta_weight(name).to(W.dtype))


def trained_biases(model: nn.Module, bias: str, layer_cls: type[AdapterLayer], name: str) -> dict[str, nn.Parameter]:
    """The biases a method trains in place, by full name: none, ``all`` of the model's, or (``<method>_only``) those
    of the layers that carry adapter ``name`` (peft's ``bias`` option)."""
    if bias == "none":
        return {}
    if bias == "all":
        return base_biases(model)
    return {
        f"{m}.base_layer.bias": mod.base_layer.bias
        for m, mod in model.named_modules()
        if isinstance(mod, layer_cls) and name in mod.adapter_names and mod.base_layer.bias is not None
    }


class LinearAdapterMethod(Method):
    """A method that wraps each target linear layer (``target_modules`` / ``exclude_modules`` of its config) in its
    ``layer_cls`` and, when its config has peft's ``bias`` option, trains those biases in place."""

    layer_cls: ClassVar[type[AdapterLayer]]
    label: ClassVar[str]
    """The method's name in messages (LoKr, OFT, VeRA)."""
    saves_fan_in_fan_out: ClassVar[bool] = True
    """Whether peft's config of the method records ``fan_in_fan_out`` (GPT-2's Conv1D layers)."""

    def layer_factory(self, model: nn.Module, name: str, config: Any,
                      targets: list[str]) -> Callable[[nn.Module], AdapterLayer]:
        """What wraps one target layer; the class itself unless the layers share something (VeRA)."""
        return self.layer_cls

    def inject(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, Any]:
        assert isinstance(config, self.config_cls)
        targets = resolve_linear_targets(model, config.target_modules, config.exclude_modules, self.label)
        targets = keep_layers(targets, config.target_modules, config.layers_to_transform, config.layers_pattern,
                              self.label)
        make = self.layer_factory(model, name, config, targets)
        inject_layers(model, targets, self.layer_cls, lambda t, m: make(m), name, config)
        resolved: dict[str, Any] = {"target_modules": portable_target_names(model, targets, LINEAR_TYPES)}
        if self.saves_fan_in_fan_out:
            resolved["fan_in_fan_out"] = any(is_conv1d(model.get_submodule(t).base_layer) for t in targets)
        return resolved

    def extra_parameters(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, nn.Parameter]:
        bias = config.model_dump(include={"bias"}).get("bias", "none")
        return trained_biases(model, bias, self.layer_cls, name)


def peft_dict_from_fields(config: MethodConfig, resolved: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``adapter_config.json`` for a config whose fields carry peft's names: every field, the targets injection
    resolved, and ``extra``."""
    fields = config.model_dump(exclude={"target_modules", "exclude_modules", "modules_to_save"})
    return {"peft_type": config.peft_type, **fields, "target_modules": resolved["target_modules"],
            "exclude_modules": None, "modules_to_save": resolved.get("modules_to_save"), **extra}


def config_from_peft_fields(cls: type[MethodConfig], d: dict[str, Any], unsupported: tuple[str, ...],
                            what: str) -> Any:
    """The config of a peft ``adapter_config.json`` whose keys are the config's field names (a missing key takes
    the default, which is peft's); an option in ``unsupported`` that is set is refused with its name."""
    bad = {k: d[k] for k in unsupported if not (d.get(k) is None or d.get(k) is False or d.get(k) in ({}, []))}
    if bad:
        raise LeantuneError(f"This {what} adapter uses peft options leantune does not support: {bad}.")
    return cls(**{k: d[k] for k in cls.model_fields if k in d})

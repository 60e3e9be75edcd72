"""Bottleneck adapters: a small down-project / non-linearity / up-project block added after a sublayer.

Houlsby et al. 2019 put one after the attention block and one after the FFN; Pfeiffer et al. 2020 only after the
FFN. ``y = h + up(act(down(h)))`` where ``h`` is the sublayer's output projection, before the residual add and the
layer norm. ``up`` starts at zero, so training starts from the base model. Not in peft: saved with
``peft_type: "BOTTLENECK"`` and keys ``<module>.adapter_down.weight`` / ``adapter_up.weight`` (+ biases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import (
    LINEAR_TYPES,
    AdapterLayer,
    Method,
    MethodConfig,
    in_out_features,
    weight_dtype_device,
)
from leantune.methods.rows import RowOp
from leantune.methods.targeting import find_targets, inject_layers
from leantune.models.targets import arch_targets

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckConfig(MethodConfig):
    """Bottleneck-adapter settings."""

    peft_type: ClassVar[str] = "BOTTLENECK"

    style: Literal["houlsby", "pfeiffer"] = "houlsby"
    reduction_factor: int = Field(16, gt=0, description="bottleneck size = hidden size / reduction_factor")
    bottleneck_size: int | None = Field(None, gt=0, description="overrides reduction_factor")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    scaling: float = 1.0
    target_modules: list[str] | str | None = None
    """Output projections to put adapters after; None: from ``style`` and the architecture."""

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        settings = self.model_dump(exclude={"modules_to_save", "target_modules"})
        return {"peft_type": "BOTTLENECK", **settings, "target_modules": resolved["target_modules"],
                "modules_to_save": resolved.get("modules_to_save")}

    @classmethod
    def from_peft_dict(cls, saved: dict[str, Any]) -> BottleneckConfig:
        fields = {k: v for k, v in saved.items() if k in cls.model_fields}
        return cls(**fields)


def bottleneck_update(h: torch.Tensor, down: nn.Module, act: nn.Module, up: nn.Module, scaling: float) -> torch.Tensor:
    """``s · up(act(down(h)))``, in ``h``'s dtype: what the adapter adds to the sublayer's output ``h``."""
    return (up(act(down(h.to(down.weight.dtype)))) * scaling).to(h.dtype)


@dataclass(eq=False)
class BottleneckRowOp(RowOp):
    """The bottleneck block on a slice of rows, added to their output in place (its modules in evaluation mode)."""

    down: nn.Module
    act: nn.Module
    up: nn.Module
    scaling: float

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        h = out[s:e]
        h += bottleneck_update(h, self.down, self.act, self.up, self.scaling)


class BottleneckLayer(AdapterLayer):
    """Wraps a sublayer's output projection and adds the bottleneck block to its output."""

    adapter_containers = ("adapter_down", "adapter_up", "adapter_act")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.adapter_act = nn.ModuleDict()
        self.scaling: dict[str, float] = {}

    def add(self, name: str, cfg: BottleneckConfig) -> None:
        _, hidden = in_out_features(self.base_layer)
        size = cfg.bottleneck_size or max(1, hidden // cfg.reduction_factor)
        dtype, device = weight_dtype_device(self.base_layer)  # a quantized base is not dequantised for this
        self.adapter_down[name] = nn.Linear(hidden, size, device=device, dtype=dtype)
        self.adapter_up[name] = nn.Linear(size, hidden, device=device, dtype=dtype)
        act: list[nn.Module] = [_ACTIVATIONS[cfg.non_linearity]()]
        if cfg.dropout > 0:
            act.append(nn.Dropout(cfg.dropout))
        self.adapter_act[name] = nn.Sequential(*act)
        nn.init.normal_(self.adapter_down[name].weight, std=1e-2)
        nn.init.zeros_(self.adapter_down[name].bias)
        nn.init.zeros_(self.adapter_up[name].weight)
        nn.init.zeros_(self.adapter_up[name].bias)
        self.scaling[name] = cfg.scaling

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        name = self.live_adapter()
        if name is None:
            return h
        return h + bottleneck_update(h, self.adapter_down[name], self.adapter_act[name], self.adapter_up[name],
                                     self.scaling[name])

    def row_op(self, name: str) -> RowOp:
        return BottleneckRowOp(self.adapter_down[name], self.adapter_act[name], self.adapter_up[name],
                               self.scaling[name])


class BottleneckMethod(Method):
    name = "bottleneck"
    config_cls = BottleneckConfig
    mergeable = False

    def inject(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, Any]:
        assert isinstance(config, BottleneckConfig)
        target = config.target_modules
        if target is None:
            arch = arch_targets(model)
            if arch is None:
                raise LeantuneError(
                    f"Bottleneck adapters have no default placement for model type "
                    f"'{model.config.model_type}'; set target_modules to the attention and FFN output projections."
                )
            if arch.ffn_output is None:
                raise LeantuneError(
                    f"Bottleneck adapters: the FFN of model type '{model.config.model_type}' is a mixture of experts "
                    "(3-D parameters), with no output projection to put an adapter after; set target_modules (the "
                    f"attention output is {arch.attention_output!r})."
                )
            target = arch.ffn_output if config.style == "pfeiffer" else f"(?:{arch.attention_output})|(?:{arch.ffn_output})"
        names = find_targets(model, target, LINEAR_TYPES, "bottleneck")
        inject_layers(model, names, BottleneckLayer, lambda _, m: BottleneckLayer(m), name, config)
        return {"target_modules": sorted(names)}

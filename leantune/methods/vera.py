"""VeRA (Kopiczko et al. 2024, "VeRA: Vector-based Random Matrix Adaptation"): one pair of frozen random matrices
shared by every adapted layer, and two trained scaling vectors per layer.

``y = W x + Λ_b B Λ_d A x`` with ``A: r × in`` and ``B: out × r`` sliced from the shared ``vera_A`` (r × largest
in) and ``vera_B`` (largest out × r), drawn Kaiming-uniform from ``projection_prng_key``; ``Λ_d = diag(lambda_d)``
(r values, start at ``d_initial``) and ``Λ_b = diag(lambda_b)`` (out values, start at 0, so the model starts as
the base). Parameter names, initialisation and file format are peft's (``peft.tuners.vera``): the projections are
saved once as ``base_model.vera_A`` / ``base_model.vera_B`` when ``save_projection`` is on, else rebuilt from
the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from leantune.methods.base import AdapterLayer, MethodConfig, in_out_features, require_state
from leantune.methods.lora import LoraRowOp
from leantune.methods.rows import RowOp
from leantune.methods.targeting import check_layer_selection
from leantune.methods.weight_delta import (
    DeltaLayer,
    LinearAdapterMethod,
    adapter_dtype,
    config_from_peft_fields,
    peft_dict_from_fields,
)

PROJECTION_KEYS = ("base_model.vera_A", "base_model.vera_B")


class VeraConfig(MethodConfig):
    """VeRA settings (peft's ``VeraConfig`` fields)."""

    peft_type: ClassVar[str] = "VERA"

    r: int = Field(256, gt=0, description="rank of the shared random projections")
    projection_prng_key: int = 0
    """Seed of the shared random matrices."""
    save_projection: bool = True
    """Save vera_A / vera_B with the adapter (else they are rebuilt from projection_prng_key when loading)."""
    vera_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    d_initial: float = 0.1
    """Starting value of lambda_d."""
    bias: Literal["none", "all", "vera_only"] = "none"
    init_weights: bool = True
    """True: lambda_b = 0, lambda_d = d_initial; False: lambda_b = 1, lambda_d ~ N(0, 1) (for tests)."""
    target_modules: list[str] | str | None = None
    """Module names (suffix match), a regex, ``"all-linear"``, or None for the architecture's default."""
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    """Adapt only the modules in these layer indexes (peft's rule, as LoRA's ``layers_to_transform``)."""
    layers_pattern: list[str] | str | None = None
    """The name of the model's layer list (``layers``, ``h``) that ``layers_to_transform`` counts in."""

    @model_validator(mode="after")
    def _layers(self) -> VeraConfig:
        check_layer_selection(self.target_modules, self.layers_to_transform, self.layers_pattern)
        return self

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        d = peft_dict_from_fields(self, resolved, fan_in_fan_out=bool(resolved.get("fan_in_fan_out", False)))
        del d["exclude_modules"]  # not a VeraConfig field: the resolved targets say it all
        return d

    @classmethod
    def from_peft_dict(cls, d: dict[str, Any]) -> VeraConfig:
        return config_from_peft_fields(cls, d, (), "VeRA")


def kaiming_projection(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform (gain sqrt 2, fan-in = shape[1]) from ``generator``, drawn as peft draws it on the CPU."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeraProjections(nn.Module):
    """The frozen ``vera_A`` / ``vera_B`` of each adapter. One module is referenced by every VeRA layer of a model,
    so the matrices exist once and move with the model."""

    def set(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        self.register_buffer(f"A_{name}", a, persistent=False)
        self.register_buffer(f"B_{name}", b, persistent=False)

    def pair(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"A_{name}"), getattr(self, f"B_{name}")

    def drop(self, name: str) -> None:
        for key in (f"A_{name}", f"B_{name}"):
            self._buffers.pop(key, None)


class VeraLinear(DeltaLayer):
    """VeRA beside an ``nn.Linear`` or GPT-2 ``Conv1D``: ``y = W x + lambda_b ⊙ B (lambda_d ⊙ A x)``."""

    adapter_containers = ("vera_lambda_b", "vera_lambda_d", "vera_dropout")

    def __init__(self, base_layer: nn.Module, projections: VeraProjections) -> None:
        super().__init__(base_layer)
        self.vera_lambda_b = nn.ParameterDict()
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_dropout = nn.ModuleDict()
        self.vera_projections = projections

    def add(self, name: str, cfg: VeraConfig) -> None:
        _, fan_out = in_out_features(self.base_layer)
        device, dtype = self.base_layer.weight.device, adapter_dtype(self.base_layer)
        if cfg.init_weights:
            b = torch.zeros(fan_out, device=device, dtype=dtype)
            d = torch.full((cfg.r,), cfg.d_initial, device=device, dtype=dtype)
        else:
            b = torch.ones(fan_out, device=device, dtype=dtype)
            d = torch.randn(cfg.r).to(device=device, dtype=dtype)
        self.vera_lambda_b[name] = nn.Parameter(b)
        self.vera_lambda_d[name] = nn.Parameter(d)
        self.vera_dropout[name] = nn.Dropout(cfg.vera_dropout) if cfg.vera_dropout > 0 else nn.Identity()

    def _projections(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices of the shared matrices: A (r × in), B (out × r)."""
        fan_in, fan_out = in_out_features(self.base_layer)
        a, b = self.vera_projections.pair(name)
        return a[:, :fan_in], b[:fan_out, :]

    def scaled_projections(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``Λ_d A`` (r × in) and ``Λ_b B`` (out × r): the update is their product, a rank-r LoRA's."""
        a, b = self._projections(name)
        return self.vera_lambda_d[name][:, None] * a, self.vera_lambda_b[name][:, None] * b

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.scaled_projections(name)
        return b @ a

    def row_op(self, name: str) -> RowOp:
        """A LoRA op of rank r (the same function; no dense ``ΔW`` kept)."""
        with torch.no_grad():
            return LoraRowOp(*self.scaled_projections(name))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        name = self.live_adapter()
        if name is None:
            return result
        a, b = self._projections(name)
        lambda_b, lambda_d = self.vera_lambda_b[name], self.vera_lambda_d[name]
        x = self.vera_dropout[name](x.to(lambda_d.dtype))
        return result + (lambda_b * F.linear(lambda_d * F.linear(x, a), b)).to(result.dtype)

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.vera_projections.drop(name)


class VeraMethod(LinearAdapterMethod):
    name = "vera"
    label = "VeRA"
    config_cls = VeraConfig
    layer_cls = VeraLinear

    def layer_factory(self, model: nn.Module, name: str, config: VeraConfig,
                      targets: list[str]) -> Callable[[nn.Module], VeraLinear]:
        """VeRA layers over one set of frozen projections, drawn for the largest target layer."""
        sizes = [in_out_features(_unwrapped(model.get_submodule(t))) for t in targets]
        largest_in, largest_out = max(s[0] for s in sizes), max(s[1] for s in sizes)
        generator = torch.Generator(device="cpu").manual_seed(config.projection_prng_key)
        a = kaiming_projection((config.r, largest_in), generator)
        b = kaiming_projection((largest_out, config.r), generator)
        first = _unwrapped(model.get_submodule(targets[0]))
        device, dtype = first.weight.device, adapter_dtype(first)
        projections = _projections_of(model) or VeraProjections()
        projections.set(name, a.to(device, dtype), b.to(device, dtype))
        return lambda module: VeraLinear(module, projections)

    def _projection_tensors(self, model: nn.Module, name: str) -> dict[str, torch.Tensor]:
        config = require_state(model).configs[name]
        assert isinstance(config, VeraConfig)
        projections = _projections_of(model)
        if not config.save_projection or projections is None:
            return {}
        return dict(zip(PROJECTION_KEYS, projections.pair(name), strict=True))

    def save_tensors(self, model: nn.Module, name: str) -> dict[str, torch.Tensor]:
        return {**super().save_tensors(model, name), **self._projection_tensors(model, name)}

    def load_keys(self, model: nn.Module, name: str) -> dict[str, nn.Parameter]:
        return {**super().load_keys(model, name), **self._projection_tensors(model, name)}  # type: ignore[dict-item]


def _unwrapped(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, AdapterLayer) else module


def _projections_of(model: nn.Module) -> VeraProjections | None:
    return next((m for m in model.modules() if isinstance(m, VeraProjections)), None)

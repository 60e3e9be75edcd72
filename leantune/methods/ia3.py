"""IA3 (Liu et al. 2022): learned vectors that rescale keys, values and the FFN's inner activations.

For an attention projection the output is rescaled, ``y = l ⊙ (W x + b)``; for a feed-forward output projection the
input is, ``y = W (l ⊙ x) + b``. Vectors start at ones, so the model starts as the base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import (
    LINEAR_TYPES,
    AdapterLayer,
    Method,
    MethodConfig,
    in_out_features,
    is_conv1d,
    weight_as_out_in,
    weight_dtype_device,
)
from leantune.methods.rows import RowOp
from leantune.methods.targeting import (
    inject_layers,
    portable_target_names,
    resolve_linear_targets,
    target_matches,
)
from leantune.models.targets import arch_targets


class IA3Config(MethodConfig):
    """IA3 settings: which layers get a scaling vector, and which of them scale their input (FFN)."""

    peft_type: ClassVar[str] = "IA3"

    target_modules: list[str] | str | None = None
    feedforward_modules: list[str] | str | None = None
    init_ia3_weights: bool = True
    """True: vectors start at 1 (identity). False: random (for tests)."""

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        return {
            "peft_type": "IA3",
            "target_modules": resolved["target_modules"],
            "feedforward_modules": resolved["feedforward_modules"],
            "fan_in_fan_out": bool(resolved.get("fan_in_fan_out", False)),
            "init_ia3_weights": self.init_ia3_weights,
            "modules_to_save": resolved.get("modules_to_save"),
        }

    @classmethod
    def from_peft_dict(cls, saved: dict[str, Any]) -> IA3Config:
        return cls(
            target_modules=saved.get("target_modules"),
            feedforward_modules=saved.get("feedforward_modules") or [],
            init_ia3_weights=saved.get("init_ia3_weights", True),
            modules_to_save=saved.get("modules_to_save"),
        )


def scaled(t: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``t`` scaled feature-wise by the (flattened) IA3 vector, in ``t``'s dtype."""
    return t * vector.to(t.dtype)


@dataclass(eq=False)
class IA3RowOp(RowOp):
    """IA3 on a slice of rows: their output rescaled (attention) or, for feed-forward layers, their input."""

    vector: torch.Tensor  # flattened
    feedforward: bool

    @property
    def scales_input(self) -> bool:  # type: ignore[override]
        return self.feedforward

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        return scaled(x, self.vector)

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        if not self.feedforward:
            out[s:e] = scaled(out[s:e], self.vector)


class IA3Linear(AdapterLayer):
    """A learned scaling vector on the output (attention) or the input (feed-forward) of a linear layer."""

    adapter_containers = ("ia3_l",)

    def __init__(self, base_layer: nn.Module, is_feedforward: bool) -> None:
        super().__init__(base_layer)
        self.is_feedforward = is_feedforward
        self.ia3_l = nn.ParameterDict()

    def add(self, name: str, cfg: IA3Config) -> None:
        fan_in, fan_out = in_out_features(self.base_layer)
        dtype, device = weight_dtype_device(self.base_layer)  # a quantized base is not dequantised for this
        shape = (1, fan_in) if self.is_feedforward else (fan_out, 1)
        vec = torch.ones(shape, device=device, dtype=dtype)
        if not cfg.init_ia3_weights:
            nn.init.normal_(vec, mean=1.0, std=0.2)
        self.ia3_l[name] = nn.Parameter(vec)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.live_adapter()
        if name is None:
            return self.base_layer(x, *args, **kwargs)
        scale = self.ia3_l[name].flatten()
        if self.is_feedforward:
            return self.base_layer(scaled(x, scale), *args, **kwargs)
        return scaled(self.base_layer(x, *args, **kwargs), scale)

    def row_op(self, name: str) -> RowOp:
        return IA3RowOp(self.ia3_l[name].detach().flatten(), self.is_feedforward)

    def _scale_weight(self, name: str, invert: bool) -> None:
        scale = self.ia3_l[name].detach().flatten()
        if invert:
            if torch.any(scale == 0):
                raise LeantuneError("An IA3 vector has a zero entry; the merge cannot be undone.")
            scale = 1.0 / scale
        W = weight_as_out_in(self.base_layer)  # (out, in) view
        if self.is_feedforward:
            W.mul_(scale[None, :].to(W.dtype))
        else:
            W.mul_(scale[:, None].to(W.dtype))
            if self.base_layer.bias is not None:
                self.base_layer.bias.mul_(scale.to(self.base_layer.bias.dtype))

    def _merge(self, name: str) -> None:
        self._scale_weight(name, invert=False)

    def _unmerge(self, name: str) -> None:
        self._scale_weight(name, invert=True)


class IA3Method(Method):
    name = "ia3"
    config_cls = IA3Config

    def inject(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, Any]:
        assert isinstance(config, IA3Config)
        defaults = arch_targets(model)
        target, feedforward = config.target_modules, config.feedforward_modules
        if target is None:
            if defaults is None:
                raise LeantuneError(
                    f"IA3 has no default targets for model type '{model.config.model_type}'; "
                    "set target_modules and feedforward_modules."
                )
            target = list(defaults.ia3)
            feedforward = list(defaults.ia3_feedforward) if feedforward is None else feedforward
        feedforward = feedforward or []
        targets = resolve_linear_targets(model, target, None, "IA3")
        ff_names = [t for t in targets if target_matches(feedforward, t)] if feedforward else []
        for tname in targets:
            existing = model.get_submodule(tname)
            if isinstance(existing, IA3Linear) and existing.is_feedforward != (tname in ff_names):
                raise LeantuneError(f"'{tname}': feedforward_modules differs from the model's first IA3 adapter.")
        inject_layers(model, targets, IA3Linear, lambda t, m: IA3Linear(m, is_feedforward=t in ff_names), name, config)
        return {
            "target_modules": portable_target_names(model, targets, LINEAR_TYPES),
            "feedforward_modules": portable_target_names(model, ff_names, LINEAR_TYPES) if ff_names else [],
            "fan_in_fan_out": any(is_conv1d(model.get_submodule(t).base_layer) for t in targets),
        }

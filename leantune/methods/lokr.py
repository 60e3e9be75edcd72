"""LoKr (Yeh et al. 2023, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation"):
a Kronecker-product weight update.

``ΔW = s · (w1 ⊗ w2)`` with ``s = alpha / r``: the (out × in) weight is split as ``out = a·b`` and ``in = c·d``
(factors of each dimension, as close to its square root as ``decompose_factor`` allows), ``w1`` is ``a × c`` and
``w2`` is ``b × d``. ``w2`` is itself a rank-r product ``w2_a @ w2_b`` unless r is at least half its larger side;
with ``decompose_both`` so is ``w1``. Parameter names, shapes, initialisation and the file format are peft's
(``peft.tuners.lokr``), so adapters load in peft and back.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from torch import nn

from leantune.methods.base import MethodConfig, in_out_features
from leantune.methods.targeting import check_layer_selection, check_patterns, pattern_value
from leantune.methods.weight_delta import (
    DeltaLayer,
    LinearAdapterMethod,
    adapter_dtype,
    config_from_peft_fields,
    delta_output,
    peft_dict_from_fields,
)


class LoKrConfig(MethodConfig):
    """LoKr settings (peft's ``LoKrConfig`` fields, for linear layers)."""

    peft_type: ClassVar[str] = "LOKR"

    r: int = Field(8, gt=0, description="rank of the decomposed Kronecker factors")
    alpha: float = Field(8.0, gt=0, description="scale numerator: s = alpha / r")
    rank_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Training only: each output row of ΔW is dropped with this probability."""
    rank_dropout_scale: bool = False
    """Rescale the kept rows of rank dropout by 1 / (fraction kept)."""
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Training only: the whole update of a layer is skipped with this probability."""
    decompose_both: bool = False
    """Also factor w1 into a rank-r product (when r is below half of its larger side)."""
    decompose_factor: int = -1
    """-1: factor each dimension near its square root; f > 0: one factor as close to f as divides it."""
    init_weights: bool | Literal["lycoris"] = True
    """True: w1 (or w1_a) zero, the rest Kaiming-uniform, so ΔW = 0 at start; "lycoris": w2 (or w2_b) zero instead;
    False: all random (the adapter is not a no-op; for tests)."""
    target_modules: list[str] | str | None = None
    """Module names (suffix match), a regex, ``"all-linear"``, or None for the architecture's default."""
    exclude_modules: list[str] | str | None = None
    rank_pattern: dict[str, PositiveInt] = {}
    """Module name or regex -> its r instead of ``r`` (peft's matching, as LoRA's ``rank_pattern``)."""
    alpha_pattern: dict[str, PositiveFloat] = {}
    """Module name or regex -> its alpha instead of ``alpha`` (matched as ``rank_pattern``)."""
    layers_to_transform: list[int] | int | None = None
    """Adapt only the modules in these layer indexes (peft's rule, as LoRA's ``layers_to_transform``)."""
    layers_pattern: list[str] | str | None = None
    """The name of the model's layer list (``layers``, ``h``) that ``layers_to_transform`` counts in."""

    @field_validator("decompose_factor")
    @classmethod
    def _factor(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("decompose_factor must be -1 (near the square root) or a positive integer")
        return v

    @model_validator(mode="after")
    def _patterns_and_layers(self) -> LoKrConfig:
        check_patterns(self.rank_pattern, self.alpha_pattern)
        check_layer_selection(self.target_modules, self.layers_to_transform, self.layers_pattern)
        return self

    def for_module(self, name: str) -> LoKrConfig:
        """The config of the module named ``name``: its r and alpha from ``rank_pattern``/``alpha_pattern``."""
        r, alpha = pattern_value(self.rank_pattern, name, self.r), pattern_value(self.alpha_pattern, name, self.alpha)
        return self if (r, alpha) == (self.r, self.alpha) else self.model_copy(update={"r": r, "alpha": alpha})

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        return peft_dict_from_fields(self, resolved, use_effective_conv2d=False)

    @classmethod
    def from_peft_dict(cls, d: dict[str, Any]) -> LoKrConfig:
        # use_effective_conv2d only changes Conv1d/Conv2d layers with a kernel, which leantune does not adapt.
        return config_from_peft_fields(cls, {**d, "rank_pattern": d.get("rank_pattern") or {},
                                             "alpha_pattern": d.get("alpha_pattern") or {}}, (), "LoKr")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """``(m, n)`` with ``m · n = dimension`` and ``m <= n``: m = ``factor`` when it divides, else the divisor pair
    closest to the square root with m not above ``factor`` (LyCORIS' rule, as peft)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


class LoKrLinear(DeltaLayer):
    """LoKr beside an ``nn.Linear`` or GPT-2 ``Conv1D``: ``y = W x + s · (w1 ⊗ w2) x``."""

    adapter_containers = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        for cname in self.adapter_containers:
            setattr(self, cname, nn.ParameterDict())
        self.scaling: dict[str, float] = {}
        self.dropouts: dict[str, tuple[float, float, bool]] = {}  # (rank, module, rank scale) per adapter

    @property
    def adapter_names(self) -> list[str]:
        return list(dict.fromkeys(n for c in ("lokr_w1", "lokr_w1_a") for n in getattr(self, c).keys()))

    def add(self, name: str, cfg: LoKrConfig) -> None:
        fan_in, fan_out = in_out_features(self.base_layer)
        out_l, out_k = factorization(fan_out, cfg.decompose_factor)
        in_m, in_n = factorization(fan_in, cfg.decompose_factor)
        device, dtype = self.base_layer.weight.device, adapter_dtype(self.base_layer)

        def new(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype))

        r = cfg.r
        if cfg.decompose_both and r < max(out_l, in_m) / 2:
            self.lokr_w1_a[name], self.lokr_w1_b[name] = new(out_l, r), new(r, in_m)
        else:
            self.lokr_w1[name] = new(out_l, in_m)
        if r < max(out_k, in_n) / 2:
            self.lokr_w2_a[name], self.lokr_w2_b[name] = new(out_k, r), new(r, in_n)
        else:
            self.lokr_w2[name] = new(out_k, in_n)
        self.scaling[name] = cfg.alpha / r
        self.dropouts[name] = (cfg.rank_dropout, cfg.module_dropout, cfg.rank_dropout_scale)
        self._init(name, cfg.init_weights)

    def _init(self, name: str, how: bool | str) -> None:
        """peft's three initialisations; the zero factor makes ΔW start at 0."""
        params = self.adapter_parameters(name)
        zero = {True: ("lokr_w1", "lokr_w1_a"), "lycoris": ("lokr_w2", "lokr_w2_b"), False: ()}[how]
        with torch.no_grad():
            for pname, p in params.items():
                if pname in zero:
                    nn.init.zeros_(p)
                else:
                    nn.init.kaiming_uniform_(p, a=math.sqrt(5))

    def _factor(self, name: str, which: str) -> torch.Tensor:
        full = getattr(self, f"lokr_{which}")
        if name in full:
            return full[name]
        return getattr(self, f"lokr_{which}_a")[name] @ getattr(self, f"lokr_{which}_b")[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        return torch.kron(self._factor(name, "w1"), self._factor(name, "w2")) * self.scaling[name]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        name = self.live_adapter()
        if name is None:
            return result
        rank_dropout, module_dropout, rescale = self.dropouts[name]
        if self.training and module_dropout and torch.rand(1).item() <= module_dropout:
            return result
        delta = self.delta_weight(name)
        if self.training and rank_dropout:
            keep = (torch.rand(delta.shape[0]) > rank_dropout).to(delta)
            if rescale:
                keep = keep / keep.mean()
            delta = delta * keep[:, None]
        return result + delta_output(x, delta).to(result.dtype)


class LoKrMethod(LinearAdapterMethod):
    name = "lokr"
    label = "LoKr"
    config_cls = LoKrConfig
    layer_cls = LoKrLinear
    saves_fan_in_fan_out = False  # not a field of peft's LoKrConfig

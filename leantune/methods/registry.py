"""The one registry of methods: each name a config may give, with its Method, config class and peft_type.

Config literals (``method:``), the CLI's choices, typed ``method_args`` and adapter loading (by ``peft_type``) all
read :data:`REGISTRY`. A name may preset config fields: ``dora`` is LoRA with ``use_dora: true``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError
from leantune.methods.base import Method, MethodConfig
from leantune.methods.bitfit import BitFitMethod
from leantune.methods.bottleneck import BottleneckMethod
from leantune.methods.full import FullMethod
from leantune.methods.head_only import HeadOnlyMethod
from leantune.methods.ia3 import IA3Method
from leantune.methods.lokr import LoKrMethod
from leantune.methods.lora import LoraMethod
from leantune.methods.oft import OFTMethod
from leantune.methods.prefix_tuning import PrefixTuningMethod
from leantune.methods.prompt_tuning import PromptTuningMethod
from leantune.methods.vera import VeraMethod


@dataclass(frozen=True)
class MethodSpec:
    """One method name: the :class:`Method` that implements it, its default learning rate (what ``leantune
    compare`` trains it with unless told otherwise; ``benchmarks/RESULTS.md`` says where each was measured) and the
    config fields the name fixes."""

    name: str
    method: Method
    lr: float
    preset: dict[str, Any] = field(default_factory=dict)

    @property
    def config_cls(self) -> type[MethodConfig]:
        return self.method.config_cls

    @property
    def peft_type(self) -> str:
        return self.config_cls.peft_type


_LORA = LoraMethod()
REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("lora", _LORA, lr=1e-3),
        MethodSpec("dora", _LORA, lr=1e-3, preset={"use_dora": True}),
        MethodSpec("ia3", IA3Method(), lr=5e-3),
        MethodSpec("lokr", LoKrMethod(), lr=1e-3),
        MethodSpec("oft", OFTMethod(), lr=1e-3),
        MethodSpec("vera", VeraMethod(), lr=1e-2),
        MethodSpec("prompt", PromptTuningMethod(), lr=3e-2),
        MethodSpec("prefix", PrefixTuningMethod(), lr=3e-2),
        MethodSpec("bottleneck", BottleneckMethod(), lr=1e-3),
        MethodSpec("bitfit", BitFitMethod(), lr=2e-3),
        MethodSpec("head", HeadOnlyMethod(), lr=1e-2),
        MethodSpec("full", FullMethod(), lr=5e-5),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)
_BY_CONFIG = {spec.config_cls: spec.method for spec in REGISTRY.values() if not spec.preset}
_BY_PEFT_TYPE = {spec.peft_type: spec.method for spec in REGISTRY.values() if not spec.preset}


def method_spec(name: str) -> MethodSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise LeantuneError(f"unknown method '{name}'; choose one of: {', '.join(METHOD_NAMES)}") from None


def method_config(name: str, args: dict[str, Any] | None = None) -> MethodConfig:
    """The config of method ``name`` with ``args``: pydantic's ``ValidationError`` names a wrong or unknown key, and
    a key that contradicts the name's preset (``dora`` with ``use_dora: false``) is a ``LeantuneError``."""
    spec = method_spec(name)
    args = dict(args or {})
    for key, value in spec.preset.items():
        if args.setdefault(key, value) != value:
            raise LeantuneError(f"method {name} means {key}: {value}; drop {key} from method_args or change method")
    return spec.config_cls(**args)


def method_for_config(config: MethodConfig) -> Method:
    try:
        return _BY_CONFIG[type(config)]
    except KeyError:
        raise LeantuneError(f"{type(config).__name__} is not a leantune method config.") from None


def method_for_peft_type(peft_type: str | None, source: Path | str = "adapter_config.json") -> Method:
    try:
        return _BY_PEFT_TYPE[peft_type]  # type: ignore[index]
    except KeyError:
        raise LeantuneError(
            f"{source}: peft_type {peft_type!r} is not supported; leantune loads {sorted(_BY_PEFT_TYPE)}."
        ) from None

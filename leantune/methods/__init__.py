"""The PEFT methods, one file each. ``METHODS`` maps the names used in configs to their implementation."""

from __future__ import annotations

from pathlib import Path

from leantune.errors import LeantuneError
from leantune.methods.base import Method, MethodConfig
from leantune.methods.bitfit import BitFitConfig, BitFitMethod
from leantune.methods.bottleneck import BottleneckConfig, BottleneckMethod
from leantune.methods.full import FullConfig, FullMethod
from leantune.methods.head_only import HeadOnlyConfig, HeadOnlyMethod
from leantune.methods.ia3 import IA3Config, IA3Method
from leantune.methods.lora import LoraConfig, LoraMethod
from leantune.methods.prefix_tuning import PrefixTuningConfig, PrefixTuningMethod
from leantune.methods.prompt_tuning import PromptTuningConfig, PromptTuningMethod

_ALL: tuple[Method, ...] = (
    LoraMethod(),
    IA3Method(),
    PromptTuningMethod(),
    PrefixTuningMethod(),
    BottleneckMethod(),
    BitFitMethod(),
    HeadOnlyMethod(),
    FullMethod(),
)
METHODS: dict[str, Method] = {m.name: m for m in _ALL}
_BY_CONFIG = {m.config_cls: m for m in _ALL}
_BY_PEFT_TYPE = {m.config_cls.peft_type: m for m in _ALL}


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


__all__ = [
    "METHODS", "BitFitConfig", "BottleneckConfig", "FullConfig", "HeadOnlyConfig", "IA3Config", "LoraConfig",
    "PrefixTuningConfig", "PromptTuningConfig", "method_for_config", "method_for_peft_type",
]

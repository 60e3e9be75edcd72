"""The PEFT methods, one file each, on the shared ``base.py`` and ``targeting.py``; ``registry.py`` names them.

Each method file holds its config (a :class:`~leantune.methods.base.MethodConfig`, peft's ``adapter_config.json``
both ways) and its :class:`~leantune.methods.base.Method` (how it injects itself into a model). LoRA's variants
plug into ``lora_variant.py``'s seam (DoRA: ``dora.py``). :data:`~leantune.methods.registry.REGISTRY` maps the
names used in configs and on the CLI to them.
"""

from __future__ import annotations

from leantune.methods.bitfit import BitFitConfig
from leantune.methods.bottleneck import BottleneckConfig
from leantune.methods.full import FullConfig
from leantune.methods.head_only import HeadOnlyConfig
from leantune.methods.ia3 import IA3Config
from leantune.methods.lokr import LoKrConfig
from leantune.methods.lora import LoraConfig
from leantune.methods.oft import OFTConfig
from leantune.methods.prefix_tuning import PrefixTuningConfig
from leantune.methods.prompt_tuning import PromptTuningConfig
from leantune.methods.registry import (
    METHOD_NAMES,
    REGISTRY,
    method_config,
    method_for_config,
    method_for_peft_type,
)
from leantune.methods.vera import VeraConfig

__all__ = [
    "METHOD_NAMES", "REGISTRY", "BitFitConfig", "BottleneckConfig", "FullConfig", "HeadOnlyConfig", "IA3Config",
    "LoraConfig", "PrefixTuningConfig", "PromptTuningConfig", "method_config", "method_for_config",
    "method_for_peft_type", "LoKrConfig", "OFTConfig", "VeraConfig",
]

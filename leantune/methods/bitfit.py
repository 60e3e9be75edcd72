"""BitFit (Ben Zaken et al. 2022): train only the bias terms of the base model (plus the task head).

The biases are trained in place, so one BitFit adapter per model. Not in peft: saved with
``peft_type: "BITFIT"`` and keys ``base_model.model.<path>.bias``. Models without biases (Llama, ...) are refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import Method, MethodConfig, base_biases


class BitFitConfig(MethodConfig):
    """BitFit has no settings beyond ``modules_to_save``."""

    peft_type: ClassVar[str] = "BITFIT"

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        return {"peft_type": "BITFIT", "modules_to_save": resolved.get("modules_to_save")}

    @classmethod
    def from_peft_dict(cls, saved: dict[str, Any]) -> BitFitConfig:
        return cls(modules_to_save=saved.get("modules_to_save"))


class BitFitMethod(Method):
    name = "bitfit"
    config_cls = BitFitConfig
    multi_adapter = False

    def inject(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, Any]:
        if not base_biases(model):
            raise LeantuneError(
                f"BitFit trains bias terms, and {type(model).__name__} has none. Use LoRA, IA3 or head-only."
            )
        return {}

    def extra_parameters(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, nn.Parameter]:
        return base_biases(model)

"""Full fine-tuning: every parameter trained. The baseline the PEFT methods are measured against.

Saved through the same API: ``peft_type: "FULL"`` and every weight under ``base_model.model.<name>`` (use
``save_pretrained`` on the model for a regular transformers checkpoint).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from leantune.methods.base import Method, MethodConfig


class FullConfig(MethodConfig):
    """Full fine-tuning has no settings; the head is part of the model and trained like the rest."""

    peft_type: ClassVar[str] = "FULL"
    modules_to_save: list[str] | None = []

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        return {"peft_type": "FULL"}

    @classmethod
    def from_peft_dict(cls, saved: dict[str, Any]) -> FullConfig:
        return cls()


class FullMethod(Method):
    name = "full"
    config_cls = FullConfig
    multi_adapter = False

    def inject(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, Any]:
        return {}

    def extra_parameters(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, nn.Parameter]:
        return dict(model.named_parameters())

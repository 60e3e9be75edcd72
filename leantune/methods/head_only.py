"""Head-only training (the linear probe): the whole base frozen, only the task head trained.

The head is whatever ``modules_to_save`` names (by default the model's ``classifier`` / ``score`` /
``qa_outputs``). Not in peft: saved with ``peft_type: "HEAD_ONLY"``; the head's weights are stored as peft stores
``modules_to_save`` (``base_model.model.classifier.weight`` ...).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import Method, MethodConfig, ModulesToSave
from leantune.models.targets import HEAD_NAMES


class HeadOnlyConfig(MethodConfig):
    """Head-only settings: ``modules_to_save`` names the head (None: the model's own head)."""

    peft_type: ClassVar[str] = "HEAD_ONLY"

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        return {"peft_type": "HEAD_ONLY", "modules_to_save": resolved.get("modules_to_save")}

    @classmethod
    def from_peft_dict(cls, saved: dict[str, Any]) -> HeadOnlyConfig:
        return cls(modules_to_save=saved.get("modules_to_save"))


class HeadOnlyMethod(Method):
    name = "head"
    config_cls = HeadOnlyConfig

    def inject(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, Any]:
        if not any(isinstance(m, ModulesToSave) and name in m.adapter_names for m in model.modules()):
            raise LeantuneError(
                f"Head-only training needs a task head, and {type(model).__name__} has none that leantune knows "
                f"({', '.join(HEAD_NAMES)}). Name it in modules_to_save."
            )
        return {}

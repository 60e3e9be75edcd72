"""Every method with its default settings, and what each trains on a given model."""

from __future__ import annotations

from typing import Any

from leantune.errors import LeantuneError
from leantune.methods import (
    BitFitConfig,
    BottleneckConfig,
    FullConfig,
    HeadOnlyConfig,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
)
from leantune.methods.base import MethodConfig

# The names used by configs and the CLI (``method: dora`` is LoRA with use_dora).
METHOD_NAMES = ("lora", "dora", "ia3", "prompt", "prefix", "bottleneck", "bitfit", "head", "full")


def method_config(name: str, args: dict[str, Any] | None = None) -> MethodConfig:
    """The config for method ``name`` with ``args`` (validated: unknown keys and wrong types are errors)."""
    args = dict(args or {})
    factories = {
        "lora": LoraConfig, "ia3": IA3Config, "prompt": PromptTuningConfig, "prefix": PrefixTuningConfig,
        "bottleneck": BottleneckConfig, "bitfit": BitFitConfig, "head": HeadOnlyConfig, "full": FullConfig,
    }
    if name == "dora":
        args["use_dora"] = True
        name = "lora"
    if name not in factories:
        raise LeantuneError(f"unknown method '{name}'; choose one of: {', '.join(METHOD_NAMES)}")
    from pydantic import ValidationError

    try:
        return factories[name](**args)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or name}: {err['msg']}" for err in e.errors())
        raise LeantuneError(f"method_args for {name}: {problems}") from None


def method_table(model_name: str, task: str) -> list[dict[str, Any]]:
    """Trainable and total parameters for every method (default settings) on ``model_name``."""
    import copy

    import leantune as lt
    from leantune.models.registry import resolve_model

    base = _load(resolve_model(model_name), task)
    rows = []
    for name in METHOD_NAMES:
        model = copy.deepcopy(base)  # every method on a fresh copy; the checkpoint is read once
        try:
            lt.attach(model, method_config(name))
            trainable, total = lt.trainable_parameters(model)
            rows.append({"method": name, "trainable": trainable, "total": total, "note": ""})
        except LeantuneError as e:
            rows.append({"method": name, "trainable": None, "total": None, "note": str(e).split(";")[0][:70]})
    return rows


def _load(path: str, task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "classification":
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return AutoModelForCausalLM.from_pretrained(path)

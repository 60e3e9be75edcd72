"""The body of ``leantune methods``: what every method, with its default settings, trains on a given model."""

from __future__ import annotations

from typing import Any

from leantune.errors import LeantuneError
from leantune.methods.registry import METHOD_NAMES, method_config


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
    """The model ``task`` trains on the base at ``path`` (a classifier gets its config's label count, 2)."""
    from transformers import AutoConfig

    from leantune.tasks import task_class

    return task_class(task).model_class(AutoConfig.from_pretrained(path)).from_pretrained(path)

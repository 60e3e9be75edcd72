"""Tasks: one file each (data preparation, head, loss, metrics, prediction)."""

from __future__ import annotations

from typing import Any

from leantune.config import RunConfig
from leantune.errors import LeantuneError


def make_task(cfg: RunConfig, tokenizer: Any, labels: list[str] | None = None) -> Any:
    if cfg.task == "classification":
        from leantune.tasks.classification import ClassificationTask

        return ClassificationTask(cfg, tokenizer, labels)
    raise LeantuneError(f"unknown task '{cfg.task}'")

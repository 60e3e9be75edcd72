"""Tasks: one file each (data preparation, head, loss, metrics, prediction)."""

from __future__ import annotations

from typing import Any

from leantune.config import RunConfig
from leantune.errors import LeantuneError


def make_task(cfg: RunConfig, tokenizer: Any, labels: list[str] | None = None, model_path: str | None = None) -> Any:
    """The task object the training loop drives (prepare, build_model, batch_loss, evaluate, predict)."""
    if cfg.task == "classification":
        from leantune.tasks.classification import ClassificationTask

        return ClassificationTask(cfg, tokenizer, labels)
    if cfg.task == "instruction":
        from leantune.tasks.instruction import InstructionTask

        return InstructionTask(cfg, tokenizer, labels, model_path)
    if cfg.task == "translation":
        from leantune.tasks.translation import TranslationTask

        return TranslationTask(cfg, tokenizer, labels, model_path)
    if cfg.task == "extractive_qa":
        from leantune.tasks.extractive_qa import ExtractiveQATask

        return ExtractiveQATask(cfg, tokenizer, labels, model_path)
    raise LeantuneError(f"unknown task '{cfg.task}'")

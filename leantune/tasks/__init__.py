"""Tasks: one file each, on one :class:`~leantune.tasks.base.Task` interface, and the one registry of task names
(config values, CLI choices)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leantune.config import register_tasks
from leantune.tasks.base import Task, TaskArgs
from leantune.tasks.classification import ClassificationTask
from leantune.tasks.extractive_qa import ExtractiveQATask
from leantune.tasks.instruction import InstructionTask
from leantune.tasks.translation import TranslationTask

if TYPE_CHECKING:
    from leantune.config import RunConfig

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (ClassificationTask, InstructionTask, TranslationTask, ExtractiveQATask)
}
"""Every task by its ``task:`` name."""
TASK_NAMES = tuple(TASKS)
register_tasks(TASKS)  # the config validates task and task_args against these


def task_class(name: str) -> type[Task]:
    """The task called ``name`` (an error listing the task names when there is none)."""
    if name not in TASKS:
        raise ValueError(f"'{name}' is not a task; choose one of {', '.join(TASK_NAMES)}")
    return TASKS[name]


def make_task(cfg: RunConfig, tokenizer: Any, model_path: str) -> Task:
    """The task ``cfg`` names, for the model at ``model_path`` (its config is read here) and its tokenizer."""
    from leantune.models.loading import read_model_config

    return task_class(cfg.task)(cfg, tokenizer, read_model_config(cfg, model_path))


__all__ = ["TASKS", "TASK_NAMES", "ClassificationTask", "ExtractiveQATask", "InstructionTask", "Task", "TaskArgs",
           "TranslationTask", "make_task", "task_class"]

"""A finished run folder loaded back, the one way for everyone: its validated config, its task with what the run
saved beside the adapter (its labels), and its model with the trained adapter (eval, predict, generate, export,
convert); or, without any weights, what a server needs to know of it (:class:`ServedRun`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import leantune as lt
from leantune.config import RunConfig, validate_config
from leantune.errors import LeantuneError
from leantune.models.loading import load_tokenizer
from leantune.models.quantize import quantize_model, resolve_backend
from leantune.models.registry import resolve_model
from leantune.run.files import load_config_yaml, read_labels
from leantune.run.layout import ADAPTER_DIR, CONFIG_FILE, LABELS_FILE
from leantune.system.device import pick_device
from leantune.tasks import Task, make_task, task_class


def run_config(run_dir: Path, echo_values: bool = True) -> RunConfig:
    """The run's saved config, validated; an error naming the file when the folder has none or it is not valid
    (``echo_values`` off: naming keys, never the values the file holds)."""
    return validate_config(load_config_yaml(run_dir), str(run_dir / CONFIG_FILE), echo_values)


def run_task(cfg: RunConfig, run_dir: Path, tokenizer: Any, model_path: str) -> Task:
    """The run's task object (prompt formatting, model building), with the run's artifacts (labels) read."""
    task = make_task(cfg, tokenizer, model_path)
    task.load_artifacts(run_dir)
    return task


def load_run_task(run_dir: Path) -> tuple[RunConfig, Task, str]:
    """(config, task, the base's local path) of a run folder, without loading any weights."""
    cfg = run_config(run_dir)
    model_path = resolve_model(cfg.model)
    return cfg, run_task(cfg, run_dir, load_tokenizer(model_path, cfg.trust_remote_code), model_path), model_path


def load_run(run_dir: str | os.PathLike, adapter: str | os.PathLike | None = None) -> tuple[RunConfig, Task, Any]:
    """(config, task, model with the trained adapter) of a finished run folder; ``adapter``: another adapter
    folder for the run's base and task instead (e.g. the run converted with ``leantune export --to lora``)."""
    run = Path(run_dir)
    cfg, task, model_path = load_run_task(run)
    model = task.build_model(model_path)
    if cfg.quantize != "none":  # evaluate on the base the adapter was trained on
        quantize_model(model, cfg.quantize, resolve_backend(cfg.quantize_backend, pick_device()))
    lt.load_adapter(model, adapter or run / ADAPTER_DIR)
    return cfg, task, model.eval()


# ------------------------------------------------------------------------------------------------- serving
@dataclass
class ServedRun:
    """A finished run folder: its config, its adapter folder, and the base it needs."""

    name: str
    run_dir: Path
    cfg: RunConfig
    model_path: str
    labels: list[str] | None

    @property
    def kind(self) -> str:
        """What the run serves: generate (chat / completions), classify or answer (extractive QA)."""
        return task_class(self.cfg.task).serves

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / ADAPTER_DIR

    @property
    def base_key(self) -> tuple:
        """Runs with the same key share one copy of the base model."""
        cfg = self.cfg
        head = f"classification:{cfg.task_args.pooling}" if cfg.task == "classification" else self.kind
        return (self.model_path, head, cfg.quantize, cfg.trust_remote_code, cfg.allow_pickle_weights)


def read_run(run_dir: str | os.PathLike, name: str | None = None, models: set[str] | None = None) -> ServedRun:
    """Check a run folder (config, adapter, labels) without loading any weights. ``models``, for a folder a client
    named: the only ``model:`` values allowed (checked before the model is looked up, so nothing else is read or
    converted), and errors name the config's keys, never the values in it."""
    run = Path(run_dir).expanduser()
    cfg = run_config(run, echo_values=models is None)
    if models is not None and cfg.model not in models:
        raise LeantuneError(f"{run} was trained on model {cfg.model!r}, which is not served here; served: "
                            f"{sorted(models)}.")
    if not (run / ADAPTER_DIR).is_dir():
        raise LeantuneError(f"{run}: no {ADAPTER_DIR}/ folder (did the run finish?).")
    labels = read_labels(run)
    if cfg.task == "classification" and not labels:
        raise LeantuneError(f"{run}: a classification run needs its {LABELS_FILE}.")
    return ServedRun(name or run.resolve().name, run.resolve(), cfg, resolve_model(cfg.model), labels)


def make_run_task(run: ServedRun, tokenizer: Any) -> Task:
    """The served run's task object, with the run's artifacts (labels) read."""
    return run_task(run.cfg, run.run_dir, tokenizer, run.model_path)


def run_tokenizer(run: ServedRun) -> Any:
    return load_tokenizer(run.model_path, run.cfg.trust_remote_code)


def load_base(run: ServedRun, tokenizer: Any) -> nn.Module:
    """The base model of ``run`` without any adapter (built as the run's task builds it), in eval mode."""
    model = make_run_task(run, tokenizer).build_model(run.model_path)
    if run.cfg.quantize != "none":
        device = next(model.parameters()).device
        quantize_model(model, run.cfg.quantize, resolve_backend(run.cfg.quantize_backend, device))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()

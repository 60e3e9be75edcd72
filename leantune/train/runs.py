"""A finished run folder loaded back (config, task, model with its trained adapter) for eval, predict, generate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

import leantune as lt
from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.models.loading import load_tokenizer
from leantune.models.quantize import quantize_model, resolve_backend
from leantune.models.registry import resolve_model
from leantune.tasks import make_task
from leantune.train.device import pick_device


def load_run(run_dir: str | os.PathLike, adapter: str | os.PathLike | None = None) -> tuple[Any, Any, Any]:
    """(config, task, model with the trained adapter) of a finished run folder; ``adapter``: another adapter
    folder for the run's base and task instead (e.g. the run converted with ``leantune export --to lora``)."""
    run = Path(run_dir)
    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        raise LeantuneError(f"{run} is not a leantune run folder: it has no config.yaml.")
    cfg = validate_config(yaml.safe_load(cfg_file.read_text()), str(cfg_file))
    model_path = resolve_model(cfg.model)
    task = make_task(cfg, load_tokenizer(model_path, cfg.trust_remote_code), model_path)
    task.load_artifacts(run)
    model = task.build_model(model_path)
    if cfg.quantize != "none":  # evaluate on the base the adapter was trained on
        quantize_model(model, cfg.quantize, resolve_backend(cfg.quantize_backend, pick_device()))
    lt.load_adapter(model, adapter or run / "adapter")
    return cfg, task, model.eval()

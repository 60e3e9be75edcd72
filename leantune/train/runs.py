"""Run folders: creating them safely, and loading a finished run back for eval / predict."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from leantune.errors import LeantuneError


def prepare_output_dir(path: Path, overwrite: bool) -> Path:
    """Create the run folder; refuse to mix two runs in one folder unless ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise LeantuneError(f"output_dir {path} exists and is a file.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise LeantuneError(f"output_dir {path} already holds a run; pass --overwrite or choose another output_dir.")
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LeantuneError(f"output_dir {path} is not writable ({e.strerror}).") from None
    return path


def load_tokenizer(path: str) -> Any:
    """The model's tokenizer, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise LeantuneError(f"{path}: the tokenizer has neither a pad nor an EOS token.")
        tok.pad_token = tok.eos_token
    return tok


def load_run(run_dir: str | os.PathLike) -> tuple[Any, Any, Any]:
    """(config, task, model with the trained adapter) of a finished run folder."""
    import leantune as lt
    from leantune.config import validate_config
    from leantune.models.registry import resolve_model
    from leantune.tasks import make_task

    run = Path(run_dir)
    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        raise LeantuneError(f"{run} is not a leantune run folder: it has no config.yaml.")
    cfg = validate_config(yaml.safe_load(cfg_file.read_text()), str(cfg_file))
    labels_file = run / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.is_file() else None
    model_path = resolve_model(cfg.model)
    task = make_task(cfg, load_tokenizer(model_path), labels, model_path)
    model = task.build_model(model_path)
    if cfg.quantize != "none":  # evaluate on the base the adapter was trained on
        from leantune.models.quantize import quantize_model, resolve_backend
        from leantune.train.loop import pick_device

        quantize_model(model, cfg.quantize, resolve_backend(cfg.quantize_backend, pick_device()))
    lt.load_adapter(model, run / "adapter")
    return cfg, task, model.eval()

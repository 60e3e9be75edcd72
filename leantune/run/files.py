"""The small files of a run folder read and written for everyone: the saved config as YAML, the final metrics, the
label list, the training log, and the error a failed run left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from leantune.errors import LeantuneError
from leantune.files import atomic_write_text
from leantune.run.layout import CONFIG_FILE, ERROR_FILE, LABELS_FILE, LOG_FILE, METRICS_FILE


def load_config_yaml(run_dir: Path) -> dict[str, Any]:
    """The run's saved config as a plain mapping (not validated); an error naming the file when the folder has
    none or it is not a YAML mapping (the message gives the line and column, never the file's text)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise LeantuneError(f"{run_dir} is not a leantune run folder: it has no {CONFIG_FILE}.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LeantuneError(f"{path}: not UTF-8 text.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise LeantuneError(f"{path}: not valid YAML{where}.") from None
    if not isinstance(raw, dict):
        raise LeantuneError(f"{path}: not a run config (a mapping of keys to values).")
    return raw


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config as saved (raw YAML; {} when unreadable)."""
    try:
        return load_config_yaml(run_dir)
    except (OSError, LeantuneError):
        return {}


def read_json(path: Path) -> Any:
    """The JSON value in ``path`` (None when it is missing or unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The final evaluation's metrics (None when the run has none or they cannot be read)."""
    metrics = read_json(run_dir / METRICS_FILE)
    return metrics if isinstance(metrics, dict) else None


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    atomic_write_text(run_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


def read_labels(run_dir: Path) -> list[str] | None:
    """A classification run's label list (None when the run has none)."""
    path = run_dir / LABELS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise LeantuneError(f"{path}: not valid JSON.") from None


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of the run's ``train_log.jsonl`` (a row cut short by a crash is left out)."""
    path = run_dir / LOG_FILE
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def write_error(run_dir: Path, error: str, log_tail: str = "") -> None:
    """Record a failed run in its folder (``error.txt``: the error line, then the end of the run's output), so the
    folder shows why it has no results."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).write_text(error.rstrip() + "\n" + (f"\n{log_tail.rstrip()}\n" if log_tail else ""),
                                      encoding="utf-8")


def clear_error(run_dir: Path) -> None:
    """Remove the error a failed run left (the run is trained again)."""
    (run_dir / ERROR_FILE).unlink(missing_ok=True)


def error_first_line(run_dir: Path) -> str | None:
    """The error line of ``error.txt`` (None when there is none)."""
    try:
        lines = (run_dir / ERROR_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[0] if lines else None

"""The names of a run folder's files and folders, in one place: whatever writes or reads a run asks here.

A run folder holds:

* ``config.yaml`` — the resolved config the run trained with;
* ``status.json`` — the process that trains it and how it ended (:mod:`leantune.run.status`);
* ``train_log.jsonl`` — one JSON row per logged step and evaluation; ``loss.png`` — its plot;
* ``labels.json`` — a classification run's label list; ``predictions.jsonl`` — the last evaluation's predictions;
* ``adapter/`` — the trained adapter (peft format); ``metrics.json`` — the final evaluation;
* ``checkpoints/step-NNNNNNN/`` with ``checkpoints/latest`` naming the newest, and ``checkpoint-best/`` — the best
  evaluation's weights (each with ``trainable.safetensors``);
* ``error.txt`` — written by ``leantune compare`` when the run failed: the error line, then the end of its output.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "train_log.jsonl"
LOSS_PLOT = "loss.png"
LABELS_FILE = "labels.json"
PREDICTIONS_FILE = "predictions.jsonl"
ERROR_FILE = "error.txt"
ADAPTER_DIR = "adapter"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
"""The file in ``checkpoints/`` that names the newest complete checkpoint."""
STEP_PREFIX = "step-"
BEST = "checkpoint-best"
TRAINABLE = "trainable.safetensors"
"""Every trainable tensor by its name in the model (in each checkpoint and in ``checkpoint-best/``)."""


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a run folder: it holds the run's ``config.yaml``."""
    return (path / CONFIG_FILE).is_file()


def has_result(run_dir: Path) -> bool:
    """Whether the run left its result: the final metrics and the trained adapter."""
    return (run_dir / METRICS_FILE).is_file() and (run_dir / ADAPTER_DIR).is_dir()


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of ``step`` in ``checkpoints/``."""
    return f"{STEP_PREFIX}{step:07d}"


def latest_name(run_dir: Path) -> str | None:
    """The checkpoint name ``checkpoints/latest`` points at (None when there is no pointer)."""
    try:
        return (run_dir / CHECKPOINTS / LATEST).read_text().strip()
    except OSError:
        return None


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The run's step checkpoint folders, newest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)), reverse=True)


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoints to try, best first: the one ``latest`` names, then the others from the newest."""
    latest = latest_name(run_dir) or ""
    return sorted(step_checkpoints(run_dir), key=lambda p: p.name != latest)

"""The run folders under the dashboard's runs folder, read fresh on every request: what each run is, its status
(from its ``status.json`` and a check of its process, or from the files an older run left), its progress and its
headline metric. Nothing is remembered between requests, so a reload or a second browser shows the truth."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from leantune.run.files import read_config, read_log, read_metrics
from leantune.run.layout import ADAPTER_DIR, BEST, CHECKPOINTS, CONFIG_FILE, STATUS_FILE, is_run_folder
from leantune.run.status import read_status, run_status
from leantune.tasks import TASKS

SKIP = {CHECKPOINTS, BEST, ADAPTER_DIR, ".ui", "logs", "configs"}
MAX_DEPTH = 4


@dataclass
class RunSummary:
    """One row of the runs list."""

    name: str
    """The run folder's path relative to the runs folder (its id in the dashboard's addresses)."""
    task: str
    method: str
    model: str
    status: str
    """running, finished, failed or interrupted."""
    step: int
    total: int | None
    metric: str | None
    value: float | None
    started: float | None
    duration: float | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_runs(root: Path) -> list[Path]:
    """Every run folder (one holding ``config.yaml``, or ``status.json`` while it starts) under ``root``, up to a few levels deep, sorted by path."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if folder != root and (is_run_folder(folder) or (folder / STATUS_FILE).is_file()):
            found.append(folder)
        if depth >= MAX_DEPTH:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in SKIP)
        except OSError:
            return
        for child in children:
            walk(child, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return found


def headline_metric(cfg: dict[str, Any]) -> str | None:
    """The metric that ranks the run: ``train.metric``, else its task's default."""
    train = cfg.get("train") or {}
    task = TASKS.get(cfg.get("task", "classification"))
    return train.get("metric") or (task.default_metric if task else None)


def train_steps(rows: list[dict[str, Any]]) -> int:
    """The last optimizer step the log shows (a logged loss, an evaluation or a resume point)."""
    steps = [r["step"] for r in rows if ("loss" in r or "eval" in r or "resumed_from" in r)
             and isinstance(r.get("step"), int)]  # a step that is no number (a hand-edited log) is skipped
    return max(steps, default=0)


def summarize(root: Path, run_dir: Path) -> RunSummary:
    """The runs-list row of ``run_dir``."""
    cfg = read_config(run_dir)
    record = read_status(run_dir)
    status, error = run_status(run_dir, record)
    rows = read_log(run_dir)
    metric = headline_metric(cfg)
    value = None
    metrics = read_metrics(run_dir) if status == "finished" else None
    if isinstance(metrics, dict) and isinstance(metrics.get(metric), (int, float)):
        value = float(metrics[metric])
    else:
        evals = [r["eval"][metric] for r in rows if isinstance(r.get("eval"), dict) and metric in r["eval"]]
        value = float(evals[-1]) if evals else None
    total = record.get("total_steps") or (cfg.get("train") or {}).get("max_steps")
    step = train_steps(rows)
    if status == "finished" and total is None:
        total = step
    started = record.get("started") or _mtime(run_dir / CONFIG_FILE)
    return RunSummary(
        name=run_dir.relative_to(root).as_posix(), task=str(cfg.get("task", "classification")),
        method=str(cfg.get("method", "lora")), model=str(cfg.get("model", "")), status=status, step=step,
        total=total, metric=metric, value=value, started=started, duration=_duration(record, rows, status),
        error=error)


def _duration(record: dict[str, Any], rows: list[dict[str, Any]], status: str) -> float | None:
    if record.get("started"):
        end = record.get("ended") or (time.time() if status == "running" else None)
        if end is not None:
            return end - record["started"]
    elapsed = [r["elapsed_s"] for r in rows if "elapsed_s" in r]
    return max(elapsed) if elapsed else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def list_runs(root: Path) -> list[RunSummary]:
    """The runs-list rows of every run folder under ``root``."""
    return [summarize(root, d) for d in find_runs(root)]


def resolve_run(root: Path, name: str) -> Path:
    """The run folder called ``name`` under ``root``; refuses a path that leaves it or is not a run."""
    try:
        run_dir = (root / name).resolve()
        found = run_dir.is_relative_to(root.resolve()) and run_dir.is_dir() and run_dir in find_runs(root.resolve())
    except (OSError, ValueError):  # a name no file system takes (a NUL character, too long)
        raise KeyError(name) from None
    if not found:
        raise KeyError(name)
    return run_dir

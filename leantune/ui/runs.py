"""The run folders under the dashboard's runs folder, read fresh on every request: what each run is, its status
(from its ``status.json`` and a check of its process, or from the files an older run left), its progress and its
headline metric. Nothing is remembered between requests, so a reload or a second browser shows the truth."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from leantune.compare.plan import ERROR_FILE
from leantune.compare.results import read_log
from leantune.tasks import TASKS
from leantune.train.checkpoints import BEST, CHECKPOINTS, candidates
from leantune.train.status import STATUS_FILE, is_running, read_status

SKIP = {CHECKPOINTS, BEST, "adapter", ".ui", "logs", "configs"}
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
        if folder != root and ((folder / "config.yaml").is_file() or (folder / STATUS_FILE).is_file()):
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


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config as saved (raw YAML; {} when unreadable)."""
    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def headline_metric(cfg: dict[str, Any]) -> str | None:
    """The metric that ranks the run: ``train.metric``, else its task's default."""
    train = cfg.get("train") or {}
    task = TASKS.get(cfg.get("task", "classification"))
    return train.get("metric") or (task.default_metric if task else None)


def run_status(run_dir: Path, record: dict[str, Any] | None = None) -> tuple[str, str | None]:
    """(status, error line) of a run. With a status record: its process checked when it says running (a process
    gone without a word leaves the run interrupted when it has a checkpoint, else failed); without one (older runs,
    compare failures): from metrics.json, error.txt and checkpoints."""
    record = read_status(run_dir) if record is None else record
    has_checkpoint = bool(candidates(run_dir))
    error_file = run_dir / ERROR_FILE
    state = record.get("status")
    if state == "running":
        if is_running(record):
            return "running", None
        why = f"the training process (pid {record.get('pid')}) ended without recording a result (killed?)"
        return ("interrupted", why) if has_checkpoint else ("failed", why)
    if state == "failed" or (state is None and error_file.is_file()):
        return "failed", record.get("error") or _first_line(error_file) or "failed"
    if state in ("finished", "interrupted"):
        return state, None
    if (run_dir / "metrics.json").is_file() and (run_dir / "adapter").is_dir():
        return "finished", None
    if has_checkpoint:
        return "interrupted", None
    return "failed", "the run left no result and no checkpoint"


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
    metrics = read_json(run_dir / "metrics.json") if status == "finished" else None
    if isinstance(metrics, dict) and isinstance(metrics.get(metric), (int, float)):
        value = float(metrics[metric])
    else:
        evals = [r["eval"][metric] for r in rows if isinstance(r.get("eval"), dict) and metric in r["eval"]]
        value = float(evals[-1]) if evals else None
    total = record.get("total_steps") or (cfg.get("train") or {}).get("max_steps")
    step = train_steps(rows)
    if status == "finished" and total is None:
        total = step
    started = record.get("started") or _mtime(run_dir / "config.yaml")
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


def _first_line(path: Path) -> str | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[0] if lines else None


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

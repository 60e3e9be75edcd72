"""Everything a run's page shows, read from its folder: loss and metric curves, progress with an ETA, the resolved
config, final metrics (confusion matrix, sample predictions beside references), checkpoints, and for a failed run
its error line and the last lines of its log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from leantune.run.files import read_json, read_log, read_metrics
from leantune.run.layout import (
    BEST,
    CHECKPOINTS,
    CONFIG_FILE,
    ERROR_FILE,
    LABELS_FILE,
    LATEST,
    PREDICTIONS_FILE,
)
from leantune.run.status import read_status
from leantune.ui.runs import summarize

SAMPLE_PREDICTIONS = 20
LOG_LINES = 30


def run_detail(root: Path, run_dir: Path, launch_log: Path | None = None) -> dict[str, Any]:
    """The run page's data (JSON-ready); ``launch_log``: the output of the process the dashboard started for it."""
    summary = summarize(root, run_dir)
    rows = read_log(run_dir)
    record = read_status(run_dir)
    detail: dict[str, Any] = {
        "summary": summary.as_dict(),
        "curves": curves(rows),
        "progress": progress(rows, summary.step, summary.total, summary.status, record),
        "config": _text(run_dir / CONFIG_FILE),
        "metrics": None,
        "confusion": None,
        "predictions": predictions(run_dir),
        "checkpoints": checkpoints(run_dir),
        "error": summary.error,
        "log_tail": None,
    }
    metrics = read_metrics(run_dir)
    if isinstance(metrics, dict) and summary.status != "running":
        detail["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        detail["confusion"] = confusion(run_dir, metrics)
    if summary.status in ("failed", "interrupted"):
        detail["log_tail"] = log_tail(run_dir, rows, record, launch_log)
    return detail


def curves(rows: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Series of [step, value]: train loss, and every evaluated metric as ``eval <name>`` (eval loss among them)."""
    out: dict[str, list[list[float]]] = {"train loss": []}
    for r in rows:
        if "loss" in r and "skipped" not in r:
            out["train loss"].append([r["step"], r["loss"]])
        for name, value in (r.get("eval") or {}).items():
            if isinstance(value, (int, float)):
                key = "eval loss" if name == "eval_loss" else f"eval {name}"
                out.setdefault(key, []).append([r["step"], value])
    return out


def progress(rows: list[dict[str, Any]], step: int, total: int | None, status: str,
             record: dict[str, Any]) -> dict[str, Any]:
    """Steps done of total, the fraction, and (while it runs) the seconds left at the pace of this process."""
    eta = None
    if status == "running" and total:
        since = max((i for i, r in enumerate(rows) if "resumed_from" in r), default=0)
        timed = [r for r in rows[since:] if "loss" in r and "elapsed_s" in r]
        start_step = record.get("start_step", 0)
        if timed and timed[-1]["step"] > start_step:
            pace = timed[-1]["elapsed_s"] / (timed[-1]["step"] - start_step)
            eta = max(0.0, pace * (total - step))
    fraction = 1.0 if status == "finished" else (min(1.0, step / total) if total else 0.0)
    return {"step": step, "total": total, "fraction": fraction, "eta_s": eta, "now": time.time()}


def confusion(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The classification confusion matrix with its label names (rows: true, columns: predicted)."""
    matrix = metrics.get("confusion_matrix")
    if not isinstance(matrix, list) or not matrix:
        return None
    labels = read_json(run_dir / LABELS_FILE)
    if not isinstance(labels, list) or len(labels) != len(matrix):
        labels = [str(i) for i in range(len(matrix))]
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), dict) else None
    return {"labels": [str(x) for x in labels], "matrix": matrix, "per_class": per_class}


def predictions(run_dir: Path) -> list[dict[str, Any]]:
    """The first sample predictions beside their references (generative and QA tasks write predictions.jsonl)."""
    path = run_dir / PREDICTIONS_FILE
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
            if len(rows) >= SAMPLE_PREDICTIONS:
                break
    return rows


def checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """The step checkpoints (newest first, the one ``latest`` points at marked) and the best evaluation's weights."""
    root = run_dir / CHECKPOINTS
    latest = _text(root / LATEST)
    out = []
    if root.is_dir():
        for p in sorted(root.glob("step-*"), reverse=True):
            out.append({"name": p.name, "step": int(p.name.removeprefix("step-")), "size_mb": _size_mb(p),
                        "time": p.stat().st_mtime, "latest": latest is not None and latest.strip() == p.name})
    best = run_dir / BEST
    if best.is_dir():
        out.append({"name": BEST, "step": None, "size_mb": _size_mb(best), "time": best.stat().st_mtime,
                    "latest": False})
    return out


def log_tail(run_dir: Path, rows: list[dict[str, Any]], record: dict[str, Any], launch_log: Path | None) -> list[str]:
    """The last lines of what the run printed (the dashboard's launch log, compare's error.txt) or, when nothing
    was captured, of its traceback and its train_log.jsonl."""
    for path in (launch_log, run_dir / ERROR_FILE):
        text = _text(path) if path is not None else None
        if text:
            return text.rstrip().splitlines()[-LOG_LINES:]
    lines = [line.rstrip() for chunk in record.get("traceback", []) for line in chunk.splitlines()]
    lines += [json.dumps(r) for r in rows[-10:]]
    if len(lines) <= LOG_LINES or not record.get("traceback"):
        return lines[-LOG_LINES:]
    return lines[:1] + lines[1 - LOG_LINES:]  # the traceback's header, then the end


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _size_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20, 3)

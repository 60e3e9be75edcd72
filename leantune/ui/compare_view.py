"""The dashboard's comparison of picked runs: ``leantune compare``'s own rows, table and report (Pareto plots of
quality against trainable parameters, memory and time; all loss curves), written to ``RUNS/.ui/compare/<key>/``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from leantune.compare import write_report
from leantune.compare.report import headers, table_rows
from leantune.compare.results import MethodResult, add_gaps, failed_result, read_result
from leantune.errors import LeantuneError
from leantune.run.files import read_config
from leantune.run.status import run_status
from leantune.tasks import task_class
from leantune.ui.runs import headline_metric


def compare_runs(root: Path, runs: list[tuple[str, Path]]) -> dict[str, Any]:
    """The compare table and report files of the named runs (one task, one headline metric); unfinished runs are
    rows with their status."""
    if not runs:
        raise LeantuneError("pick at least one run to compare (tick the runs in the list).")
    configs = {name: read_config(path) for name, path in runs}
    tasks = {str(c.get("task", "classification")) for c in configs.values()}
    if len(tasks) > 1:
        raise LeantuneError(f"the picked runs are of different tasks ({', '.join(sorted(tasks))}); compare runs of "
                            "one task.")
    task = tasks.pop()
    metric = headline_metric(next(iter(configs.values()))) or task_class(task).default_metric
    higher = task_class(task).higher_is_better(metric)
    results = [_result(name, path, metric, configs[name]) for name, path in runs]
    add_gaps(results)
    key = hashlib.sha1("\n".join(sorted(name for name, _ in runs)).encode()).hexdigest()[:12]
    out = root / ".ui" / "compare" / key
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    models = sorted({str(c.get("model", "")) for c in configs.values()})
    files = write_report(results, ", ".join(models), task, metric, higher, out)
    cols = headers(metric, any(r.gap_to_full is not None for r in results))
    return {
        "key": key, "metric": metric, "higher_is_better": higher, "columns": cols,
        "rows": table_rows(results, metric),
        "plots": [f.name for f in files if f.suffix == ".png"],
        "report": "report.html",
    }


def _result(name: str, run_dir: Path, metric: str, cfg: dict[str, Any]) -> MethodResult:
    """A run's compare row, labelled with its folder name (methods may repeat across runs)."""
    lr = (cfg.get("train") or {}).get("lr")
    status, error = run_status(run_dir)
    if status != "finished":
        return failed_result(run_dir, name, lr, error or f"the run is {status}") if status == "failed" else \
            MethodResult(name, run_dir, lr, status, error=f"the run is {status}")
    return read_result(run_dir, name, metric, lr, "finished")

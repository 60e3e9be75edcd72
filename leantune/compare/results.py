"""One row of a comparison, read from a method's run folder (``metrics.json``, ``train_log.jsonl``, ``adapter/``)
as the training loop writes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from leantune.run.files import read_log, read_metrics
from leantune.run.layout import ADAPTER_DIR, METRICS_FILE


@dataclass
class MethodResult:
    """A method's outcome: its numbers when its run finished, else its error."""

    method: str
    run_dir: Path
    lr: float | None = None
    status: str = "finished"
    """finished, skipped (finished by an earlier compare), resumed, or failed."""
    metric: float | None = None
    trainable: int | None = None
    total: int | None = None
    adapter_bytes: int | None = None
    train_seconds: float | None = None
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    gap_to_full: float | None = None
    error: str | None = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """train_loss and eval_loss against steps."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.metric is not None

    @property
    def trainable_pct(self) -> float | None:
        return 100 * self.trainable / self.total if self.trainable is not None and self.total else None


def read_result(run_dir: Path, method: str, metric: str, lr: float | None, status: str) -> MethodResult:
    """The numbers of a finished run: ``metric`` from metrics.json; parameters, train time (the logged windows of
    optimizer steps, periodic evaluations included), real (non-padding) tokens per second and peak memory (CUDA
    peak on a GPU, else peak resident memory of the run's process) from train_log.jsonl; adapter size on disk."""
    result = MethodResult(method, run_dir, lr, status)
    metrics = read_metrics(run_dir) or {}
    if metric not in metrics:
        result.status, result.error = "failed", f"{METRICS_FILE} has no {metric}"
        return result
    result.metric = float(metrics[metric])
    rows = read_log(run_dir)
    for row in rows:
        if "trainable" in row:
            result.trainable, result.total = row["trainable"], row["total"]
    windows = [r for r in rows if "tokens_per_s" in r and r.get("tokens_per_s")]
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in windows)
    if windows:
        result.train_seconds = seconds
        result.tokens_per_s = sum(r["tokens"] for r in windows) / max(seconds, 1e-9)
    memory = [r.get("peak_cuda_mb", r.get("peak_rss_mb")) for r in rows if "peak_rss_mb" in r]
    result.peak_memory_mb = max(memory) if memory else None
    result.adapter_bytes = sum(f.stat().st_size for f in (run_dir / ADAPTER_DIR).rglob("*") if f.is_file())
    result.curves = {
        "train_loss": [(r["step"], r["loss"]) for r in rows if "loss" in r and "skipped" not in r],
        "eval_loss": [(r["step"], r["eval"]["eval_loss"]) for r in rows if "eval_loss" in r.get("eval", {})],
    }
    return result


def failed_result(run_dir: Path, method: str, lr: float | None, error: str) -> MethodResult:
    return MethodResult(method, run_dir, lr, "failed", error=error)


def add_gaps(results: list[MethodResult]) -> None:
    """Each finished method's metric minus full fine-tuning's, when ``full`` finished."""
    full = next((r for r in results if r.method == "full" and r.ok), None)
    if full is None:
        return
    for r in results:
        if r.ok:
            r.gap_to_full = r.metric - full.metric

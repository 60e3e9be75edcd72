"""Run logging: a live progress bar (or plain lines), ``train_log.jsonl`` and the ``loss.png`` plot."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from leantune.run.layout import LOG_FILE


class RunLogger:
    """Writes every logged row to ``train_log.jsonl`` at once (nothing lost on a crash) and shows progress."""

    def __init__(self, run_dir: Path, total_steps: int, quiet: bool = False, enabled: bool = True) -> None:
        """``enabled=False`` (every rank but the first of a multi-process run) logs nothing anywhere."""
        self.path = run_dir / LOG_FILE
        self.enabled = enabled
        self.file = self.path.open("a", encoding="utf-8") if enabled else None
        self.quiet = quiet
        self.start = time.perf_counter()
        self.bar = None
        if not quiet and total_steps > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, desc="training", unit="step", dynamic_ncols=True, file=sys.stderr)

    def truncate_after(self, step: int) -> None:
        """Drop the rows logged after ``step`` (a resumed run logs those steps again)."""
        if not self.enabled:
            return
        self.file.close()
        rows = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = []
        for line in rows:
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a row cut short by the crash
                continue
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(r + "\n" for r in kept), encoding="utf-8")
        tmp.replace(self.path)
        self.file = self.path.open("a", encoding="utf-8")
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {**row, "elapsed_s": round(time.perf_counter() - self.start, 3)}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def step(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()


def plot_run(log_path: Path, out_path: Path, metric: str) -> Path | None:
    """Training loss (and the eval metric on a second axis) against steps."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval"][metric]) for r in rows if "eval" in r and metric in r["eval"]]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals, strict=True), "o-", color="tab:orange", label=f"eval {metric}")
        ax2.set_ylabel(f"eval {metric}", color="tab:orange")
    ax.set_title("leantune run")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path

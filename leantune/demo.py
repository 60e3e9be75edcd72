"""``leantune demo``: LoRA on the embedded MiniLM, on a sentiment sample that ships with the package."""

from __future__ import annotations

import time
from importlib import resources

from leantune.config import validate_config
from leantune.train.loop import fine_tune


def sample_path() -> str:
    """The built-in sentiment sample: 238 short labelled reviews (text,label CSV) written for leantune."""
    return str(resources.files("leantune") / "data" / "samples" / "sentiment.csv")


def run_demo(method: str = "lora", output_dir: str = "runs/demo", quiet: bool = False) -> dict:
    cfg = validate_config({
        "model": "minilm",
        "task": "classification",
        "method": method,
        "method_args": {"r": 8, "alpha": 16, "dropout": 0.05} if method in ("lora", "dora") else {},
        "data": {"train": sample_path(), "format": "csv", "eval_fraction": 0.25},
        "train": {"epochs": 6, "batch_size": 16, "lr": 2e-3, "max_length": 64, "seed": 0, "eval_every": 20,
                  "log_every": 5, "num_threads": None},
        "output_dir": output_dir,
    }, "demo")
    start = time.perf_counter()
    result = fine_tune(cfg, overwrite=True, quiet=quiet)
    wall = time.perf_counter() - start
    b, a = result.before, result.after
    print()
    print(f"leantune demo: {method} on all-MiniLM-L6-v2, sentiment sample "
          f"({result.data_report['train']} train / {result.data_report['eval']} held-out reviews)")
    print(f"  trainable parameters: {result.trainable:,} of {result.total:,} "
          f"({100 * result.trainable / result.total:.2f}%)")
    print(f"  accuracy  before: {b['accuracy']:.3f}  (untrained head)   after: {a['accuracy']:.3f}")
    print(f"  macro-F1  before: {b['macro_f1']:.3f}                    after: {a['macro_f1']:.3f}")
    print(f"  time: {wall:.0f} s ({result.steps} steps, {result.train_seconds:.0f} s training)")
    print(f"  run folder: {result.run_dir}  (adapter/, metrics.json, train_log.jsonl)")
    print(f"  loss plot:  {result.run_dir / 'loss.png'}")
    return {"before": b, "after": a, "trainable": result.trainable, "total": result.total, "seconds": wall}

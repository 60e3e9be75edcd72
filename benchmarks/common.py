"""Shared by the benchmark scripts: one process per run (own peak RSS), and the peft + Trainer peer."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_children(script: str, runs: list[str], extra: list[str], out: Path | None = None) -> list[dict[str, Any]]:
    """Run ``script --one RUN extra...`` for every run in its own process; collect the RESULT lines. With ``out``,
    each child's stderr goes to ``out/RUN.log`` as it runs and each result is appended to ``out/results.jsonl``."""
    rows = []
    for run in runs:
        if out is None:
            proc = subprocess.run([sys.executable, script, "--one", run, *extra], capture_output=True, text=True)
            errors = proc.stderr
        else:
            with open(out / f"{run}.log", "w") as log:
                proc = subprocess.run([sys.executable, script, "--one", run, *extra], stdout=subprocess.PIPE,
                                      stderr=log, text=True)
            errors = (out / f"{run}.log").read_text()
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{run}: failed\n{errors[-3000:]}", file=sys.stderr)
            continue
        rows.append({"run": run, **json.loads(line[7:])})
        print(f"  {run}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
        if out is not None:
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    return rows


def report(result: dict[str, Any]) -> None:
    """Print a child's result for the parent (with the child's own peak RSS)."""
    print("RESULT " + json.dumps({**result, "peak_rss_mb": round(peak_rss_mb())}), flush=True)


def subset_lines(path: Path, n: int, start: int = 0) -> str:
    """The first ``n`` lines (after ``start``) of a plain or gzip text file, as a temporary .txt file."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()[start:start + n]
    out = Path(tempfile.mkdtemp()) / (path.name.removesuffix(".gz") + ".txt")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(out)


def trainer_arguments(batch_size: int, lr: float, max_steps: int, **overrides: Any) -> Any:
    """The peer's TrainingArguments: linear schedule with 6% warmup, weight decay 0.01, CPU, seed 0, no saving."""
    from transformers import TrainingArguments

    return TrainingArguments(**{
        "output_dir": tempfile.mkdtemp(), "per_device_train_batch_size": batch_size, "learning_rate": lr,
        "max_steps": max_steps, "lr_scheduler_type": "linear", "warmup_steps": 0.06, "weight_decay": 0.01,
        "save_strategy": "no", "report_to": [], "logging_steps": 25, "use_cpu": True, "seed": 0,
        "disable_tqdm": True, "dataloader_num_workers": 0, "remove_unused_columns": False, **overrides,
    })


def peft_trainer_run(task: Any, model: Any, train_features: list[dict], lora: dict[str, Any], lr: float,
                     batch_size: int, max_steps: int, threads: int, **trainer_args: Any) -> tuple[Any, float, int]:
    """The standard stack on leantune's own features (same prompts, same masking): peft LoRA + Trainer
    (``trainer_args``: more TrainingArguments, e.g. ``train_sampling_strategy="group_by_length"``).

    Returns (trained peft model, training seconds, trainable parameters).
    """
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer

    torch.set_num_threads(threads)
    cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora.get("dropout", 0.0),
                     target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    ds = datasets.Dataset.from_list([{k: f[k] for k in ("input_ids", "attention_mask", "labels")}
                                     for f in train_features])
    args = trainer_arguments(batch_size, lr, max_steps, **trainer_args)
    collator = DataCollatorForSeq2Seq(task.tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=peft_model, args=args, train_dataset=ds, data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    return peft_model, time.perf_counter() - start, trainable


def set_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

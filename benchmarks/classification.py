"""SST-2 on MiniLM: every leantune method against HF peft + transformers Trainer, same data and budget.

    python benchmarks/classification.py [--data ../shared/data/sst2] [--train-size 6920] [--epochs 1]

Each run is a separate process (so peak RSS is its own), pinned to the same thread count. Prints one table:
test accuracy, trainable parameters, training wall time, peak RSS. Skips with a message when the data is absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, report, run_children, set_offline  # noqa: E402

DEFAULT_DATA = SHARED / "sst2"

# method -> (method_args, learning rate). One budget for all: same data, epochs, batch size, max length.
LORA = {"r": 4, "alpha": 8, "dropout": 0.05}
RUNS = {
    "head": ({}, 1e-2),
    "lora": (LORA, 1e-3),
    "dora": (LORA, 1e-3),
    "ia3": ({}, 5e-3),
    "bitfit": ({}, 2e-3),
    "bottleneck": ({"style": "pfeiffer", "reduction_factor": 16}, 1e-3),
    "full": ({}, 5e-5),
    "peft-lora": (LORA, 1e-3),  # HF peft + Trainer on the same mean-pooled model
    "peft-lora-cls": (LORA, 1e-3),  # HF peft + Trainer as a peft user gets it: BertForSequenceClassification
}


def run_leantune(method: str, args: argparse.Namespace, out_dir: str) -> dict:
    from leantune.config import validate_config
    from leantune.train.loop import fine_tune

    method_args, lr = RUNS[method]
    cfg = validate_config({
        "model": "minilm", "task": "classification", "method": method, "method_args": method_args,
        "data": {"train": str(Path(args.data) / "stsa.binary.train"), "eval": str(Path(args.data) / "stsa.binary.test"),
                 "format": "lines", "clean": {"drop_duplicates": False}},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": lr, "max_length": args.max_length,
                  "seed": 0, "num_threads": args.threads, "max_steps": args.max_steps},
        "output_dir": out_dir,
    })
    if args.train_size:
        cfg.data.train = _subset(Path(cfg.data.train), args.train_size)
    result = fine_tune(cfg, overwrite=True, quiet=True)
    return {"accuracy": result.after["accuracy"], "trainable": result.trainable, "total": result.total,
            "seconds": result.train_seconds}


def _subset(path: Path, n: int) -> str:
    lines = path.read_text().splitlines()[:n]
    out = Path(tempfile.mkdtemp()) / path.name
    out.write_text("\n".join(lines) + "\n")
    return str(out)


def run_peft(method: str, args: argparse.Namespace) -> dict:
    """The standard stack: peft's LoRA + transformers Trainer, DataCollatorWithPadding, same hyperparameters."""
    import datasets
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from leantune.config import validate_config
    from leantune.models.registry import resolve_model
    from leantune.tasks import make_task

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = resolve_model("minilm")
    tok = AutoTokenizer.from_pretrained(path)

    def read(name: str, limit: int | None = None) -> datasets.Dataset:
        rows = [line.split(" ", 1) for line in (Path(args.data) / name).read_text().splitlines() if line.strip()]
        rows = rows[:limit] if limit else rows
        ds = datasets.Dataset.from_dict({"text": [t for _, t in rows], "label": [int(lab) for lab, _ in rows]})
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=args.max_length), batched=True,
                      remove_columns=["text"])

    train, test = read("stsa.binary.train", args.train_size), read("stsa.binary.test")
    method_args, lr = RUNS[method]
    targets = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    cfg = LoraConfig(r=method_args["r"], lora_alpha=method_args["alpha"], lora_dropout=method_args["dropout"],
                     target_modules=targets, modules_to_save=["classifier"])
    if method == "peft-lora-cls":
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    else:
        task = make_task(validate_config({"model": path, "data": {"train": args.data}}), tok, path)
        task.labels = ["0", "1"]
        base = task.build_model(path)  # mean pooling into a fresh head, as MiniLM was trained

        class WithLoss(torch.nn.Module):  # Trainer wants the loss from the model
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.config = inner.config

            def forward(self, labels=None, **kw):
                out = self.inner(**kw)
                out.loss = torch.nn.functional.cross_entropy(out.logits, labels) if labels is not None else None
                return out

        base = WithLoss(base)
    model = get_peft_model(base, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        learning_rate=lr, num_train_epochs=args.epochs, max_steps=args.max_steps or -1, lr_scheduler_type="linear",
        warmup_steps=0.06, weight_decay=0.01, save_strategy="no", report_to=[], logging_steps=50, use_cpu=True,
        seed=0, disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=method == "peft-lora-cls",
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tok))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    pred = trainer.predict(test)
    accuracy = float((np.argmax(pred.predictions, -1) == np.array(test["label"])).mean())
    return {"accuracy": accuracy, "trainable": trainable, "total": total, "seconds": seconds}


def child(method: str, args: argparse.Namespace) -> None:
    set_offline()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        report(run_peft(method, args) if method.startswith("peft") else run_leantune(method, args, tmp + "/run"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--train-size", type=int, default=0, help="first N training sentences (0: all 6920)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(RUNS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (Path(args.data) / "stsa.binary.train").is_file():
        print(f"SST-2 not found under {args.data}: skipping (see ../shared/data/README.md).")
        return
    if args.one:
        child(args.one, args)
        return
    extra = ["--data", args.data, "--train-size", str(args.train_size), "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads)]
    extra += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    rows = [{"method": r["run"], **r} for r in run_children(__file__, args.methods.split(","), extra)]
    print(f"\nSST-2 test (1821 sentences), MiniLM-L6, {args.epochs:g} epoch(s) on "
          f"{args.train_size or 6920} training sentences, batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.threads} threads\n")
    print("| method | test accuracy | trainable params | % of all params | train time (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lr = RUNS[r["method"]][1]
        print(f"| {r['method']} (lr {lr:g}) | {100 * r['accuracy']:.2f} | {r['trainable']:,} | "
              f"{100 * r['trainable'] / r['total']:.3f} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()

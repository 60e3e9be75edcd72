"""XQuAD (English) extractive QA on MiniLM: LoRA vs full fine-tuning, split by article.

    python benchmarks/extractive_qa.py [--eval-articles 10] [--epochs 3]

Trains on the questions of the first 48 - N articles and evaluates on the last N (no context is seen in training).
Prints exact match and F1 (SQuAD normalisation), trainable parameters, training time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, report, run_children, set_offline  # noqa: E402

DATA = SHARED / "xquad" / "xquad.en.json"
RUNS = {"lora": ({"r": 8, "alpha": 16, "dropout": 0.05}, 1e-3), "full": ({}, 1e-4)}


def split_by_article(n_eval: int) -> tuple[str, str, int, int]:
    data = json.loads(DATA.read_text(encoding="utf-8"))["data"]
    folder = Path(tempfile.mkdtemp())
    train, evals = data[:-n_eval], data[-n_eval:]
    for name, part in (("train.json", train), ("eval.json", evals)):
        (folder / name).write_text(json.dumps({"version": "1.1", "data": part}), encoding="utf-8")
    count = lambda part: sum(len(p["qas"]) for a in part for p in a["paragraphs"])  # noqa: E731
    return str(folder / "train.json"), str(folder / "eval.json"), count(train), count(evals)


def child(run: str, args: argparse.Namespace) -> None:
    set_offline()
    from leantune.config import validate_config
    from leantune.train.loop import fine_tune

    train, evals, _, _ = split_by_article(args.eval_articles)
    method_args, lr = RUNS[run]
    cfg = validate_config({
        "model": "minilm", "task": "extractive_qa", "method": run, "method_args": method_args,
        "task_args": {"doc_stride": 128},
        "data": {"train": train, "eval": evals, "format": "squad"},
        "train": {"epochs": args.epochs, "batch_size": 16, "lr": lr, "max_length": 384,
                  "num_threads": args.threads, "seed": 0},
        "output_dir": tempfile.mkdtemp() + "/run",
    })
    result = fine_tune(cfg, overwrite=True, quiet=True)
    report({"exact_match": result.after["exact_match"], "f1": result.after["f1"],
            "before_f1": result.before["f1"], "trainable": result.trainable, "total": result.total,
            "seconds": result.train_seconds})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-articles", type=int, default=10)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="lora,full")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"XQuAD not found at {DATA}: skipping (see ../shared/data/README.md).")
        return
    if args.one:
        child(args.one, args)
        return
    _, _, n_train, n_eval = split_by_article(args.eval_articles)
    rows = run_children(__file__, args.runs.split(","), ["--eval-articles", str(args.eval_articles),
                                                         "--epochs", str(args.epochs), "--threads", str(args.threads)])
    print(f"\nXQuAD en, MiniLM-L6: {n_train} training questions ({48 - args.eval_articles} articles), {n_eval} eval "
          f"questions ({args.eval_articles} other articles); {args.epochs:g} epochs, batch 16, max_length 384, stride 128\n")
    print("| run | exact match | F1 | F1 before | trainable params | % | train time (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} (lr {RUNS[r['run']][1]:g}) | {r['exact_match']:.1f} | {r['f1']:.1f} | {r['before_f1']:.1f} | "
              f"{r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()

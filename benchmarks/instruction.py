"""Instruction tuning of SmolLM2-135M-Instruct with LoRA on the Alpaca seed tasks: loss before and after, and a
few generations side by side.

    python benchmarks/instruction.py [--epochs 2] [--show 3]

The 175 seed tasks are split 150 / 25 (seeded); the eval loss is over the held-out responses only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, peak_rss_mb, set_offline  # noqa: E402

DATA = SHARED / "instructions" / "seed_tasks.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--show", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"seed tasks not found at {DATA}: skipping (see ../shared/data/README.md).")
        return
    set_offline()
    import leantune as lt
    from leantune.config import validate_config
    from leantune.run.loader import load_run
    from leantune.train.loop import fine_tune

    cfg = validate_config({
        "model": "smollm2", "task": "instruction", "method": "lora", "method_args": {"r": 16, "alpha": 32},
        "task_args": {"eval_max_examples": 0},
        "data": {"train": str(DATA), "format": "alpaca", "eval_fraction": 25 / 175},
        "train": {"epochs": args.epochs, "batch_size": 8, "lr": 5e-4, "max_length": 320,
                  "num_threads": args.threads, "seed": 0, "log_every": 5},
        "output_dir": tempfile.mkdtemp() + "/run",
    })
    result = fine_tune(cfg, overwrite=True, quiet=True)
    _, task, model = load_run(result.run_dir)
    task.prepare()  # the same seeded split: the held-out tasks
    shown = task.eval_examples[:args.show]
    tuned = task.generate_examples(model, shown, max_new_tokens=80)
    with lt.disable_adapters(model):
        base = task.generate_examples(model, shown, max_new_tokens=80)
    print(f"\nAlpaca seed tasks, SmolLM2-135M-Instruct + LoRA r=16 (all linear layers), {result.data_report['train']} "
          f"train / {result.data_report['eval']} held-out tasks, {result.steps} steps x batch 8, "
          f"{result.train_seconds:.0f} s, peak RSS {peak_rss_mb():.0f} MB\n")
    print("| | eval loss (held-out responses) |\n|---|---|")
    print(f"| before (the instruct model as shipped) | {result.before['eval_loss']:.3f} |")
    print(f"| after LoRA | {result.after['eval_loss']:.3f} |\n")
    for ex, b, t in zip(shown, base, tuned, strict=True):
        print(f"**Instruction:** {ex.messages[-1]['content'][:300]}\n")
        print(f"- reference: {ex.response[:300]}\n- before: {b[:300]}\n- after: {t[:300]}\n")


if __name__ == "__main__":
    main()

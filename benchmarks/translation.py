"""Multi30k English->German with SmolLM2-135M-Instruct: zero-shot vs LoRA vs full fine-tuning vs HF peft LoRA.

    python benchmarks/translation.py [--train-pairs 800] [--test 100] [--steps 100]

Same prompt (the model's chat template with a translation instruction), same training pairs, batch size and
steps for every fine-tune; greedy decoding of the first ``--test`` sentences of test_2016_flickr for all.
Prints chrF and BLEU (sacrebleu), training time and peak RSS. Skips when ../shared/data/multi30k is absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, peft_trainer_run, report, run_children, set_offline, subset_lines  # noqa: E402

DATA = SHARED / "multi30k"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR = {"lora": 1e-3, "full": 3e-5, "peft-lora": 1e-3}


def config(run: str, args: argparse.Namespace, out: str) -> dict:
    method = "full" if run == "full" else "lora"
    return {
        "model": "smollm2", "task": "translation", "method": method,
        "method_args": LORA if method == "lora" else {},
        "task_args": {"source_lang": "English", "target_lang": "German",
                      "train_target": subset_lines(DATA / "train.de.gz", args.train_pairs),
                      "eval_target": subset_lines(DATA / "test_2016_flickr.de.gz", args.test),
                      "eval_max_examples": args.test, "max_new_tokens": 64},
        "data": {"train": subset_lines(DATA / "train.en.gz", args.train_pairs),
                 "eval": subset_lines(DATA / "test_2016_flickr.en.gz", args.test)},
        "train": {"max_steps": 0 if run == "zero-shot" else args.steps, "batch_size": args.batch_size,
                  "lr": LR.get(run, 1e-3), "max_length": 160,
                  "num_threads": args.threads, "eval_before": False, "seed": 0, "log_every": 10},
        "output_dir": out,
    }


def child(run: str, args: argparse.Namespace) -> None:
    set_offline()
    from leantune.config import validate_config

    cfg = validate_config(config(run, args, tempfile.mkdtemp() + "/run"))
    if run != "peft-lora":
        from leantune.train.loop import fine_tune

        result = fine_tune(cfg, overwrite=True, quiet=True)
        report({**{k: result.after[k] for k in ("chrf", "bleu", "eval_loss")}, "trainable": result.trainable,
                "seconds": result.train_seconds})
        return
    import torch

    from leantune.models.loading import load_tokenizer
    from leantune.models.registry import resolve_model
    from leantune.tasks import make_task

    path = resolve_model("smollm2")
    task = make_task(cfg, load_tokenizer(path), path)
    train_f, eval_f = task.prepare()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model, seconds, trainable = peft_trainer_run(task, task.build_model(path), train_f,
                                                 {**LORA, "target_modules": targets}, LR[run], args.batch_size,
                                                 args.steps, args.threads)
    metrics = task.evaluate(model, eval_f, torch.device("cpu"))
    report({**{k: metrics[k] for k in ("chrf", "bleu", "eval_loss")}, "trainable": trainable, "seconds": seconds})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=800)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="zero-shot,lora,full,peft-lora")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (DATA / "train.en.gz").is_file():
        print(f"Multi30k not found under {DATA}: skipping (see ../shared/data/README.md).")
        return
    if args.one:
        child(args.one, args)
        return
    extra = ["--train-pairs", str(args.train_pairs), "--test", str(args.test), "--steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    rows = run_children(__file__, args.runs.split(","), extra)
    print(f"\nMulti30k en->de, SmolLM2-135M-Instruct, {args.train_pairs} training pairs, {args.steps} steps x batch "
          f"{args.batch_size}; first {args.test} sentences of test_2016_flickr, greedy decoding\n")
    print("| run | chrF | BLEU | eval loss | trainable params | train time (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lr = f" (lr {LR[r['run']]:g})" if r["run"] in LR else ""
        print(f"| {r['run']}{lr} | {r['chrf']:.1f} | {r['bleu']:.1f} | {r['eval_loss']:.3f} | {r['trainable']:,} | "
              f"{r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()

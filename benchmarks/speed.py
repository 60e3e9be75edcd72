"""Speed and memory: leantune against HF peft + transformers (Trainer, and a plain loop) on the same model, data,
LoRA settings, batch size, learning rate and number of steps, each run in its own process, in one go.

    python benchmarks/speed.py                  # both workloads, ~15 min on 2 cores
    python benchmarks/speed.py --only smollm2 --steps 10 --repeat 2

(a) SmolLM2-135M-Instruct, LoRA r=16 / alpha=32 on all linear layers, instruction data of varied lengths (the
    Alpaca seed tasks from ../shared/data/instructions when present, else generated), batch 8, max_length 320;
    also leantune with activation checkpointing, with sequence packing, and with a 4-bit NF4 base (QLoRA).
(b) MiniLM (all-MiniLM-L6-v2) sentiment classification on variable-length sentences (SST-2 from ../shared/data
    when present, else the built-in sample), LoRA r=8 on all linear layers and the trained head, batch 32;
    also leantune's head-only probe (only the classifier trains) and LoRA on an NF4 base.

Reported per run: real (non-pad) tokens per second of training, peak RSS of the process up to the end of training
(model, data and training; the held-out evaluation afterwards is not counted), and the loss on the same
held-out examples after the fixed number of steps (one reference loss function for everyone: mean cross-entropy
over response tokens / examples). Ratios are against peft + Trainer. Runs alternate between the stacks; with
``--repeat`` the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, report, run_children, set_offline  # noqa: E402

SEED_TASKS = SHARED / "instructions" / "seed_tasks.jsonl"
SST2 = SHARED / "sst2"
LM_RUNS = ["peft-trainer", "leantune", "peft-loop", "leantune-ckpt", "leantune-qlora", "leantune-packed"]
CLS_RUNS = ["peft-trainer", "leantune", "peft-loop", "leantune-head", "leantune-qlora"]
LORA_LM = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"]}
LORA_CLS = {"r": 8, "alpha": 16, "target_modules": ["query", "key", "value", "attention.output.dense",
                                                    "intermediate.dense", "output.dense"]}


# ------------------------------------------------------------------------------------------------- data
def instruction_file(out_dir: Path) -> str:
    """The seed tasks, or (without ../shared/data) generated instructions whose lengths vary from 10 to 250 words."""
    if SEED_TASKS.is_file():
        return str(SEED_TASKS)
    rng = random.Random(0)
    words = "the a model data token layer train weight loss step batch memory speed answer question".split()
    rows = []
    for i in range(175):
        n = rng.choice([10, 20, 40, 80, 160, 250])
        rows.append({"instruction": f"Task {i}: " + " ".join(rng.choices(words, k=n // 2)),
                     "output": " ".join(rng.choices(words, k=n // 2))})
    path = out_dir / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def classification_files(out_dir: Path) -> tuple[str, str, str]:
    """(train, eval, format): the first 4000 SST-2 training sentences and 400 dev sentences, or the sample."""
    if (SST2 / "stsa.binary.train").is_file():
        for name, n in (("stsa.binary.train", 4000), ("stsa.binary.dev", 400)):
            lines = (SST2 / name).read_text(encoding="utf-8").splitlines()[:n]
            (out_dir / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(out_dir / "stsa.binary.train"), str(out_dir / "stsa.binary.dev"), "lines"
    from importlib import resources

    return str(resources.files("leantune") / "data" / "samples" / "sentiment.csv"), "", "csv"


def lm_config(data: str, steps: int, threads: int, **train: Any) -> dict[str, Any]:
    return {
        "model": "smollm2", "task": "instruction", "method": "lora",
        "method_args": {k: v for k, v in LORA_LM.items()},
        "task_args": {"eval_max_examples": 0},
        "data": {"train": data, "format": "alpaca", "eval_fraction": 25 / 175},
        "train": {"max_steps": steps, "batch_size": 8, "lr": 5e-4, "max_length": 320,
                  "eval_before": False, "num_threads": threads, "seed": 0, "log_every": 1, **train},
        "output_dir": tempfile.mkdtemp() + "/run",
    }


def cls_config(train_file: str, eval_file: str, fmt: str, steps: int, threads: int, method: str) -> dict[str, Any]:
    data = {"train": train_file, "format": fmt}
    if eval_file:
        data["eval"] = eval_file
    args = {k: v for k, v in LORA_CLS.items()} if method == "lora" else {}
    return {
        "model": "minilm", "task": "classification", "method": method, "method_args": args, "data": data,
        "train": {"max_steps": steps, "batch_size": 32, "lr": 1e-3 if method == "lora" else 1e-2, "max_length": 128,
                  "eval_before": False, "num_threads": threads, "seed": 0, "log_every": 1},
        "output_dir": tempfile.mkdtemp() + "/run",
    }


# ------------------------------------------------------------------------------------------------- reference loss
def reference_loss(model: Any, features: list[dict], classification: bool, pad_id: int) -> float:
    """Mean cross-entropy over response tokens (LM) or examples (classification), computed the same way for all."""
    import torch
    import torch.nn.functional as F

    from leantune.data.batching import pad_batch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(features), 8):
            chunk = [{k: f[k] for k in ("input_ids", "attention_mask", "labels", "targets") if k in f}
                     for f in features[i:i + 8]]
            b = pad_batch(chunk, pad_id)
            if classification:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                total += float(F.cross_entropy(logits.float(), b["targets"], reduction="sum"))
                count += len(chunk)
            else:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
                targets = b["labels"][:, 1:]
                total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                               targets.reshape(-1), ignore_index=-100, reduction="sum"))
                count += int((targets != -100).sum())
    return total / count


# ------------------------------------------------------------------------------------------------- one run (child)
def run_leantune(cfg_dict: dict[str, Any], classification: bool) -> dict[str, Any]:
    from leantune.config import validate_config
    from leantune.train.loop import fine_tune
    from leantune.train.runs import load_run

    cfg = validate_config(cfg_dict)
    result = fine_tune(cfg, overwrite=True, quiet=True)
    log = [json.loads(x) for x in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    tokens = sum(r.get("tokens", 0) for r in log)
    _, task, model = load_run(result.run_dir)
    _, evals = task.prepare()
    return {"tokens": tokens, "seconds": result.train_seconds, "trainable": result.trainable,
            "train_peak_mb": result.memory["peak_rss_mb"],
            "loss": reference_loss(model, evals, classification, task.pad_id)}


def run_peer(cfg_dict: dict[str, Any], classification: bool, trainer: bool) -> dict[str, Any]:
    """peft LoRA with the transformers Trainer (or a plain PyTorch loop) on leantune's own tokenised features:
    random batches padded to their longest example (DataCollatorForSeq2Seq / DataCollatorWithPadding)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    from leantune.config import validate_config
    from leantune.models.loading import load_tokenizer
    from leantune.models.registry import resolve_model
    from leantune.tasks import make_task

    cfg = validate_config(cfg_dict)
    tc = cfg.train
    torch.set_num_threads(tc.num_threads)
    torch.manual_seed(0)
    path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(path)
    task = make_task(cfg, tokenizer, path)
    train_f, eval_f = task.prepare()
    if classification:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(task.labels))
        lora = LoraConfig(r=LORA_CLS["r"], lora_alpha=LORA_CLS["alpha"], target_modules=LORA_CLS["target_modules"],
                          task_type="SEQ_CLS")
        rows = [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"], "labels": f["targets"]}
                for f in train_f]
        collate = DataCollatorWithPadding(tokenizer)
    else:
        model = task.build_model(path)  # use_cache=False, as for leantune
        lora = LoraConfig(r=LORA_LM["r"], lora_alpha=LORA_LM["alpha"], target_modules=LORA_LM["target_modules"],
                          task_type="CAUSAL_LM")
        rows = [{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in train_f]
        collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = [0]

    def counting_collate(batch: list[dict]) -> dict:
        tokens[0] += sum(len(r["input_ids"]) for r in batch)
        return collate(batch)

    if trainer:
        import datasets
        from transformers import Trainer, TrainingArguments

        args = TrainingArguments(
            output_dir=tempfile.mkdtemp(), per_device_train_batch_size=tc.batch_size, learning_rate=tc.lr,
            max_steps=tc.max_steps, lr_scheduler_type="linear", warmup_steps=0.06, weight_decay=tc.weight_decay,
            max_grad_norm=1.0, save_strategy="no", report_to=[], logging_steps=1000, use_cpu=True, seed=0,
            disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
        )
        run = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                      data_collator=counting_collate)
        start = time.perf_counter()
        run.train()
        seconds = time.perf_counter() - start
    else:
        from transformers import get_linear_schedule_with_warmup

        loader = torch.utils.data.DataLoader(rows, batch_size=tc.batch_size, shuffle=True, collate_fn=counting_collate,
                                             generator=torch.Generator().manual_seed(0))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        sched = get_linear_schedule_with_warmup(opt, int(0.06 * tc.max_steps), tc.max_steps)
        model.train()
        start = time.perf_counter()
        step = 0
        while step < tc.max_steps:
            for batch in loader:
                model(**batch).loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                if step == tc.max_steps:
                    break
        seconds = time.perf_counter() - start
    from leantune.train.memory import peak_rss_mb

    return {"tokens": tokens[0], "seconds": seconds, "trainable": trainable, "train_peak_mb": peak_rss_mb(),
            "loss": reference_loss(model, eval_f, classification, task.pad_id)}


def one(run: str, workload: str, args: argparse.Namespace) -> None:
    set_offline()
    tmp = Path(tempfile.mkdtemp())
    if workload == "smollm2":
        data = instruction_file(tmp)
        extra = {"leantune-ckpt": {"activation_checkpointing": True}, "leantune-packed": {"packing": True}}
        cfg = lm_config(data, args.steps, args.threads, **extra.get(run, {}))
        if run == "leantune-qlora":
            cfg["quantize"] = "nf4"
        classification = False
    else:
        train_file, eval_file, fmt = classification_files(tmp)
        cfg = cls_config(train_file, eval_file, fmt, args.cls_steps, args.threads,
                         "head" if run == "leantune-head" else "lora")
        if run == "leantune-qlora":
            cfg["quantize"] = "nf4"
        classification = True
    if run.startswith("leantune"):
        result = run_leantune(cfg, classification)
    else:
        result = run_peer(cfg, classification, trainer=run == "peft-trainer")
    report({**result, "tokens_per_s": result["tokens"] / result["seconds"]})


# ------------------------------------------------------------------------------------------------- table
def table(title: str, rows: list[dict[str, Any]], peer: str = "peft-trainer") -> str:
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"].split("@")[0], []).append(r)
    med = {run: {k: statistics.median(x[k] for x in rs) for k in ("tokens_per_s", "train_peak_mb", "loss", "tokens")}
           | {"trainable": rs[0]["trainable"]} for run, rs in by_run.items()}
    base = med.get(peer)
    out = [f"\n{title}\n", "| run | trainable | real tokens/s | × peer | peak RSS MB | × peer | held-out loss |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for run, m in med.items():
        speed = f"{m['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        mem = f"{m['train_peak_mb'] / base['train_peak_mb']:.2f}" if base else "-"
        out.append(f"| {run} | {m['trainable']:,} | {m['tokens_per_s']:.0f} | {speed} | {m['train_peak_mb']:.0f} | {mem} "
                   f"| {m['loss']:.4f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["smollm2", "minilm"])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of the SmolLM2 runs")
    parser.add_argument("--cls-steps", type=int, default=40, help="optimizer steps of the MiniLM runs")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the runs this many times (medians)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="smollm2", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.workload, args)
        return
    flags = ["--steps", str(args.steps), "--cls-steps", str(args.cls_steps), "--threads", str(args.threads)]
    out = [f"python benchmarks/speed.py {' '.join(sys.argv[1:])}".strip(),
           f"{time.strftime('%Y-%m-%d')}, {args.threads} threads, CPU fp32"]
    for workload, runs, title in (
        ("smollm2", LM_RUNS, f"(a) SmolLM2-135M LoRA r=16 all linear, instruction data, batch 8, {args.steps} steps"),
        ("minilm", CLS_RUNS, f"(b) MiniLM classification LoRA r=8, batch 32, {args.cls_steps} steps"),
    ):
        if args.only and args.only != workload:
            continue
        print(f"{workload}: {len(runs)} runs x {args.repeat}", file=sys.stderr, flush=True)
        rows = []
        for _ in range(args.repeat):
            rows += run_children(__file__, runs, [*flags, "--workload", workload])
        out.append(table(title, rows))
    print("\n".join(out))


if __name__ == "__main__":
    main()

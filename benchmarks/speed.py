"""Speed and memory: leantune against HF peft + the transformers Trainer, the peer configured as a competent user
would, counted the same way on both sides. Every run in its own process; runs alternate between the sides.

    python benchmarks/speed.py --out speed.jsonl              # all rows, 3 repeats
    python benchmarks/speed.py --rows peft-grouped,leantune --repeat 1 --out speed.jsonl
    python benchmarks/speed.py --table speed.jsonl                                        # medians of what is there

(a) SmolLM2-135M-Instruct, LoRA r=16 / alpha=32 on all 7 linear projections, the Alpaca seed tasks (or generated
    instructions of varied lengths), batch 8, max_length 320, chat template on both sides (leantune's own
    tokenisation for everyone). ``--only gemma3``: the same with Gemma 3 270M (262k vocabulary), batch 4.
(b) MiniLM (all-MiniLM-L6-v2) SST-2 classification, LoRA r=8 on all linear layers and the head, batch 32.

Peer rows (peft LoRA + Trainer): ``peft-defaults`` is what the defaults give (random sampler, batches padded to their
longest example, the model's KV cache on, no heap trimming): the defaults-vs-defaults row. ``peft-grouped`` is the
competent configuration: ``train_sampling_strategy="group_by_length"``, ``use_cache=False``, glibc's heap trimmed
after every step (a ``malloc_trim`` callback, as leantune does). ``peft-grouped-ckpt`` adds gradient checkpointing
(non-reentrant), the peer of ``leantune-ckpt``; ``peft-flatten`` is padding-free (``DataCollatorWithFlattening``:
one row per batch, positions restarting per example), the peer of ``leantune-packed``.

Counted the same way: the clock reads right after every optimizer step on both sides (leantune: the optimizer's
step post-hook; Trainer: ``on_optimizer_step``); the first step is warm-up and not counted; the figure is the real
(non-pad) tokens of steps 2..N over the time from the end of step 1 to the end of step N. Tokens are counted by a
forward pre-hook on the model (the batches actually trained on: the Trainer's loader fetches one batch ahead, so
its collate function would count one batch too many); leantune's packed rows carry no attention mask, so their
real tokens come from the loop's own per-step count, which the script checks against the hook on unpacked runs.
Both sides: no warm-up of the learning rate, linear decay to 0 over the same number of steps, AdamW, weight decay
0.01, gradient clipping at 1.0, fp32, the same thread count. Peak RSS is the process's up to the end of training;
the held-out loss is one reference function for all, after training.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, report, run_children, set_offline  # noqa: E402

SEED_TASKS = SHARED / "instructions" / "seed_tasks.jsonl"
SST2 = SHARED / "sst2"
# alternating sides; each leantune row follows the peer row it is compared with
LM_RUNS = ["peft-defaults", "leantune", "peft-grouped", "leantune-ckpt", "peft-grouped-ckpt", "leantune-packed",
           "peft-flatten"]
LM_EXTRA = ["leantune-qlora"]
CLS_RUNS = ["peft-defaults", "leantune", "peft-grouped", "leantune-head", "leantune-qlora"]
# (leantune row, its peer) pairs of the summary; "best" is the fastest peer without checkpointing (defaults,
# grouped or flatten)
PAIRS = [("leantune", "peft-defaults", "defaults vs defaults"), ("leantune", "best", "vs the strongest peer"),
         ("leantune-ckpt", "peft-grouped-ckpt", "both with activation / gradient checkpointing"),
         ("leantune-packed", "peft-flatten", "both padding-free"), ("leantune-packed", "best", "packing vs the strongest peer")]
LORA_LM = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"]}
LORA_CLS = {"r": 8, "alpha": 16, "target_modules": ["query", "key", "value", "attention.output.dense",
                                                    "intermediate.dense", "output.dense"]}
WEIGHT_DECAY = 0.01
LM_BATCH = {"smollm2": 8, "gemma3": 4}  # Gemma 3: batch 4, the peer's 262k-vocabulary logits and their gradient
# leantune-packed: rows of 320 per step, about the tokens of the unpacked batch (137 tokens per example on average)
PACKED_ROWS = {"smollm2": 4, "gemma3": 2}


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


def lm_config(data: str, steps: int, threads: int, model: str = "smollm2", **train: Any) -> dict[str, Any]:
    return {
        "model": model, "task": "instruction", "method": "lora", "method_args": dict(LORA_LM),
        "task_args": {"eval_max_examples": 0},
        "data": {"train": data, "format": "alpaca", "eval_fraction": 25 / 175},
        "train": {"max_steps": steps, "batch_size": LM_BATCH[model], "lr": 5e-4, "max_length": 320, "warmup_steps": 0,
                  "schedule": "linear", "weight_decay": WEIGHT_DECAY, "max_grad_norm": 1.0, "eval_before": False,
                  "num_threads": threads, "seed": 0, "log_every": 1, **train},
        "output_dir": tempfile.mkdtemp() + "/run",
    }


def cls_config(train_file: str, eval_file: str, fmt: str, steps: int, threads: int, method: str) -> dict[str, Any]:
    data = {"train": train_file, "format": fmt}
    if eval_file:
        data["eval"] = eval_file
    return {
        "model": "minilm", "task": "classification", "method": method,
        "method_args": dict(LORA_CLS) if method == "lora" else {}, "data": data,
        "train": {"max_steps": steps, "batch_size": 32, "lr": 1e-3 if method == "lora" else 1e-2, "max_length": 128,
                  "warmup_steps": 0, "schedule": "linear", "weight_decay": WEIGHT_DECAY, "max_grad_norm": 1.0,
                  "eval_before": False, "num_threads": threads, "seed": 0, "log_every": 1},
        "output_dir": tempfile.mkdtemp() + "/run",
    }


# ------------------------------------------------------------------------------------------------- counting
class StepClock:
    """Real and padded tokens of every forward pass in training (a forward pre-hook on the model), credited to the
    optimizer step they belong to, and the time right after every optimizer step (``tick``)."""

    def __init__(self, model: Any, sync: Callable[[], object] | None = None) -> None:
        self.sync = sync or (lambda: None)  # on a GPU: wait for the step's kernels before reading the clock
        self.pending = [0, 0]
        self.steps: list[tuple[float, int, int]] = []  # (time after the step, real tokens, padded tokens)
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.pending[0] += int(mask.sum()) if mask is not None else ids.numel()
        self.pending[1] += ids.numel()

    def tick(self, *_: Any, **__: Any) -> None:
        self.sync()
        self.steps.append((time.perf_counter(), *self.pending))
        self.pending = [0, 0]

    def summary(self, real_per_step: list[int] | None = None) -> dict[str, Any]:
        """Throughput over steps 2..N (step 1 is warm-up); ``real_per_step`` overrides the hook's real counts."""
        if len(self.steps) < 2:
            raise RuntimeError(f"need at least 2 optimizer steps, got {len(self.steps)}")
        real = real_per_step or [s[1] for s in self.steps]
        seconds = self.steps[-1][0] - self.steps[0][0]
        tokens, padded = sum(real[1:]), sum(s[2] for s in self.steps[1:])
        return {"tokens": tokens, "padded_tokens": padded, "load": os.getloadavg()[0], "seconds": seconds, "timed_steps": len(self.steps) - 1,
                "padding": 1 - tokens / padded, "tokens_per_s": tokens / seconds}


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
    from leantune.train.loop import finish, fit
    from leantune.train.setup import setup_run

    cfg = validate_config(cfg_dict)
    run = setup_run(cfg, overwrite=True, quiet=True)
    clock = StepClock(run.model)
    run.optimizer.register_step_post_hook(clock.tick)
    result = finish(run, fit(run))
    log = [json.loads(x) for x in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    loop_tokens = [r["tokens"] for r in log if "tokens" in r and "loss" in r]
    if not cfg.train.packing and loop_tokens != [s[1] for s in clock.steps]:
        raise RuntimeError(f"token counts disagree: loop {loop_tokens}, hook {[s[1] for s in clock.steps]}")
    return {**clock.summary(loop_tokens), "trainable": result.trainable, "train_peak_mb": result.memory["peak_rss_mb"],
            "loss": reference_loss(run.unwrapped, run.eval_features, classification, run.task.pad_id)}


def run_peer(cfg_dict: dict[str, Any], classification: bool, kind: str) -> dict[str, Any]:
    """peft LoRA + the transformers Trainer on leantune's own tokenised features. ``kind``: defaults, grouped,
    grouped-ckpt or flatten (see the module docstring)."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from leantune.config import validate_config
    from leantune.models.loading import load_tokenizer
    from leantune.models.registry import resolve_model
    from leantune.system.memory import heap_trimmer, peak_rss_mb
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
        model = task.build_model(path)
        model.config.use_cache = kind == "defaults"  # the checkpoint's own setting is use_cache=True
        lora = LoraConfig(r=LORA_LM["r"], lora_alpha=LORA_LM["alpha"], target_modules=LORA_LM["target_modules"],
                          task_type="CAUSAL_LM")
        rows = [{k: f[k] for k in ("input_ids", "attention_mask", "labels")} for f in train_f]
        collate = (DataCollatorWithFlattening(return_position_ids=True) if kind == "flatten"
                   else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    clock = StepClock(model)
    trim = heap_trimmer(torch.device("cpu"))

    class Clock(TrainerCallback):
        def on_optimizer_step(self, *_: Any, **__: Any) -> None:
            clock.tick()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            if kind != "defaults":
                trim()

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=tc.batch_size, learning_rate=tc.lr,
        max_steps=tc.max_steps, lr_scheduler_type="linear", warmup_steps=0, weight_decay=WEIGHT_DECAY,
        max_grad_norm=1.0, save_strategy="no", report_to=[], logging_steps=1000, use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if kind.startswith("grouped") else "random",
        gradient_checkpointing=kind == "grouped-ckpt", gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), data_collator=collate,
                      callbacks=[Clock()])
    trainer.train()
    peak = peak_rss_mb()
    return {**clock.summary(), "trainable": trainable, "train_peak_mb": peak,
            "loss": reference_loss(model, eval_f, classification, task.pad_id)}


def one(run: str, workload: str, args: argparse.Namespace) -> None:
    set_offline()
    tmp = Path(tempfile.mkdtemp())
    if workload in LM_BATCH:
        extra = {"leantune-ckpt": {"activation_checkpointing": True},
                 "leantune-packed": {"packing": True, "batch_size": PACKED_ROWS[workload]}}
        cfg = lm_config(instruction_file(tmp), args.steps, args.threads, workload, **extra.get(run, {}))
        classification = False
    else:
        train_file, eval_file, fmt = classification_files(tmp)
        cfg = cls_config(train_file, eval_file, fmt, args.cls_steps, args.threads,
                         "head" if run == "leantune-head" else "lora")
        classification = True
    if run == "leantune-qlora":
        cfg["quantize"] = "nf4"
    if run.startswith("leantune"):
        result = run_leantune(cfg, classification)
    else:
        result = run_peer(cfg, classification, run.removeprefix("peft-"))
    report(result)


# ------------------------------------------------------------------------------------------------- table
def _spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return format(med, fmt) if len(values) == 1 else f"{med:{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def table(title: str, rows: list[dict[str, Any]]) -> str:
    """Medians (min–max) per run; ratios of medians against peft-grouped; then the summary pairs."""
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    med = {run: {k: statistics.median(x[k] for x in rs) for k in ("tokens_per_s", "train_peak_mb", "loss", "padding")}
           for run, rs in by_run.items()}
    out = [f"\n{title}\n", "| run | n | real tokens/s, median (min–max) | peak RSS MB, median (min–max) | padding | "
           "held-out loss |", "|---|---:|---:|---:|---:|---:|"]
    for run, rs in by_run.items():
        out.append(f"| {run} | {len(rs)} | {_spread([x['tokens_per_s'] for x in rs], '.0f')} | "
                   f"{_spread([x['train_peak_mb'] for x in rs], '.0f')} | {100 * med[run]['padding']:.0f}% | "
                   f"{med[run]['loss']:.4f} |")
    peers = [p for p in ("peft-defaults", "peft-grouped", "peft-flatten") if p in med]  # no checkpointing
    best = max(peers, key=lambda p: med[p]["tokens_per_s"]) if peers else None
    out += ["", "| leantune row | peer row | comparison | tokens/s × peer | peak RSS × peer |", "|---|---|---|---:|---:|"]
    seen = set()
    for ours, peer, what in PAIRS:
        peer = best if peer == "best" else peer
        if ours in med and peer in med and (ours, peer) not in seen:  # packing vs the strongest may be flatten
            seen.add((ours, peer))
            out.append(f"| {ours} | {peer} | {what} | {med[ours]['tokens_per_s'] / med[peer]['tokens_per_s']:.2f} | "
                       f"{med[ours]['train_peak_mb'] / med[peer]['train_peak_mb']:.2f} |")
    return "\n".join(out)


def read_rows(path: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        rows.setdefault(r["workload"], []).append(r)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=[*LM_BATCH, "minilm"], default="smollm2",
                        help="workload (default smollm2; gemma3 needs the [multilingual] extra)")
    parser.add_argument("--rows", help="comma-separated runs (default: all the workload's comparison rows; "
                        f"also {', '.join(LM_EXTRA)})")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of the SmolLM2 runs (1 is warm-up)")
    parser.add_argument("--cls-steps", type=int, default=20, help="optimizer steps of the MiniLM runs")
    parser.add_argument("--repeat", type=int, default=3, help="alternate the runs this many times (medians)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    parser.add_argument("--out", type=Path, help="append every run's result to this JSON-lines file")
    parser.add_argument("--table", type=Path, help="only print the tables of a JSON-lines file of results")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="smollm2", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.workload, args)
        return
    if args.table:
        for workload, rows in read_rows(args.table).items():
            print(table(f"{workload}: {rows[0].get('settings', '')}", rows))
        return
    runs = args.rows.split(",") if args.rows else (LM_RUNS if args.only in LM_BATCH else CLS_RUNS)
    steps = args.steps if args.only in LM_BATCH else args.cls_steps
    settings = f"{steps} steps (1 warm-up), {args.threads} threads, CPU fp32, {time.strftime('%Y-%m-%d')}"
    flags = ["--steps", str(args.steps), "--cls-steps", str(args.cls_steps), "--threads", str(args.threads),
             "--workload", args.only]
    rows = []
    for i in range(args.repeat):
        print(f"{args.only}: repeat {i + 1} of {args.repeat}: {', '.join(runs)}", file=sys.stderr, flush=True)
        for row in run_children(__file__, runs, flags):
            rows.append({**row, "workload": args.only, "settings": settings})
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    print(f"python benchmarks/speed.py {' '.join(sys.argv[1:])}".strip())
    print(table(f"{args.only}: {settings}", rows))


if __name__ == "__main__":
    main()

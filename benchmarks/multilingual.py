"""Chinese with the multilingual Gemma 3 270M: leantune against HF peft + transformers Trainer, same data and budget.

    nice -n 19 python benchmarks/multilingual.py --out runs/multilingual [--runs cls-gemma-lora,...] [sizes]
    python benchmarks/multilingual.py --tiny --out /tmp/multi-tiny     # dry run: tiny random models and data
    python benchmarks/multilingual.py --collect --out runs/multilingual   # one table from runs made in pieces

Three parts, each run in its own process (own peak RSS), pinned to ``--threads``:
- ChnSentiCorp sentiment (test accuracy): Gemma 3 LoRA and head-only (last real token), MiniLM LoRA for contrast;
- IWSLT 2017 TED en->zh and zh->en (chrF, BLEU; sacrebleu's zh tokenizer for Chinese targets): Gemma 3 LoRA, with
  the zero-shot score of the same prompt taken before training;
- CMRC 2018 generative QA (exact match and F1 over characters, as the official evaluation): Gemma 3 LoRA, with the
  zero-shot score before training.
Every leantune run has a peer run ``...-peft``: peft (LoRA, or the base frozen for head-only) trained by the
transformers Trainer on leantune's own tokenised examples (same prompts, masking, truncation), with the same steps,
batch, learning rate and schedule, max_length and seed, length-grouped batches (``train_sampling_strategy``) and no
KV cache, and scored by the same evaluation code. Subsets are the first lines / questions of each file; the sizes
are flags. Results go to ``--out`` (results.jsonl, one log per run, the run folders, table.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, peft_trainer_run, report, run_children, set_offline, trainer_arguments  # noqa: E402

LORA_CLS = {"r": 8, "alpha": 16, "dropout": 0.05}
LORA_GEN = {"r": 16, "alpha": 32, "dropout": 0.05}
LR = {"cls-gemma-lora": 5e-4, "cls-gemma-head": 5e-3, "cls-minilm-lora": 1e-3, "mt-en-zh": 5e-4, "mt-zh-en": 5e-4,
      "qa": 3e-4}
RUNS = [name + suffix for name in LR for suffix in ("", "-peft")]
GROUP_BY_LENGTH = {"train_sampling_strategy": "group_by_length"}  # transformers 5's name for group_by_length=True


# ------------------------------------------------------------------------------------------ subsets of the data


def first_lines(path: Path, n: int, header: bool = False) -> str:
    """The first ``n`` lines of ``path`` (after its header line, kept) in a temporary file of the same name."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = Path(tempfile.mkdtemp()) / path.name
    out.write_text("\n".join(lines[: n + header]) + "\n", encoding="utf-8")
    return str(out)


def first_questions(path: Path, n: int) -> str:
    """A SQuAD file holding the first ``n`` questions of ``path`` (paragraphs cut where the count is reached)."""
    data, left = [], n
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        paragraphs = []
        for p in article["paragraphs"]:
            if left > 0:
                paragraphs.append({**p, "qas": p["qas"][:left]})
                left -= len(paragraphs[-1]["qas"])
        if paragraphs:
            data.append({**article, "paragraphs": paragraphs})
    out = Path(tempfile.mkdtemp()) / path.name
    out.write_text(json.dumps({"version": "v1.0", "data": data}, ensure_ascii=False), encoding="utf-8")
    return str(out)


# ------------------------------------------------------------------------------------------ run configs


def train_section(a: argparse.Namespace, steps: int, lr: float, max_length: int, batch: int) -> dict[str, Any]:
    return {"max_steps": steps, "batch_size": batch, "lr": lr, "max_length": max_length, "seed": 0,
            "num_threads": a.threads, "save_every": None, "log_every": 10}


def cls_config(run: str, a: argparse.Namespace) -> dict[str, Any]:
    data = Path(a.data) / "chnsenticorp"
    gemma = "gemma" in run
    return {
        "model": a.gemma if gemma else a.minilm, "task": "classification",
        "task_args": {"pooling": "last"} if gemma else {},
        "method": "head" if "head" in run else "lora", "method_args": {} if "head" in run else LORA_CLS,
        "data": {"train": first_lines(data / "train.tsv", a.cls_train, header=True),
                 "eval": first_lines(data / "test.tsv", a.cls_test, header=True)},
        "train": {**train_section(a, a.cls_steps, LR[run], a.max_length, a.batch_size), "eval_before": False},
    }


def mt_config(run: str, a: argparse.Namespace) -> dict[str, Any]:
    data = Path(a.data) / "en_zh"
    src, tgt = run.split("-")[1:3]
    return {
        "model": a.gemma, "task": "translation", "method": "lora", "method_args": LORA_GEN,
        "task_args": {"source_lang": src, "target_lang": tgt,
                      "train_target": first_lines(data / f"train.{tgt}", a.mt_train),
                      "eval_target": first_lines(data / f"test.{tgt}", a.mt_test),
                      "eval_max_examples": a.mt_test, "max_new_tokens": a.mt_new_tokens},
        "data": {"train": first_lines(data / f"train.{src}", a.mt_train),
                 "eval": first_lines(data / f"test.{src}", a.mt_test)},
        "train": train_section(a, a.mt_steps, LR[run], a.max_length, a.batch_size),
    }


def qa_config(run: str, a: argparse.Namespace) -> dict[str, Any]:
    data = Path(a.data) / "cmrc2018"
    return {
        "model": a.gemma, "task": "instruction", "method": "lora", "method_args": LORA_GEN,
        "task_args": {"language": "zh", "eval_max_examples": a.qa_test, "max_new_tokens": a.qa_new_tokens},
        "data": {"train": first_questions(data / "train.json", a.qa_train),
                 "eval": first_questions(data / "dev.json", a.qa_test), "format": "squad"},
        "train": train_section(a, a.qa_steps, LR[run], a.qa_max_length, a.qa_batch_size),
    }


def config(run: str, a: argparse.Namespace) -> dict[str, Any]:
    """The leantune run config of ``run`` (its ``-peft`` peer is trained on the same prepared examples)."""
    base = run.removesuffix("-peft")
    make = cls_config if base.startswith("cls") else mt_config if base.startswith("mt") else qa_config
    return {**make(base, a), "output_dir": str(Path(a.out) / "runs" / run)}


# ------------------------------------------------------------------------------------------ one run (a child)


def run_leantune(cfg: Any) -> dict[str, Any]:
    from leantune.train.loop import fine_tune

    result = fine_tune(cfg, overwrite=True, quiet=True)
    zero_shot = {} if cfg.task == "classification" else {"zero_shot": result.before}
    return {"metrics": result.after, **zero_shot, "trainable": result.trainable, "total": result.total,
            "seconds": result.train_seconds, "data": result.data_report}


def peft_classifier(task: Any, model: Any, train_f: list[dict], lora: bool, lr: float,
                    a: argparse.Namespace) -> tuple[Any, float]:
    """peft LoRA (or, for head-only, the base frozen and the head trained) + Trainer on leantune's features."""
    import datasets
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer

    from leantune.models.targets import arch_targets

    head = "score" if hasattr(model, "score") else "classifier"
    model.config.use_cache = False
    if lora:
        targets = list(arch_targets(model).lora)
        model = get_peft_model(model, LoraConfig(r=LORA_CLS["r"], lora_alpha=LORA_CLS["alpha"],
                                                 lora_dropout=LORA_CLS["dropout"], target_modules=targets,
                                                 modules_to_save=[head]))
    else:
        model.requires_grad_(False)
        getattr(model, head).requires_grad_(True)
    ds = datasets.Dataset.from_list([{k: v for k, v in f.items() if k != "targets"} | {"labels": f["targets"]}
                                     for f in train_f])
    trainer = Trainer(model=model, args=trainer_arguments(a.batch_size, lr, a.cls_steps, **GROUP_BY_LENGTH),
                      train_dataset=ds, data_collator=DataCollatorWithPadding(task.tokenizer),
                      compute_loss_func=lambda out, labels, num_items_in_batch=None: F.cross_entropy(
                          out.logits.float(), labels))
    start = time.perf_counter()
    trainer.train()
    return model, time.perf_counter() - start


def run_peft(cfg: Any, run: str, a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from leantune.models.loading import load_tokenizer
    from leantune.models.registry import resolve_model
    from leantune.models.targets import arch_targets
    from leantune.tasks import make_task

    path = resolve_model(cfg.model)
    task = make_task(cfg, load_tokenizer(path), path)
    train_f, eval_f = task.prepare()
    model = task.build_model(path)
    lr = LR[run.removesuffix("-peft")]
    if cfg.task == "classification":
        model, seconds = peft_classifier(task, model, train_f, cfg.method == "lora", lr, a)
    else:
        lora = {**LORA_GEN, "target_modules": list(arch_targets(model).lora)}
        model, seconds, _ = peft_trainer_run(task, model, train_f, lora, lr, cfg.train.batch_size,
                                             cfg.train.max_steps, a.threads, **GROUP_BY_LENGTH)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    metrics = task.evaluate(model, eval_f, torch.device("cpu"))
    return {"metrics": metrics, "trainable": trainable, "total": total, "seconds": seconds, "data": task.report}


def child(run: str, a: argparse.Namespace) -> None:
    set_offline()
    import torch

    from leantune.config import validate_config

    torch.set_num_threads(a.threads)
    start = time.perf_counter()
    cfg = validate_config(config(run, a))
    result = run_peft(cfg, run, a) if run.endswith("-peft") else run_leantune(cfg)
    report({**result, "wall_seconds": time.perf_counter() - start})


# ------------------------------------------------------------------------------------------ the table


def sizes(a: argparse.Namespace) -> str:
    return (f"ChnSentiCorp: first {a.cls_train} train rows, {a.cls_steps} steps x batch {a.batch_size}, "
            f"first {a.cls_test} test rows. en_zh: first {a.mt_train} train pairs, {a.mt_steps} steps x batch "
            f"{a.batch_size}, first {a.mt_test} test lines, greedy, max_new_tokens {a.mt_new_tokens}. max_length "
            f"{a.max_length}. CMRC 2018: first {a.qa_train} train questions, {a.qa_steps} steps x batch "
            f"{a.qa_batch_size}, max_length {a.qa_max_length}, first {a.qa_test} dev questions, greedy, "
            f"max_new_tokens {a.qa_new_tokens}. {a.threads} threads.")


def _who(run: str) -> str:
    return "peer: peft + Trainer" if run.endswith("-peft") else "leantune"


def _row(run: str, what: str, m: dict[str, Any], r: dict[str, Any] | None, keys: tuple[str, ...]) -> str:
    scores = " | ".join(f"{100 * m[k]:.2f}" if k == "accuracy" else f"{m[k]:.1f}" for k in keys)
    cost = (f"{r['trainable']:,} | {r['seconds']:.0f} | {r['wall_seconds']:.0f} | {r['peak_rss_mb']:.0f}"
            if r else "— | — | (in the run below) | —")
    return f"| {what} | {scores} | {cost} |"


def table(rows: list[dict[str, Any]], a: argparse.Namespace) -> str:
    """The markdown tables of the results (rows in RUNS order; zero-shot rows from the runs' before-training
    evaluation)."""
    by_run = {r["run"]: r for r in rows}
    cost = "trainable params | train time (s) | run wall time (s) | peak RSS (MB)"
    out = [sizes(a), ""]
    parts = [("cls", "ChnSentiCorp test accuracy (%)", ("accuracy",), "accuracy"),
             ("mt-en-zh", "en->zh (chrF, BLEU zh tokenizer)", ("chrf", "bleu"), "chrF | BLEU"),
             ("mt-zh-en", "zh->en (chrF, BLEU 13a)", ("chrf", "bleu"), "chrF | BLEU"),
             ("qa", "CMRC 2018 dev, character-level", ("exact_match", "f1"), "EM | F1")]
    for prefix, title, keys, head in parts:
        runs = [r for r in RUNS if r.startswith(prefix) and r in by_run]
        if not runs:
            continue
        out += [f"**{title}**", "", f"| run | {head} | {cost} |", "|---" * (len(keys) + 5) + "|"]
        for run in runs:
            r = by_run[run]
            if "zero_shot" in r:
                out.append(_row(run, "zero-shot (same prompt, before training)", r["zero_shot"], None, keys))
            what = f"{_who(run)} {run.removesuffix('-peft')} (lr {LR[run.removesuffix('-peft')]:g})"
            out.append(_row(run, what, r["metrics"], r, keys))
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ tiny dry run


def tiny_assets(folder: Path) -> tuple[str, str, str]:
    """(data folder, tiny Gemma 3 GGUF, tiny BERT folder) for the dry run: synthetic Chinese data in the real
    files' layout, and random models from the tests' factories."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_gemma3 import gemma3_lm, write_gemma3_gguf
    from tiny_models import save_tiny_bert

    data = folder / "data"
    for sub in ("chnsenticorp", "en_zh", "cmrc2018"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    reviews = [f"{i % 2}\t{'这个很好' if i % 2 else '这个不好'}{'，我' * (i % 3)}\"的\"" for i in range(40)]
    for name in ("train.tsv", "test.tsv"):
        (data / "chnsenticorp" / name).write_text("label\ttext\n" + "\n".join(reviews) + "\n", encoding="utf-8")
    for split in ("train", "test"):
        (data / "en_zh" / f"{split}.en").write_text("\n".join(["the is", "the", "is the"] * 8) + "\n")
        (data / "en_zh" / f"{split}.zh").write_text("\n".join(["你好 中文", "很好", "我的"] * 8) + "\n",
                                                    encoding="utf-8")
    context = "中文很好。你好是我的。"
    qas = [{"id": f"q{i}", "question": "什么很好？", "answers": [{"text": "中文", "answer_start": 0 if i else 3}]}
           for i in range(12)]  # one answer_start off, as in CMRC
    squad = {"version": "v1.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    for name in ("train.json", "dev.json"):
        (data / "cmrc2018" / name).write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    gguf = folder / "tiny-gemma3.gguf"
    write_gemma3_gguf(gemma3_lm(), gguf)
    return str(data), str(gguf), save_tiny_bert(folder / "bert", pooling="mean")


TINY_SIZES = ["--cls-train", "24", "--cls-test", "8", "--cls-steps", "2", "--batch-size", "4", "--max-length",
              "32", "--mt-train", "8", "--mt-test", "2", "--mt-steps", "2", "--mt-new-tokens", "4", "--qa-train",
              "4", "--qa-test", "2", "--qa-steps", "2", "--qa-batch-size", "2", "--qa-max-length", "96",
              "--qa-new-tokens", "4"]


# ------------------------------------------------------------------------------------------ main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder (outside the repository)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    p.add_argument("--tiny", action="store_true", help="dry run on tiny random models and synthetic Chinese data")
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--gemma", default="gemma3")
    p.add_argument("--minilm", default="minilm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8, help="ChnSentiCorp and translation")
    p.add_argument("--max-length", type=int, default=128, help="ChnSentiCorp and translation")
    p.add_argument("--cls-train", type=int, default=2000)
    p.add_argument("--cls-steps", type=int, default=30)
    p.add_argument("--cls-test", type=int, default=200)
    p.add_argument("--mt-train", type=int, default=800)
    p.add_argument("--mt-steps", type=int, default=30)
    p.add_argument("--mt-test", type=int, default=50)
    p.add_argument("--mt-new-tokens", type=int, default=40)
    p.add_argument("--qa-train", type=int, default=400)
    p.add_argument("--qa-steps", type=int, default=20)
    p.add_argument("--qa-batch-size", type=int, default=4)
    p.add_argument("--qa-max-length", type=int, default=384)
    p.add_argument("--qa-test", type=int, default=100)
    p.add_argument("--qa-new-tokens", type=int, default=16)
    p.add_argument("--collect", action="store_true", help="print the table of every results.jsonl under --out "
                   "(runs made in pieces, with the same sizes)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    if a.one:
        child(a.one, a)
        return
    out = Path(a.out)
    if a.collect:  # the table of runs made in pieces: every results.jsonl under --out
        rows = [json.loads(line) for f in sorted(out.rglob("results.jsonl")) for line in f.read_text().splitlines()]
        print(table(rows, a))
        return
    out.mkdir(parents=True, exist_ok=True)
    if a.tiny:
        os.environ["LEANTUNE_CACHE"] = str(out / "cache")  # the tiny GGUF is converted there, not in the user's cache
        data, gemma, minilm = tiny_assets(out / "tiny")
        a = parse([x for x in argv if x != "--tiny"] + [*TINY_SIZES, "--data", data, "--gemma", gemma,
                                                          "--minilm", minilm])
    elif not (Path(a.data) / "chnsenticorp" / "train.tsv").is_file():
        print(f"The Chinese data is not under {a.data}: skipping (see ../shared/data/README.md).")
        return
    unknown = set(a.runs.split(",")) - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown runs {sorted(unknown)}; choose from {', '.join(RUNS)}")
    settings = [x for key, value in vars(a).items() if key not in ("one", "tiny", "collect")
                for x in (f"--{key.replace('_', '-')}", str(value))]  # every size, so the children agree
    rows = run_children(__file__, a.runs.split(","), settings, out)
    text = table(rows, a)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    print("\n" + text)


if __name__ == "__main__":
    main()

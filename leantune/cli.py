"""The ``leantune`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from leantune.errors import LeantuneError
from leantune.methods.registry import METHOD_NAMES
from leantune.system.signals import TrainingInterrupted
from leantune.tasks import TASK_NAMES

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def cmd_methods(args: argparse.Namespace) -> None:
    """Print, for every method, how many parameters it trains on a model."""
    from leantune.method_table import method_table

    rows = method_table(args.model, args.task)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Trainable parameters on {args.model} ({args.task})")
    for col in ("method", "trainable", "total", "% trained", "note"):
        table.add_column(col, justify="right" if col in ("trainable", "total", "% trained") else "left")
    for r in rows:
        if r["trainable"] is None:
            table.add_row(r["method"], "-", "-", "-", r["note"])
        else:
            table.add_row(r["method"], f"{r['trainable']:,}", f"{r['total']:,}", f"{100 * r['trainable'] / r['total']:.3f}",
                          r["note"])
    Console().print(table)


def _print_metrics(title: str, metrics: dict) -> None:
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print(title + ": " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))


def argv_of(args: argparse.Namespace) -> list[str]:
    """The train command's arguments, to hand to torchrun."""
    out = ["--debug"] if args.debug else []
    out += ["train", args.config, *(x for kv in args.set for x in ("--set", kv))]
    return out + [flag for flag, on in (("--overwrite", args.overwrite), ("--quiet", args.quiet),
                                        ("--resume", args.resume)) if on]


def cmd_train(args: argparse.Namespace) -> int | None:
    """Fine-tune as a YAML config describes."""
    from leantune.config import load_config
    from leantune.train.loop import fine_tune

    cfg = load_config(args.config, args.set)  # a bad config fails here, before any process starts
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args.nproc, argv_of(args))
    if args.resume and args.overwrite:
        raise LeantuneError("--resume continues the run in output_dir and --overwrite deletes it: choose one.")
    result = fine_tune(cfg, overwrite=args.overwrite, quiet=args.quiet, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the first process reports
        return None
    if result.before:
        _print_metrics("before", result.before)
    _print_metrics("after ", result.after)
    skipped = result.data_report.get("bad_rows_skipped")
    if skipped:
        total = sum(v["rows"] for v in skipped.values())
        print(f"skipped {total} bad rows: " + "; ".join(f"{n['rows']} x {reason} (first: {n['first']})"
                                                       for reason, n in skipped.items()))
    print(f"run folder: {result.run_dir}  (adapter/, metrics.json, train_log.jsonl, loss.png)")


def cmd_compare(args: argparse.Namespace) -> int:
    """Train the config's task with several methods and write a comparison report."""
    from rich.console import Console
    from rich.table import Table

    from leantune.compare import run_compare
    from leantune.compare.report import headers, table_rows

    comparison = run_compare(args.config, args.methods, args.set, args.out, quiet=args.quiet)
    results, metric = comparison.results, comparison.metric
    cols = {k: v for k, v in headers(metric, any(r.gap_to_full is not None for r in results)).items()
            if k != "error"}
    table = Table(title=f"leantune compare ({metric}: {'higher' if comparison.higher_is_better else 'lower'} "
                        "is better)")
    for key, heading in cols.items():
        table.add_column(heading, justify="left" if key in ("method", "status") else "right")
    for row in table_rows(results, metric):
        table.add_row(*(row[k] for k in cols))
    Console().print(table)
    for r in results:
        if r.error:
            print(f"{r.method} failed: {r.error}")
    print(f"report: {comparison.out_dir / 'report.html'} (and report.md, results.csv; runs in "
          f"{comparison.out_dir / 'runs'})")
    return 1 if all(r.status == "failed" for r in results) else 0


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``leantune ARGV`` under ``torchrun --standalone --nproc_per_node nproc``; return its exit code."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "leantune", *argv]
    print("leantune: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


def cmd_estimate(args: argparse.Namespace) -> None:
    """Print parameters, trainable parameters and the predicted peak memory of a run, without training."""
    from leantune.config import load_config
    from leantune.train.estimate import estimate_run, format_estimate

    cfg = load_config(args.config, args.set)
    print(format_estimate(cfg, estimate_run(cfg)))


def _load_run(run_dir: str, adapter: str | None = None):
    """(config, task, model on the best device, device) of a finished run (with ``adapter`` instead of its own)."""
    from leantune.run.loader import load_run
    from leantune.system.device import pick_device

    cfg, task, model = load_run(run_dir, adapter)
    device = pick_device()
    return cfg, task, model.to(device), device


def cmd_eval(args: argparse.Namespace) -> None:
    """Evaluate a finished run on a labelled data file."""
    import json

    _, task, model, device = _load_run(args.run_dir, args.adapter)
    records, features = task.read_file(args.data, args.format, labelled=True, target=args.target)
    metrics = task.evaluate_file(model, records, features, device)
    print(json.dumps(metrics, indent=2))


def cmd_predict(args: argparse.Namespace) -> None:
    """Predict for every row of a file (labels with probabilities, answers, translations); write CSV or JSONL."""
    from pathlib import Path

    from leantune.data.writers import write_rows

    _, task, model, device = _load_run(args.run_dir)
    records, features = task.read_file(args.input, args.format, labelled=False, target=args.target)
    rows = task.predict(model, records, features, device)
    write_rows(Path(args.output), rows)
    print(f"wrote {len(rows)} predictions to {args.output}")


def cmd_generate(args: argparse.Namespace) -> None:
    """Print completions of prompts from the run's base model + adapter (or a base model alone)."""
    from pathlib import Path

    if args.prompt is None and args.prompts is None:
        raise LeantuneError("give --prompt TEXT or --prompts FILE (one prompt per line)")
    prompts = [args.prompt] if args.prompt is not None else [
        line for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    _, task, model, _ = _load_run(args.run_dir)
    if not task.generates:
        raise LeantuneError(f"{args.run_dir} is a {task.name} run; generate works for runs of tasks that write text "
                            "(instruction, translation).")
    outputs = task.generate(model, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p)
    for prompt, out in zip(prompts, outputs, strict=True):
        if len(prompts) > 1:
            print(f">>> {prompt}")
        print(out)
        if len(prompts) > 1:
            print()


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve run folders' adapters (and their bases) over an OpenAI-compatible HTTP API."""
    from leantune.serve.api import serve
    from leantune.serve.server import ADMIN_TOKEN_ENV, API_KEY_ENV, ServeOptions, parse_runs

    options = ServeOptions(
        host=args.host, port=args.port, max_batch=args.max_batch, max_queue=args.max_queue,
        max_adapters=args.max_adapters, max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens, api_key=args.api_key or os.environ.get(API_KEY_ENV),
        admin_token=args.admin_token or os.environ.get(ADMIN_TOKEN_ENV), adapter_root=args.adapter_root,
        limit_concurrency=args.limit_concurrency, shutdown_timeout=args.shutdown_timeout)
    serve(parse_runs(args.run_dirs, args.name), options)


def cmd_demo(args: argparse.Namespace) -> None:
    """Fine-tune the embedded MiniLM on the built-in sentiment sample and report before / after."""
    from leantune.demo import run_demo

    run_demo(method=args.method, output_dir=args.output_dir, quiet=args.quiet)


def cmd_export(args: argparse.Namespace) -> None:
    """Write a run's model or adapter for other tools: transformers (merged), vLLM, HF peft, plain LoRA."""
    from leantune.export import export_run

    print(export_run(args.run_dir, args.to, args.out, rank=args.rank, name=args.name, overwrite=args.overwrite))


def cmd_ui(args: argparse.Namespace) -> None:
    """Serve the dashboard over the run folders under ``--runs``."""
    from leantune.ui.server import serve_ui

    serve_ui(args.runs, args.host, args.port, args.allow, args.allow_host)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leantune", description="Parameter-efficient fine-tuning of language models.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune as a YAML config describes")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-4")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its newest checkpoint")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes on this machine (launches torchrun; distributed.strategy picks "
                        "ddp or fsdp)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train a config's task with several methods; report quality vs cost")
    p.add_argument("config")
    p.add_argument("--methods", default="lora,dora,ia3,bottleneck,bitfit,head,full",
                   help=f"comma-separated, from: {','.join(METHOD_NAMES)} (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. train.max_steps=200 or compare.lr.lora=2e-3")
    p.add_argument("--out", help="the comparison's folder (default: the config's output_dir + '-compare')")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("estimate", help="parameters and predicted peak memory of a config, before training")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("eval", help="evaluate a run on a labelled file")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--target", help="translation: the aligned reference file for --data")
    p.add_argument("--format", default="auto", help="file format (or record style); auto: from the file")
    p.add_argument("--adapter", help="evaluate this adapter folder on the run's base instead of the run's own "
                   "(e.g. one written by `leantune export --to lora`)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict for every row of a file (labels, answers, translations)")
    p.add_argument("run_dir")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="a .csv, .tsv or .jsonl file")
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--format", default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("generate", help="complete prompts with a run's model + adapter")
    p.add_argument("run_dir")
    p.add_argument("--prompt", help="one prompt (the chat template is applied)")
    p.add_argument("--prompts", help="a file with one prompt per line")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="write a run's model or adapter for transformers, vLLM or HF peft")
    p.add_argument("run_dir", help="a finished run folder (or, for vllm/peft, an adapter folder)")
    p.add_argument("--to", required=True, choices=["merged", "vllm", "peft", "lora"],
                   help="merged: a plain transformers model folder; vllm: a LoRA folder vLLM loads; peft: the "
                        "adapter for HF peft; lora: converted to plain LoRA of --rank")
    p.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    p.add_argument("--rank", type=int, help="--to lora: the rank of the converted LoRA")
    p.add_argument("--name", help="--to vllm: the adapter's name in vLLM (default: the run folder's name)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve runs' adapters over an OpenAI-compatible HTTP API")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders, served under their folder names")
    p.add_argument("--name", action="append", default=[], metavar="NAME=RUN_DIR", help="serve RUN_DIR as NAME")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together per base")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests per base before 429")
    p.add_argument("--max-adapters", type=int, default=None, help="adapters kept in memory (LRU; others reload)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--max-prompt-tokens", type=int, default=4096)
    p.add_argument("--max-tokens", type=int, default=1024, help="the largest max_tokens a request may ask for")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (or LEANTUNE_API_KEY)")
    p.add_argument("--admin-token", default=None,
                   help="turn on POST/DELETE /v1/adapters for this bearer token (or LEANTUNE_ADMIN_TOKEN)")
    p.add_argument("--adapter-root", default=None, help="the folder admin-loaded adapters must lie in")
    p.add_argument("--limit-concurrency", type=int, default=1024,
                   help="open connections at most; beyond it new ones get 503 at once (default: %(default)s)")
    p.add_argument("--shutdown-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="on Ctrl-C / SIGTERM, how long in-flight requests may take to finish (default: %(default)s)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="fine-tune MiniLM on the built-in sentiment sample (about 20 s on 2 idle CPU cores)")
    p.add_argument("--method", default="lora", choices=METHOD_NAMES)
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ui", help="a web dashboard over the run folders: watch, launch, stop, compare, try")
    p.add_argument("--runs", default="runs", help="the folder holding the run folders (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--allow", action="append", default=[], metavar="PATH",
                   help="also launch config files under PATH (default: only under the runs folder's parent and "
                        "the bundled examples)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to NAME (any port) or NAME:PORT, e.g. this machine's name "
                        "when bound to 0.0.0.0 (default: only the address it binds)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("methods", help="trainable parameters of every method on a model")
    p.add_argument("--model", default="minilm", help="alias (minilm, smollm2), local folder or hub id")
    p.add_argument("--task", default="classification", choices=TASK_NAMES, help="the task whose model (head) to use")
    p.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        code = func(args)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except LeantuneError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``leantune`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from leantune.errors import LeantuneError

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def cmd_methods(args: argparse.Namespace) -> None:
    """Print, for every method, how many parameters it trains on a model."""
    from leantune.methods.catalog import method_table

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leantune", description="Parameter-efficient fine-tuning of language models.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="trainable parameters of every method on a model")
    p.add_argument("--model", default="minilm", help="alias (minilm, smollm2), local folder or hub id")
    p.add_argument("--task", default="classification", choices=["classification", "causal_lm"])
    p.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except LeantuneError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

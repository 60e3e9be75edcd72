"""``leantune compare``: the config's task trained once per method (same data, seed, steps, batch size), each into
its own run folder, then one report of quality against trainable parameters, memory and time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from leantune.compare.plan import parse_methods, plan_methods
from leantune.compare.report import COSTS, plot_losses, plot_pareto, write_csv, write_html, write_markdown
from leantune.compare.results import MethodResult, add_gaps
from leantune.compare.runner import run_method
from leantune.config import read_raw_config, validate_config
from leantune.tasks import task_class


@dataclass
class Comparison:
    """What a compare produced: every method's row and the report files."""

    results: list[MethodResult]
    metric: str
    higher_is_better: bool
    out_dir: Path
    files: list[Path]


def run_compare(config: str | Path, methods: str, overrides: list[str] | None = None, out_dir: str | Path | None = None,
                quiet: bool = False) -> Comparison:
    """Train the config's task with every method of ``methods`` ("lora,head,full") into ``out_dir``/runs/<method>
    (a finished run is kept, an interrupted one resumed), then write results.csv, report.md and report.html."""
    raw = read_raw_config(config, overrides)
    cfg = validate_config(raw, str(config))
    names = parse_methods(methods)
    out = Path(out_dir) if out_dir is not None else Path(f"{cfg.output_dir}-compare")
    out.mkdir(parents=True, exist_ok=True)
    task = task_class(cfg.task)
    metric = cfg.train.metric or task.default_metric
    higher = task.higher_is_better(metric)
    results = [run_method(plan, out, metric, quiet) for plan in plan_methods(raw, names, out, str(config))]
    add_gaps(results)
    return Comparison(results, metric, higher, out, write_report(results, cfg.model, cfg.task, metric, higher, out))


def write_report(results: list[MethodResult], model: str, task: str, metric: str, higher_is_better: bool,
                 out: Path) -> list[Path]:
    """The plots (PNG), results.csv, report.md and the self-contained report.html in ``out``; returns their paths."""
    plots = {f"{metric} vs {COSTS[name][0]}": plot_pareto(results, name, metric, higher_is_better,
                                                         out / f"pareto-{name}.png") for name in COSTS}
    plots["loss curves"] = plot_losses(results, out / "loss-curves.png")
    plots = {name: path for name, path in plots.items() if path is not None}
    title = f"leantune compare: {task} on {model}"
    notes = [f"{metric}: {'higher' if higher_is_better else 'lower'} is better; the same data, seed, steps and batch "
             "size for every method, each with its own learning rate (lr column).",
             "train s: the optimizer steps with their periodic evaluations; tokens/s: real (non-padding) tokens per "
             "second; peak memory: the CUDA peak on a GPU, else the peak resident memory of the run's process.",
             "Pareto frontier: the methods no other method beats on both quality and that cost (ringed)."]
    write_csv(results, metric, out / "results.csv")
    write_markdown(results, title, metric, plots, out / "report.md")
    write_html(results, title, notes, metric, plots, out / "report.html")
    return [out / "report.html", out / "report.md", out / "results.csv", *plots.values()]


__all__ = ["Comparison", "MethodResult", "run_compare", "write_report"]

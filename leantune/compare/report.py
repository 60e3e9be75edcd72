"""The comparison's report: ``results.csv``, ``report.md`` and a self-contained ``report.html`` (plots embedded as
PNG), with quality-vs-cost plots that draw the Pareto frontier, and every method's loss curves on one chart."""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Sequence
from pathlib import Path

from leantune.compare.results import MethodResult

COSTS = {
    "params": ("trainable parameters", True),
    "memory": ("peak memory (MB)", False),
    "time": ("train time (s)", False),
}
"""Plot name -> (x axis label, log scale)."""


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points (cost, quality) that no other point beats: none as cheap or cheaper with quality as
    good or better and one of them strictly so. Lower cost is better; quality as ``higher_is_better`` says. In
    order of cost."""
    def better(a: float, b: float) -> bool:
        return a > b if higher_is_better else a < b

    front = []
    for i, (cost, quality) in enumerate(points):
        dominated = any(
            (c <= cost and not better(quality, q) and (c < cost or better(q, quality)))
            for j, (c, q) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1] if higher_is_better else points[i][1]))


def cost_of(result: MethodResult, plot: str) -> float | None:
    return {"params": result.trainable, "memory": result.peak_memory_mb, "time": result.train_seconds}[plot]


def plot_pareto(results: list[MethodResult], plot: str, metric: str, higher_is_better: bool, path: Path) -> Path | None:
    """Quality against one cost, a point per finished method with its name, the Pareto frontier drawn through its
    points (ringed)."""
    shown = [r for r in results if r.ok and cost_of(r, plot)]
    if not shown:
        return None
    plt = _pyplot()
    label, log_x = COSTS[plot]
    points = [(float(cost_of(r, plot)), r.metric) for r in shown]
    front = pareto_front(points, higher_is_better)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(*zip(*points, strict=True), s=36, color="tab:blue", zorder=3)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-", color="tab:orange", lw=1.5,
            zorder=2, label="Pareto frontier")
    ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=130, facecolors="none",
               edgecolors="tab:orange", lw=1.8, zorder=4)
    for r, (x, y) in zip(shown, points, strict=True):
        ax.annotate(r.method, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=10)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(label + (" (log scale)" if log_x else ""))
    ax.set_ylabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_title(f"{metric} vs {label.split(' (')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    ax.margins(x=0.12, y=0.12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_losses(results: list[MethodResult], path: Path) -> Path | None:
    """Train loss (solid) and eval loss (dashed, dots) of every method against steps, a colour per method."""
    shown = [r for r in results if r.ok and (r.curves.get("train_loss") or r.curves.get("eval_loss"))]
    if not shown:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colors = plt.get_cmap("tab10")
    for k, r in enumerate(shown):
        color = colors(k % 10)
        if r.curves.get("train_loss"):
            ax.plot(*zip(*r.curves["train_loss"], strict=True), "-", color=color, lw=1.4, label=f"{r.method} train")
        if r.curves.get("eval_loss"):
            ax.plot(*zip(*r.curves["eval_loss"], strict=True), "--o", color=color, lw=1.2, ms=3,
                    label=f"{r.method} eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("train (solid) and eval (dashed) loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------------------- tables
COLUMNS = ("method", "status", "lr", "metric", "gap_to_full", "trainable", "trainable_pct", "adapter_mb",
           "train_s", "tokens_per_s", "peak_memory_mb", "error")


def table_rows(results: list[MethodResult], metric: str, digits: int = 4) -> list[dict[str, str]]:
    """Every method's row as text, one key per column of :data:`COLUMNS` (empty where there is no value)."""
    def num(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    return [{
        "method": r.method, "status": r.status, "lr": num(r.lr, "g"), "metric": num(r.metric, f".{digits}f"),
        "gap_to_full": num(r.gap_to_full, f"+.{digits}f"), "trainable": num(r.trainable, ","),
        "trainable_pct": num(r.trainable_pct, ".3f"),
        "adapter_mb": num(None if r.adapter_bytes is None else r.adapter_bytes / 2**20, ".3f"),
        "train_s": num(r.train_seconds, ".1f"), "tokens_per_s": num(r.tokens_per_s, ".0f"),
        "peak_memory_mb": num(r.peak_memory_mb, ".0f"), "error": r.error or "",
    } for r in results]


def headers(metric: str, with_gap: bool) -> dict[str, str]:
    """Column -> its heading (the gap column only when full fine-tuning is in the comparison)."""
    names = {"method": "method", "status": "status", "lr": "lr", "metric": metric,
             "gap_to_full": f"{metric} - full", "trainable": "trainable params", "trainable_pct": "% trained",
             "adapter_mb": "adapter MB", "train_s": "train s", "tokens_per_s": "tokens/s",
             "peak_memory_mb": "peak memory MB", "error": "error"}
    return {k: v for k, v in names.items() if with_gap or k != "gap_to_full"}


def write_csv(results: list[MethodResult], metric: str, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "run_dir"])
        writer.writeheader()
        for r, row in zip(results, table_rows(results, metric, digits=6), strict=True):
            writer.writerow({**row, "metric": "" if r.metric is None else r.metric, "run_dir": str(r.run_dir)})


def write_markdown(results: list[MethodResult], title: str, metric: str, plots: dict[str, Path], path: Path) -> None:
    cols = headers(metric, any(r.gap_to_full is not None for r in results))
    lines = [f"# {title}", "", "| " + " | ".join(cols.values()) + " |",
             "|" + "|".join("---" if k in ("method", "status", "error") else "---:" for k in cols) + "|"]
    for row in table_rows(results, metric):
        lines.append("| " + " | ".join(row[k].replace("|", "\\|") for k in cols) + " |")
    lines += ["", *(f"![{name}]({p.name})" for name, p in plots.items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_html(results: list[MethodResult], title: str, notes: list[str], metric: str, plots: dict[str, Path],
               path: Path) -> None:
    """One file that opens from disk: the table, the notes, and every plot embedded as a base64 PNG."""
    cols = headers(metric, any(r.gap_to_full is not None for r in results))
    head = "".join(f"<th>{html.escape(v)}</th>" for v in cols.values())
    body = "".join(
        f"<tr class='{'failed' if r.status == 'failed' else ''}'>"
        + "".join(f"<td>{html.escape(row[k])}</td>" for k in cols) + "</tr>"
        for r, row in zip(results, table_rows(results, metric), strict=True))
    images = "".join(
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'></figure>" for name, p in plots.items())
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child, td:nth-child(2), td:last-child {{ text-align: left; }}
tr.failed td {{ background: #fdecea; }}
figure {{ display: inline-block; margin: 1rem 1rem 0 0; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<ul>{note_html}</ul>
{images}
</body></html>
""", encoding="utf-8")

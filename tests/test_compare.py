"""leantune compare: one run per method into its own folder, a failing method as a row, the report files, the
Pareto frontier, and a killed compare resumed (finished methods kept, the interrupted one continued)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from tiny_models import save_tiny_bert, sentiment_rows, write_csv

from leantune.compare import run_compare, write_report
from leantune.compare.plan import parse_methods, plan_methods
from leantune.compare.report import pareto_front
from leantune.compare.results import MethodResult, add_gaps
from leantune.compare.runner import _train_process
from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.methods.registry import METHOD_NAMES, REGISTRY
from leantune.run.layout import ERROR_FILE
from leantune.system.signals import TrainingInterrupted
from leantune.train.loop import fine_tune


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    model = save_tiny_bert(tmp / "m", pooling="mean")
    data = write_csv(tmp / "train.csv", sentiment_rows(160))
    return model, data, tmp


def _config(setup, name: str, **train) -> Path:
    model, data, tmp = setup
    raw = {
        "model": model, "method": "lora", "method_args": {"r": 2, "alpha": 4},
        "data": {"train": data, "eval_fraction": 0.25},
        "train": {"max_steps": 6, "batch_size": 16, "max_length": 24, "log_every": 2, "eval_every": 3,
                  "save_every": 2, "num_threads": 1, "seed": 1, **train},
        "output_dir": str(tmp / name),
        "compare": {"lr": {"head": 2e-2}, "method_args": {"prefix": {"num_virtual_tokens": 2}}},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_pareto_front_higher_and_lower_is_better():
    points = [(10, 0.80), (100, 0.90), (50, 0.70), (1000, 0.91), (200, 0.85), (10, 0.80)]
    assert pareto_front(points, higher_is_better=True) == [0, 5, 1, 3]
    losses = [(10, 0.5), (100, 0.3), (50, 0.6), (1000, 0.31), (5, 0.9)]
    assert pareto_front(losses, higher_is_better=False) == [4, 0, 1]
    assert pareto_front([(1, 1.0)]) == [0]


def test_every_method_has_a_default_lr_and_methods_are_checked():
    assert all(REGISTRY[name].lr > 0 for name in METHOD_NAMES)
    assert parse_methods("lora, head") == ["lora", "head"]
    with pytest.raises(LeantuneError, match="unknown method 'loar'"):
        parse_methods("lora,loar")
    with pytest.raises(LeantuneError, match="more than once"):
        parse_methods("lora,lora")


def test_plan_uses_compare_section_own_settings_and_defaults(setup, tmp_path):
    raw = yaml.safe_load(_config(setup, "plan", lr=4e-3).read_text())
    plans = {p.method: p for p in plan_methods(raw, ["lora", "dora", "head", "full", "prefix"], tmp_path, "c.yaml")}
    assert plans["lora"].lr == 4e-3 and plans["head"].lr == 2e-2 and plans["full"].lr == REGISTRY["full"].lr
    assert plans["dora"].cfg.method_args.r == 2 and plans["dora"].cfg.method_args.use_dora
    assert plans["prefix"].cfg.method_args.num_virtual_tokens == 2
    for p in plans.values():
        assert p.cfg.train.max_steps == 6 and p.cfg.train.seed == 1 and p.cfg.compare is None
        assert p.cfg.output_dir == str(tmp_path / "runs" / p.method)


def test_compare_section_is_validated(setup):
    raw = yaml.safe_load(_config(setup, "bad").read_text())
    with pytest.raises(LeantuneError, match="compare.lr.*unknown method 'loar'"):
        validate_config({**raw, "compare": {"lr": {"loar": 1e-3}}})
    with pytest.raises(LeantuneError, match="method_args of lora: rr"):
        validate_config({**raw, "compare": {"method_args": {"lora": {"rr": 8}}}})
    with pytest.raises(LeantuneError, match="> 0"):
        validate_config({**raw, "compare": {"lr": {"head": 0}}})


def _rows(out: Path) -> dict[str, dict]:
    with (out / "results.csv").open() as f:
        return {r["method"]: r for r in csv.DictReader(f)}


def _files(folder: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_compare_trains_keeps_resumes_and_reports_a_failing_method(setup):
    """A compare killed after head finished and while bitfit trained (its step-4 checkpoint written, no metrics
    yet), run again with lora and prefix added: head is kept untouched, bitfit resumed from step 4, lora trained,
    prefix (no prefix tuning on an encoder) a row with its error; the report shows all four."""
    _, _, tmp = setup
    out = tmp / "cmp"
    config = _config(setup, "cmp")
    plans = {p.method: p for p in plan_methods(yaml.safe_load(config.read_text()), ["head", "bitfit"], out, "c")}
    fine_tune(plans["head"].cfg, quiet=True)
    bitfit = plans["bitfit"].cfg.model_copy(deep=True)
    bitfit.train.max_steps = 4
    fine_tune(bitfit, quiet=True)
    bitfit_dir, head_dir = out / "runs" / "bitfit", out / "runs" / "head"
    (bitfit_dir / "metrics.json").unlink()
    shutil.rmtree(bitfit_dir / "adapter")
    head_files = _files(head_dir)

    comparison = run_compare(config, "lora,head,bitfit,prefix", out_dir=out, quiet=True)
    by = {r.method: r for r in comparison.results}
    assert [r.method for r in comparison.results] == ["lora", "head", "bitfit", "prefix"]
    assert (by["lora"].status, by["head"].status, by["bitfit"].status) == ("finished", "skipped", "resumed")
    assert _files(head_dir) == head_files
    log = [json.loads(line) for line in (bitfit_dir / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("resumed_from") == "step-0000004" for r in log) and max(r["step"] for r in log) == 6

    assert by["prefix"].status == "failed" and "Prefix tuning needs a decoder-only model" in by["prefix"].error
    assert (out / "runs" / "prefix" / ERROR_FILE).read_text().startswith(by["prefix"].error)
    for method in ("lora", "head", "bitfit"):
        run, r = out / "runs" / method, by[method]
        assert (run / "metrics.json").is_file() and (run / "adapter").is_dir() and not (run / ERROR_FILE).exists()
        assert r.metric == json.loads((run / "metrics.json").read_text())["accuracy"]
        assert 0 < r.trainable < r.total and r.adapter_bytes > 0 and r.train_seconds > 0 and r.tokens_per_s > 0
        assert r.peak_memory_mb > 0 and len(r.curves["train_loss"]) == 3 and r.curves["eval_loss"]
    assert by["head"].trainable < by["lora"].trainable

    rows = _rows(out)
    assert list(rows) == ["lora", "head", "bitfit", "prefix"] and rows["prefix"]["error"] == by["prefix"].error
    assert float(rows["lora"]["metric"]) == by["lora"].metric and "gap_to_full" in rows["lora"]
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for method in by:
        assert f"| {method} |" in md and f"<td>{method}</td>" in page
    assert page.count("data:image/png;base64,") == 4 and "http" not in page.split("<body>")[1]
    for name in ("pareto-params", "pareto-memory", "pareto-time", "loss-curves"):
        assert (out / f"{name}.png").stat().st_size > 1000


def test_gap_to_full_and_report_without_runs(tmp_path):
    """The gap column is each method's metric minus full fine-tuning's; failed rows alone still make a report."""
    results = [MethodResult("full", tmp_path, metric=0.9), MethodResult("lora", tmp_path, metric=0.85),
               MethodResult("prefix", tmp_path, status="failed", error="no")]
    add_gaps(results)
    assert results[0].gap_to_full == 0 and results[1].gap_to_full == pytest.approx(-0.05)
    assert results[2].gap_to_full is None
    files = write_report(results[2:], "m", "classification", "accuracy", True, tmp_path)
    assert [f.name for f in files] == ["report.html", "report.md", "results.csv"]
    assert "<td>no</td>" in (tmp_path / "report.html").read_text()


def test_cli_prints_the_table_and_fails_when_every_method_failed(setup, tmp_path, capsys):
    """A method the config cannot take is a row (no run started); the command exits 1 when no method finished."""
    from leantune.cli import main

    code = main(["compare", str(_config(setup, "cli")), "--methods", "full", "--set", "quantize=int8",
                 "--out", str(tmp_path / "out"), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 1 and "full failed: " in printed and "full fine-tuning needs" in printed
    assert "full fine-tuning needs" in (tmp_path / "out" / "runs" / "full" / ERROR_FILE).read_text()
    assert (tmp_path / "out" / "report.html").is_file()


def test_a_stopped_run_or_a_sigterm_stops_the_compare(tmp_path):
    """A run stopped by someone else (exit 130, checkpoint written) and SIGTERM to the compare both stop the compare
    with the resume hint; neither is recorded as a failed method."""
    plan = SimpleNamespace(method="lora", cfg=None)
    stopped = [sys.executable, "-c", "import sys; sys.exit(130)"]
    with pytest.raises(TrainingInterrupted, match="run of lora was stopped"):
        _train_process(stopped, tmp_path / "a.log", plan, quiet=True)

    # a child that handles SIGINT as leantune train does (a plain python child would inherit an ignored SIGINT)
    sleeper = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "time.sleep(60)"]
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    with pytest.raises(TrainingInterrupted, match="compare interrupted while training lora"):
        _train_process(sleeper, tmp_path / "b.log", plan, quiet=True)
    assert time.monotonic() - started < 30
    assert signal.getsignal(signal.SIGTERM) == before

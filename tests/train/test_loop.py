"""The training loop on a tiny BERT: loss goes down, accumulation is exact, eval/best/early-stop, run folder."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import save_tiny_bert, sentiment_rows, write_csv

import leantune as lt
from leantune.config import validate_config
from leantune.data.batching import pad_batch
from leantune.models.loading import load_tokenizer
from leantune.tasks import make_task
from leantune.train.loop import _improved, accumulate_gradients, fine_tune
from leantune.train.optim import build_optimizer, lr_factor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "m", pooling="mean")


def _cfg(tmp_path, model_dir, **train):
    data = write_csv(tmp_path / "train.csv", sentiment_rows(400))
    return validate_config({
        "model": model_dir, "method": "lora", "method_args": {"r": 4, "alpha": 8},
        "data": {"train": data, "eval_fraction": 0.25},
        "train": {"epochs": 10, "batch_size": 16, "lr": 1e-2, "max_length": 32, "log_every": 10, **train},
        "output_dir": str(tmp_path / "run"),
    })


def test_fine_tune_learns_and_writes_the_run_folder(tmp_path, model_dir):
    result = fine_tune(_cfg(tmp_path, model_dir, eval_every=40), quiet=True)
    run = result.run_dir
    assert result.after["accuracy"] > result.before["accuracy"]
    assert result.after["accuracy"] >= 0.8
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml", "labels.json",
                 "metrics.json", "train_log.jsonl", "loss.png", "checkpoint-best/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(r) for r in log if "loss" in r)
    assert sum(1 for r in log if "eval" in r) >= 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] == result.after["accuracy"] and "confusion_matrix" in metrics
    assert json.loads((run / "labels.json").read_text()) == ["neg", "pos"]
    with pytest.raises(lt.LeantuneError, match="already holds a run"):
        fine_tune(_cfg(tmp_path, model_dir), quiet=True)


def test_max_steps_zero_evaluates_the_untouched_model(tmp_path, model_dir):
    result = fine_tune(_cfg(tmp_path, model_dir, max_steps=0), quiet=True)
    assert result.steps == 0 and result.after == result.before
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_early_stopping(tmp_path, model_dir):
    cfg = _cfg(tmp_path, model_dir, eval_every=1, early_stopping_patience=1, lr=1e-9, metric="eval_loss")
    result = fine_tune(cfg, quiet=True)
    assert result.steps < 20


def test_accumulation_of_4x8_equals_one_batch_of_32(tmp_path, model_dir):
    cfg = _cfg(tmp_path, model_dir)
    tok = load_tokenizer(model_dir)
    task = make_task(cfg, tok, model_dir)
    features, _ = task.prepare()
    features = features[:32]
    assert len({len(f["input_ids"]) for f in features}) > 1  # different lengths: padding differs between the two
    model = task.build_model(model_dir)
    lt.attach(model, lt.LoraConfig(r=4, init="random"))
    model.eval()  # no dropout: the two computations must agree exactly
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(batches):
        for p in params:
            p.grad = None
        loss, _ = accumulate_gradients(model, task, batches, torch.device("cpu"), None)
        return loss, [p.grad.clone() for p in params]

    one_loss, one = grads([pad_batch(features, tok.pad_token_id)])
    four_loss, four = grads([pad_batch(features[i:i + 8], tok.pad_token_id) for i in range(0, 32, 8)])
    assert four_loss == pytest.approx(one_loss, rel=1e-5)
    for a, b in zip(one, four, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_optimizer_groups_and_schedule():
    from tiny_models import bert

    model = lt.attach(bert(), lt.BitFitConfig())
    opt = build_optimizer(model, 1e-3, 0.1)
    decay = [g for g in opt.param_groups if g["weight_decay"] > 0]
    assert all(p.dim() >= 2 for g in decay for p in g["params"])
    assert all(p.dim() == 1 for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"])
    assert lr_factor(0, 100, 10, "linear") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant") == 1.0


def test_best_metric_direction():
    assert _improved(0.9, 0.8, higher_is_better=True) and not _improved(0.7, 0.8, higher_is_better=True)
    assert _improved(0.3, 0.5, higher_is_better=False) and not _improved(0.6, 0.5, higher_is_better=False)
    assert _improved(0.8, None, higher_is_better=True) and not _improved(None, 0.5, higher_is_better=True)
    assert _improved(0.8, 0.8, higher_is_better=True, strict=False) and not _improved(0.8, 0.8, higher_is_better=True)


def test_multi_label_classification(tmp_path, model_dir):
    rows = []
    for i, r in enumerate(sentiment_rows(300)):
        topic = "food" if "food" in r["text"] else "other"
        rows.append({"text": r["text"], "tags": [r["label"], topic] if i % 3 else [r["label"]]})
    path = tmp_path / "ml.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = validate_config({
        "model": model_dir, "method": "lora", "method_args": {"r": 4},
        "task_args": {"label_column": "tags", "multi_label": True},
        "data": {"train": str(path)},
        "train": {"epochs": 3, "batch_size": 16, "lr": 1e-2, "max_length": 32},
        "output_dir": str(tmp_path / "run"),
    })
    result = fine_tune(cfg, quiet=True)
    assert json.loads((result.run_dir / "labels.json").read_text()) == ["food", "neg", "other", "pos"]
    assert {"accuracy", "micro_f1", "macro_f1"} <= set(result.after)
    assert result.after["micro_f1"] > result.before["micro_f1"]

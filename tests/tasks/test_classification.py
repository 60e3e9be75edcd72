"""Classification: metrics against hand-computed values, pooling, heads, dropout, label handling."""

import json

import pytest
import torch
from tiny_models import llama_cls, save_tiny_bert, save_tiny_llama, sentiment_rows, write_csv

import leantune as lt
from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.models.loading import load_tokenizer
from leantune.tasks import make_task
from leantune.tasks.classification import (
    SentenceClassifier,
    classification_metrics,
    multilabel_metrics,
    sentence_transformers_pooling,
)


def _task(folder, labels=("neg", "pos"), data=None, **task_args):
    cfg = validate_config({"model": folder, "task_args": task_args, "data": data or {"train": "unused.csv"}})
    task = make_task(cfg, load_tokenizer(folder), folder)
    task.labels = list(labels) if labels else None
    return task


def test_metrics_by_hand():
    # true: a a a b b c ; pred: a a b b c c
    m = classification_metrics([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    pa, ra = 1.0, 2 / 3
    pb, rb = 0.5, 0.5
    pc, rc = 0.5, 1.0
    f1 = [2 * p * r / (p + r) for p, r in [(pa, ra), (pb, rb), (pc, rc)]]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["per_class"]["a"]["recall"] == pytest.approx(ra)


def test_multilabel_metrics_by_hand():
    pred = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    true = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    m = multilabel_metrics(pred, true, ["x", "y", "z"])
    assert m["accuracy"] == 0.5
    assert m["micro_f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))


def test_sentence_transformers_folders_are_mean_pooled(tmp_path):
    st = save_tiny_bert(tmp_path / "st", pooling="mean")
    plain = save_tiny_bert(tmp_path / "plain")
    assert sentence_transformers_pooling(st) == "mean" and sentence_transformers_pooling(plain) is None
    model = _task(st, labels=("a", "b", "c")).build_model(st)
    assert isinstance(model, SentenceClassifier) and model.pooling == "mean"
    assert not hasattr(model.bert, "pooler") or model.bert.pooler is None
    # mean over real tokens only: padding does not change the pooled vector
    ids = torch.tensor([[2, 10, 11, 3]])
    padded = torch.tensor([[2, 10, 11, 3, 0, 0]])
    model.eval()
    a = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    b = model(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the head is found by name and trained in full
    lt.attach(model, lt.HeadOnlyConfig())
    assert lt.trainable_parameters(model)[0] == 32 * 3 + 3
    from transformers import BertForSequenceClassification

    assert isinstance(_task(plain).build_model(plain), BertForSequenceClassification)


def test_pooling_last_on_an_encoder_reads_the_last_real_token(tmp_path):
    folder = save_tiny_bert(tmp_path / "plain")  # not a sentence-transformers folder: no [CLS] pooler either way
    model = _task(folder, pooling="last").build_model(folder).eval()
    assert isinstance(model, SentenceClassifier) and model.pooling == "last"
    ids = torch.tensor([[2, 10, 11, 3, 0, 0], [2, 12, 13, 14, 15, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = model.classifier(torch.stack([hidden[0, 3], hidden[1, 5]]))
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected)
    alone = model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4]).logits
    torch.testing.assert_close(alone, expected[:1], atol=1e-5, rtol=1e-5)  # padding changes nothing


def test_pooling_last_on_an_encoder_decoder_is_refused(tmp_path):
    from tiny_models import save_tiny_t5

    folder = save_tiny_t5(tmp_path / "t5", ["the dog", "the cat"])
    with pytest.raises(LeantuneError, match="pooling: last.*encoder-decoder"):
        _task(folder, pooling="last").build_model(folder)


def test_head_dropout_comes_from_the_model_config_unless_the_task_says(tmp_path):
    folder = save_tiny_bert(tmp_path / "st", pooling="mean")
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert _task(folder).build_model(folder).dropout.p == config["hidden_dropout_prob"] == 0.1
    (tmp_path / "st" / "config.json").write_text(json.dumps({**config, "classifier_dropout": 0.3}))
    assert _task(folder).build_model(folder).dropout.p == 0.3  # classifier_dropout first, as BERT's own head
    assert _task(folder, classifier_dropout=0.0).build_model(folder).dropout.p == 0.0
    plain = save_tiny_bert(tmp_path / "plain")
    assert _task(plain, classifier_dropout=0.2).build_model(plain).dropout.p == 0.2  # BERT's own head too


def test_a_decoder_only_classifier_with_pooling_last_trains(tmp_path):
    from transformers import LlamaForSequenceClassification

    from leantune.train.loop import fine_tune

    rows = sentiment_rows(240)
    folder = save_tiny_llama(tmp_path / "llama", [r["text"] for r in rows], chat_template=False)
    cfg = validate_config({
        "model": folder, "task": "classification", "task_args": {"pooling": "last"}, "method": "lora",
        "method_args": {"r": 4, "alpha": 8}, "data": {"train": write_csv(tmp_path / "t.csv", rows),
                                                     "eval_fraction": 0.25},
        "train": {"epochs": 6, "batch_size": 16, "lr": 1e-2, "max_length": 32, "seed": 0},
        "output_dir": str(tmp_path / "run")})
    assert isinstance(_task(folder, pooling="last").build_model(folder), LlamaForSequenceClassification)
    result = fine_tune(cfg, quiet=True)
    assert result.after["accuracy"] >= 0.8 > result.before["accuracy"]


def test_decoder_classifier_uses_the_last_real_token():
    model = llama_cls().eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    short = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=short).logits, atol=1e-5, rtol=1e-5)


def test_labels_split_and_unseen_labels(tmp_path):
    folder = save_tiny_bert(tmp_path / "bert")
    train = write_csv(tmp_path / "train.csv", sentiment_rows(40))
    task = _task(folder, labels=None, data={"train": train, "eval_fraction": 0.25})
    train_f, eval_f = task.prepare()
    assert task.labels == ["neg", "pos"] and len(eval_f) == 10 and task.report["eval_split_from_train"] == 10
    assert task.report["train"] + task.report["eval"] == 40 == len(train_f) + len(eval_f)
    dev = write_csv(tmp_path / "dev.csv", [{"text": "the food was good", "label": "neutral"}])
    with pytest.raises(LeantuneError, match=r"dev.csv:2: label\(s\) \['neutral'\] never appear"):
        _task(folder, labels=None, data={"train": train, "eval": dev}).prepare()
    with pytest.raises(LeantuneError, match=r"missing column\(s\) \['sentence'\]"):
        _task(folder, labels=None, data={"train": train}, text_column="sentence").prepare()

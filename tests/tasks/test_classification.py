"""Classification: metrics against hand-computed values, pooling, heads, label handling."""

import pytest
import torch
from tiny_models import llama_cls, save_tiny_bert, sentiment_rows, write_csv

import leantune as lt
from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.tasks.classification import (
    SentenceClassifier,
    build_classifier,
    classification_metrics,
    load_classification_data,
    multilabel_metrics,
    sentence_transformers_pooling,
)


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
    model = build_classifier(st, 3, "auto", 0)
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

    assert isinstance(build_classifier(plain, 3, "auto", 0), BertForSequenceClassification)


def test_decoder_classifier_uses_the_last_real_token():
    model = llama_cls().eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    short = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=short).logits, atol=1e-5, rtol=1e-5)


def test_labels_split_and_unseen_labels(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(40))
    cfg = validate_config({"model": "m", "data": {"train": train, "eval_fraction": 0.25}})
    data = load_classification_data(cfg)
    assert data.labels == ["neg", "pos"] and len(data.eval) == 10
    assert data.report["train"] + data.report["eval"] == 40
    dev = write_csv(tmp_path / "dev.csv", [{"text": "the food was good", "label": "neutral"}])
    cfg = validate_config({"model": "m", "data": {"train": train, "eval": dev}})
    with pytest.raises(LeantuneError, match=r"dev.csv:2: label\(s\) \['neutral'\] never appear"):
        load_classification_data(cfg)
    cfg = validate_config({"model": "m", "data": {"train": train, "text_column": "sentence"}})
    with pytest.raises(LeantuneError, match=r"missing column\(s\) \['sentence'\]"):
        load_classification_data(cfg)

"""Text classification: single- and multi-label, encoders and decoder-only LMs.

A sentence-transformers checkpoint (it has ``1_Pooling/config.json``, as MiniLM does) is pooled the way it was
trained (mean pooling) into a fresh linear head; other models use transformers' own sequence-classification head
(the [CLS] pooler for BERT, the last real token for Llama/GPT-2). The head is named ``classifier`` (or ``score``)
so adapters keep peft's key layout and the head is trained in full through ``modules_to_save``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from leantune.config import RunConfig
from leantune.data.bad_rows import BadRows
from leantune.data.batching import iterate_batches, length_grouped_batches
from leantune.data.cleaning import clean_records
from leantune.data.labels import build_label_map, stratified_split
from leantune.data.readers import read_records
from leantune.errors import LeantuneError
from leantune.models.loading import pretrained

# --------------------------------------------------------------------------------------------- model


def sentence_transformers_pooling(path: str) -> str | None:
    """'mean' or 'cls' when ``path`` is a sentence-transformers folder, else None."""
    cfg_file = Path(path) / "1_Pooling" / "config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


class SentenceClassifier(nn.Module):
    """An encoder, a pooling of its last hidden states, and a linear head named ``classifier``."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str, dropout: float = 0.1) -> None:
        super().__init__()
        self.prefix = getattr(backbone, "base_model_prefix", "") or "encoder"
        setattr(self, self.prefix, backbone)  # same module path as BertForSequenceClassification ("bert.")
        self.config = backbone.config
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        hidden = backbone.config.hidden_size
        self.classifier = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, **_: Any):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**kwargs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask if attention_mask is not None else hidden.new_ones(hidden.shape[:2])
            mask = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))


def build_classifier(path: str, num_labels: int, pooling: str, pad_token_id: int | None,
                     cfg: RunConfig | None = None) -> nn.Module:
    """The classification model for ``path`` with ``num_labels`` outputs (see module docstring for pooling)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    if pooling == "auto":
        pooling = sentence_transformers_pooling(path) or "model"
    config = AutoConfig.from_pretrained(path, trust_remote_code=bool(cfg and cfg.trust_remote_code))
    if pooling in ("mean", "cls") and not getattr(config, "is_encoder_decoder", False):
        try:
            backbone = pretrained(AutoModel, path, cfg, add_pooling_layer=False)
        except TypeError:
            backbone = pretrained(AutoModel, path, cfg)
        return SentenceClassifier(backbone, num_labels, pooling)
    return pretrained(AutoModelForSequenceClassification, path, cfg, num_labels=num_labels, pad_token_id=pad_token_id)


# --------------------------------------------------------------------------------------------- data


@dataclass
class ClassificationData:
    labels: list[str]
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)


def _label_values(rec: dict[str, Any], cfg: RunConfig) -> list[str]:
    col = cfg.data.label_column
    if col not in rec or rec[col] is None or rec[col] == "":
        raise LeantuneError(f"{rec['_source']}: no value in label column '{col}'.")
    value = rec[col]
    if cfg.data.multi_label:
        items = value if isinstance(value, list) else str(value).split(cfg.data.label_separator)
        return [str(v).strip() for v in items if str(v).strip()]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return [str(value)]


def _has_label(rec: dict[str, Any], cfg: RunConfig, bad: BadRows) -> bool:
    try:
        return bool(_label_values(rec, cfg)) or cfg.data.multi_label
    except LeantuneError:
        bad(rec["_source"], f"no value in label column '{cfg.data.label_column}'")
        return False


def _check_columns(records: list[dict[str, Any]], cfg: RunConfig, path: str, need_label: bool = True) -> None:
    if not records:
        raise LeantuneError(f"{path}: no examples.")
    first = records[0]
    wanted = [cfg.data.text_column] + ([cfg.data.text_pair_column] if cfg.data.text_pair_column else [])
    wanted += [cfg.data.label_column] if need_label else []
    missing = [c for c in wanted if c not in first]
    if missing:
        have = [k for k in first if k != "_source"]
        raise LeantuneError(f"{first['_source']}: missing column(s) {missing}; columns are {have}. "
                            "Set data.text_column / data.label_column.")


def _read(cfg: RunConfig, path: str, split: str, need_label: bool = True, dedup: bool = True,
          fmt: str | None = None, bad: BadRows | None = None) -> tuple[list[dict], Counter]:
    """Read and clean one file. Duplicates are dropped from training data only: eval sets stay as given.
    Malformed rows and rows without a label go to ``bad`` (an error, or a counted skip)."""
    bad = bad or BadRows(cfg.data.on_bad_rows)
    records = read_records(path, fmt or cfg.data.format, split, cfg.data.label_column, cfg.data.text_column, bad)
    _check_columns(records, cfg, path, need_label)
    if need_label:
        records = [r for r in records if _has_label(r, cfg, bad)]
    fields = [cfg.data.text_column] + ([cfg.data.text_pair_column] if cfg.data.text_pair_column else [])
    clean = cfg.data.clean if dedup else cfg.data.clean.model_copy(update={"drop_duplicates": False})
    kept, report = clean_records(records, clean, fields)
    if not kept:
        raise LeantuneError(f"{path}: no examples left after cleaning ({dict(report)}).")
    return kept, report


def load_classification_data(cfg: RunConfig, labels: list[str] | None = None,
                             bad: BadRows | None = None) -> ClassificationData:
    """Read, clean, split and label the train/eval data; every drop is counted in ``report``."""
    bad = bad or BadRows(cfg.data.on_bad_rows)
    train, train_report = _read(cfg, cfg.data.train, cfg.data.train_split, bad=bad)
    report: dict[str, Any] = {"train_read": len(train) + sum(train_report.values()), "train_dropped": dict(train_report)}
    if cfg.data.eval or cfg.data.eval_split:
        eval_path = cfg.data.eval or cfg.data.train
        evals, eval_report = _read(cfg, eval_path, cfg.data.eval_split or "validation", dedup=False, bad=bad)
        report.update(eval_read=len(evals) + sum(eval_report.values()), eval_dropped=dict(eval_report))
    else:
        strat = [tuple(_label_values(r, cfg)) for r in train]
        tr_idx, ev_idx = stratified_split(strat, cfg.data.eval_fraction, cfg.train.seed)
        train, evals = [train[i] for i in tr_idx], [train[i] for i in ev_idx]
        report["eval_split_from_train"] = len(evals)
    train_labels = [v for r in train for v in _label_values(r, cfg)]
    labels = labels or build_label_map(train_labels)
    if len(labels) < 2 and not cfg.data.multi_label:
        raise LeantuneError(f"{cfg.data.train}: only one label ({labels}); classification needs at least two.")
    evals = check_known_labels(evals, cfg, labels, bad)
    if not evals:
        raise LeantuneError(f"{cfg.data.eval or cfg.data.train}: no eval examples left ({bad.report()}).")
    if bad.total:
        report["bad_rows_skipped"] = bad.report()
        print(f"leantune: skipped {bad.total} bad rows: {bad.report()}", file=sys.stderr, flush=True)
    report.update(train=len(train), eval=len(evals), labels=len(labels))
    return ClassificationData(labels=labels, train=train, eval=evals, report=report)


def check_known_labels(records: list[dict[str, Any]], cfg: RunConfig, labels: list[str],
                       bad: BadRows | None = None) -> list[dict[str, Any]]:
    """The records whose labels the model was trained on; the others are an error naming the first one (or, with
    ``on_bad_rows: skip``, dropped and counted)."""
    bad = bad or BadRows(cfg.data.on_bad_rows)
    known = set(labels)
    kept = []
    for r in records:
        unseen = sorted(v for v in _label_values(r, cfg) if v not in known)
        if unseen:
            bad(r["_source"], f"label(s) {unseen} never appear in the training data (training labels: {labels})")
        else:
            kept.append(r)
    return kept


def encode(records: list[dict[str, Any]], tokenizer: Any, cfg: RunConfig, labels: list[str] | None,
           report: Counter | None = None) -> list[dict[str, Any]]:
    """Token ids (truncated to max_length, counted) and the target of each record."""
    texts = [str(r[cfg.data.text_column]) for r in records]
    pairs = [str(r.get(cfg.data.text_pair_column) or "") for r in records] if cfg.data.text_pair_column else None
    max_len = cfg.train.max_length
    enc = tokenizer(texts, pairs, truncation=False)
    long = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_len]
    if long:  # only the few long texts are tokenised again, truncated
        cut = tokenizer([texts[i] for i in long], [pairs[i] for i in long] if pairs else None, truncation=True,
                        max_length=max_len)
        for j, i in enumerate(long):
            for key in enc:
                enc[key][i] = cut[key][j]
        if report is not None:
            report["truncated to max_length"] += len(long)
    index = {lab: i for i, lab in enumerate(labels or [])}
    features = []
    for i, rec in enumerate(records):
        f = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
        if "token_type_ids" in enc:
            f["token_type_ids"] = enc["token_type_ids"][i]
        if labels is not None and cfg.data.label_column in rec:
            values = _label_values(rec, cfg)
            if cfg.data.multi_label:
                f["targets"] = [1.0 if lab in values else 0.0 for lab in labels]
            else:
                f["targets"] = index[values[0]]
        features.append(f)
    return features


# --------------------------------------------------------------------------------------------- loss, eval


def loss_sum(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Summed (not averaged) loss over the batch: the loop divides by the examples of the whole step."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(-1).sum()
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@torch.no_grad()
def predict_logits(model: nn.Module, features: list[dict[str, Any]], batch_size: int, pad_id: int,
                   device: torch.device) -> torch.Tensor:
    """Logits for every feature, in the features' order (batches grouped by length for speed)."""
    was_training = model.training
    model.eval()
    lengths = [len(f["input_ids"]) for f in features]
    batches = length_grouped_batches(lengths, batch_size, seed=0, shuffle=False)
    out: list[torch.Tensor | None] = [None] * len(features)
    for idx, batch in zip(batches, iterate_batches(features, batches, pad_id), strict=True):
        logits = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits.float().cpu()
        for j, i in enumerate(idx):
            out[i] = logits[j]
    model.train(was_training)
    return torch.stack(out)  # type: ignore[arg-type]


def classification_metrics(pred: list[int], true: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows: true, columns: predicted)."""
    k = len(labels)
    cm = [[0] * k for _ in range(k)]
    for p, t in zip(pred, true, strict=True):
        cm[t][p] += 1
    per_class, f1s = {}, []
    for c, name in enumerate(labels):
        tp = cm[c][c]
        fp = sum(cm[r][c] for r in range(k)) - tp
        fn = sum(cm[c]) - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": sum(cm[c])}
        f1s.append(f1)
    accuracy = sum(cm[i][i] for i in range(k)) / max(1, len(true))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / k, "per_class": per_class, "confusion_matrix": cm}


def multilabel_metrics(pred: torch.Tensor, true: torch.Tensor, labels: list[str]) -> dict[str, Any]:
    """Subset accuracy, micro/macro F1 and per-class scores for multi-hot predictions."""
    tp = (pred * true).sum(0)
    fp = (pred * (1 - true)).sum(0)
    fn = ((1 - pred) * true).sum(0)
    per_class, f1s = {}, []
    for c, name in enumerate(labels):
        p = float(tp[c] / (tp[c] + fp[c])) if tp[c] + fp[c] else 0.0
        r = float(tp[c] / (tp[c] + fn[c])) if tp[c] + fn[c] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[name] = {"precision": p, "recall": r, "f1": f1, "support": int(true[:, c].sum())}
        f1s.append(f1)
    micro_p = float(tp.sum() / (tp.sum() + fp.sum())) if tp.sum() + fp.sum() else 0.0
    micro_r = float(tp.sum() / (tp.sum() + fn.sum())) if tp.sum() + fn.sum() else 0.0
    micro_f1 = 2 * micro_p * micro_r / (micro_p + micro_r) if micro_p + micro_r else 0.0
    accuracy = float((pred == true).all(1).float().mean())
    return {"accuracy": accuracy, "micro_f1": micro_f1, "macro_f1": sum(f1s) / len(labels), "per_class": per_class}


def evaluate(model: nn.Module, features: list[dict[str, Any]], labels: list[str], multi_label: bool,
             batch_size: int, pad_id: int, device: torch.device) -> dict[str, Any]:
    """Metrics and mean loss of the model on labelled features."""
    logits = predict_logits(model, features, batch_size, pad_id, device)
    targets = torch.tensor([f["targets"] for f in features])
    loss = float(loss_sum(logits, targets, multi_label)) / len(features)
    if multi_label:
        metrics = multilabel_metrics((logits > 0).float(), targets.float(), labels)
    else:
        metrics = classification_metrics(logits.argmax(-1).tolist(), targets.tolist(), labels)
    return {"eval_loss": loss, **metrics}


def prediction_rows(logits: torch.Tensor, labels: list[str], multi_label: bool) -> list[dict[str, Any]]:
    """One row per example: predicted label(s) and the probability of every label."""
    probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)
    rows = []
    for p in probs:
        if multi_label:
            label = ",".join(labels[i] for i in range(len(labels)) if p[i] > 0.5)
        else:
            label = labels[int(p.argmax())]
        rows.append({"label": label, **{f"p_{lab}": round(float(v), 6) for lab, v in zip(labels, p, strict=True)}})
    return rows


# --------------------------------------------------------------------------------------------- the task


class ClassificationTask:
    """What the training loop needs from the classification task."""

    name = "classification"
    default_metric = "accuracy"

    def __init__(self, cfg: RunConfig, tokenizer: Any, labels: list[str] | None = None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.labels = labels
        self.report: dict[str, Any] = {}

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def prepare(self) -> tuple[list[dict], list[dict]]:
        """Read, clean, label and tokenise the train and eval data."""
        data = load_classification_data(self.cfg, self.labels)
        self.labels = data.labels
        truncated: Counter = Counter()
        train = encode(data.train, self.tokenizer, self.cfg, self.labels, truncated)
        evals = encode(data.eval, self.tokenizer, self.cfg, self.labels, truncated)
        self.report = {**data.report, "truncated": truncated.get("truncated to max_length", 0)}
        return train, evals

    def build_model(self, path: str) -> nn.Module:
        assert self.labels is not None
        return build_classifier(path, len(self.labels), self.cfg.pooling, self.pad_id, self.cfg)

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(summed loss, number of examples) of one micro-batch."""
        logits = model(**model_inputs(batch)).logits
        return loss_sum(logits, batch["targets"], self.cfg.data.multi_label), len(batch["targets"])

    @staticmethod
    def batch_count(batch: dict[str, torch.Tensor]) -> int:
        return len(batch["targets"])

    def evaluate(self, model: nn.Module, features: list[dict], device: torch.device) -> dict[str, Any]:
        assert self.labels is not None
        bs = self.cfg.train.eval_batch_size or self.cfg.train.batch_size * 2
        return evaluate(model, features, self.labels, self.cfg.data.multi_label, bs, self.pad_id, device)

    def save_artifacts(self, run_dir: Path) -> None:
        (run_dir / "labels.json").write_text(json.dumps(self.labels, indent=2) + "\n")

    @staticmethod
    def headline(metrics: dict[str, Any]) -> dict[str, float]:
        return {k: metrics[k] for k in ("accuracy", "macro_f1", "micro_f1", "eval_loss") if k in metrics}

    def read_file(self, path: str, fmt: str = "auto", need_labels: bool = True, target: str | None = None) -> tuple[list[dict], list[dict]]:
        """(records, features) of a data file for eval / predict, read and cleaned like the training data."""
        kept, dropped = _read(self.cfg, path, self.cfg.data.eval_split or "train", need_labels, dedup=False, fmt=fmt)
        if dropped:
            print(f"leantune: {path}: skipped {dict(dropped)}", file=sys.stderr, flush=True)
        if need_labels:
            kept = check_known_labels(kept, self.cfg, self.labels or [])
        return kept, encode(kept, self.tokenizer, self.cfg, self.labels if need_labels else None)

    def evaluate_file(self, model: nn.Module, records: list[dict], features: list[dict],
                      device: torch.device) -> dict[str, Any]:
        return self.evaluate(model, features, device)

    def finish(self, run_dir: Path) -> None:
        """Nothing to add to the run folder after training."""

    def predict(self, model: nn.Module, records: list[dict], features: list[dict],
                device: torch.device) -> list[dict[str, Any]]:
        assert self.labels is not None
        bs = self.cfg.train.eval_batch_size or self.cfg.train.batch_size * 2
        logits = predict_logits(model, features, bs, self.pad_id, device)
        return prediction_rows(logits, self.labels, self.cfg.data.multi_label)

"""Text classification (``task: classification``): single- and multi-label, encoders and decoder-only LMs.

Pooling (``task_args.pooling``): a sentence-transformers checkpoint (it has ``1_Pooling/config.json``, as MiniLM
does) is pooled the way it was trained (mean pooling) into a fresh linear head; ``mean``, ``cls`` and ``last`` (the
last real token) pool an encoder's last hidden states the same way. Other models use transformers' own
sequence-classification head: the [CLS] pooler for BERT, the last real token for Llama/GPT-2 (``last`` on a
decoder-only model is that head). The head is named ``classifier`` (or ``score``) so adapters keep peft's key
layout and the head is trained in full through ``modules_to_save``. Its dropout is the model config's
``classifier_dropout``, else ``hidden_dropout_prob``, as in ``BertForSequenceClassification``, unless
``task_args.classifier_dropout`` says otherwise.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from leantune.data.bad_rows import BadRows
from leantune.data.cleaning import clean_records
from leantune.data.labels import build_label_map
from leantune.data.readers import read_records
from leantune.errors import LeantuneError
from leantune.run.layout import LABELS_FILE
from leantune.tasks.base import MODEL_INPUTS, Task, TaskArgs

if TYPE_CHECKING:
    from leantune.config import RunConfig


class ClassificationArgs(TaskArgs):
    """``task_args`` of ``task: classification``."""

    text_column: str = "text"
    text_pair_column: str | None = None
    """A second text per example (sentence pairs: NLI, paraphrase)."""
    label_column: str = "label"
    multi_label: bool = False
    label_separator: str = ","
    """For multi-label data stored as text: labels joined by this separator."""
    pooling: Literal["auto", "mean", "cls", "last"] = "auto"
    """auto: what a sentence-transformers checkpoint was trained with, else the model's own head (the [CLS] pooler
    of BERT, the last real token of a decoder-only LM); last: the last real token."""
    classifier_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Dropout before the head; default: the model config's classifier_dropout, else its hidden_dropout_prob."""


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


def is_decoder_only(model_config: Any) -> bool:
    """Whether the architecture is a causal LM without a masked-LM form (Llama, GPT-2, Qwen ...)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = model_config.model_type
    return (kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and not model_config.is_encoder_decoder)


def head_dropout(model_config: Any, override: float | None) -> float:
    """The head's dropout as ``BertForSequenceClassification`` takes it: ``classifier_dropout``, else
    ``hidden_dropout_prob`` (0 for a model with neither); ``override`` wins."""
    if override is not None:
        return override
    for key in ("classifier_dropout", "hidden_dropout_prob"):
        value = getattr(model_config, key, None)
        if value is not None:
            return float(value)
    return 0.0


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per sequence: the first token (``cls``), the last real token (``last``; either padding side), or
    the mean over real tokens (``mean``)."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = mask if mask is not None else hidden.new_ones(hidden.shape[:2])
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * mask.long()).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class SentenceClassifier(nn.Module):
    """A backbone, a pooling of its last hidden states, dropout and a linear head named ``classifier``."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str, dropout: float) -> None:
        super().__init__()
        self.prefix = backbone.base_model_prefix or "encoder"
        setattr(self, self.prefix, backbone)  # same module path as BertForSequenceClassification ("bert.")
        self.config = backbone.config
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, **_: Any):
        from transformers.modeling_outputs import SequenceClassifierOutput

        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**kwargs).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))


def resolve_pooling(path: str, pooling: str, model_config: Any) -> str:
    """The pooling a classifier on ``path`` gets: mean / cls / last (a :class:`SentenceClassifier`) or ``model``
    (transformers' own head)."""
    if pooling == "auto":
        return sentence_transformers_pooling(path) or "model"
    if model_config.is_encoder_decoder:
        raise LeantuneError(f"task_args.pooling: {pooling} pools an encoder's or a decoder's hidden states; "
                            f"{path} is an encoder-decoder: use pooling: auto (its own head).")
    if pooling == "last" and is_decoder_only(model_config):
        return "model"  # transformers' head of a decoder-only LM reads the last real token
    return pooling


# --------------------------------------------------------------------------------------------- loss, metrics


def loss_sum(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Summed (not averaged) loss over the batch: the loop divides by the examples of the whole step."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").mean(-1).sum()
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


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


class ClassificationTask(Task):
    """Labels for texts (or text pairs): one of several, or any number of them (``multi_label``)."""

    name = "classification"
    Args = ClassificationArgs
    serves = "classify"
    metrics = {"accuracy": True, "macro_f1": True, "micro_f1": True, "eval_loss": False}
    default_metric = "accuracy"
    args: ClassificationArgs

    def __init__(self, cfg: RunConfig, tokenizer: Any, model_config: Any) -> None:
        super().__init__(cfg, tokenizer, model_config)
        self.labels: list[str] | None = None
        """The label list (a label's id is its index): from the training data, or the run's labels.json."""

    # ---------------------------------------------------------------- data
    def label_values(self, rec: dict[str, Any]) -> list[str]:
        """The label(s) of a record, as strings (an error when the label column is empty)."""
        col = self.args.label_column
        if col not in rec or rec[col] is None or rec[col] == "":
            raise LeantuneError(f"{rec['_source']}: no value in label column '{col}'.")
        value = rec[col]
        if self.args.multi_label:
            items = value if isinstance(value, list) else str(value).split(self.args.label_separator)
            return [str(v).strip() for v in items if str(v).strip()]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return [str(value)]

    def _has_label(self, rec: dict[str, Any], bad: BadRows) -> bool:
        try:
            return bool(self.label_values(rec)) or self.args.multi_label
        except LeantuneError:
            bad(rec["_source"], f"no value in label column '{self.args.label_column}'")
            return False

    @property
    def text_columns(self) -> list[str]:
        return [self.args.text_column] + ([self.args.text_pair_column] if self.args.text_pair_column else [])

    def _check_columns(self, records: list[dict[str, Any]], path: str, need_label: bool) -> None:
        if not records:
            raise LeantuneError(f"{path}: no examples.")
        first = records[0]
        wanted = self.text_columns + ([self.args.label_column] if need_label else [])
        missing = [c for c in wanted if c not in first]
        if missing:
            have = [k for k in first if k != "_source"]
            raise LeantuneError(f"{first['_source']}: missing column(s) {missing}; columns are {have}. "
                                "Set task_args.text_column / task_args.label_column.")

    def read(self, path: str, split: str, bad: BadRows, need_label: bool = True, dedup: bool = True,
             fmt: str | None = None) -> tuple[list[dict], Counter]:
        """Read and clean one file. Duplicates are dropped from training data only: eval sets stay as given.
        Malformed rows and rows without a label go to ``bad`` (an error, or a counted skip)."""
        data = self.cfg.data
        records = read_records(path, fmt or data.format, split, self.args.label_column, self.args.text_column, bad)
        self._check_columns(records, path, need_label)
        if need_label:
            records = [r for r in records if self._has_label(r, bad)]
        clean = data.clean if dedup else data.clean.model_copy(update={"drop_duplicates": False})
        kept, dropped = clean_records(records, clean, self.text_columns)
        if not kept:
            raise LeantuneError(f"{path}: no examples left after cleaning ({dict(dropped)}).")
        return kept, dropped

    def _train_and_eval(self, bad: BadRows) -> tuple[list[dict], list[dict]]:
        """The cleaned train and eval records (eval: the eval file or split, else a stratified held-out part)."""
        data = self.cfg.data
        train, dropped = self.read(data.train, data.train_split, bad)
        self.report.update(train_read=len(train) + sum(dropped.values()), train_dropped=dict(dropped))
        if not (data.eval or data.eval_split):
            return self.hold_out(train, stratum=lambda r: tuple(self.label_values(r)))
        evals, dropped = self.read(data.eval or data.train, data.eval_split or "validation", bad, dedup=False)
        self.report.update(eval_read=len(evals) + sum(dropped.values()), eval_dropped=dict(dropped))
        return train, evals

    def known_labels(self, records: list[dict[str, Any]], bad: BadRows) -> list[dict[str, Any]]:
        """The records whose labels the model was trained on; the others are an error naming the first one (or,
        with ``on_bad_rows: skip``, dropped and counted)."""
        known = set(self.labels or [])
        kept = []
        for r in records:
            unseen = sorted(v for v in self.label_values(r) if v not in known)
            if unseen:
                bad(r["_source"], f"label(s) {unseen} never appear in the training data (training labels: "
                                  f"{self.labels})")
            else:
                kept.append(r)
        return kept

    def encode(self, records: list[dict[str, Any]], labelled: bool, truncated: Counter) -> list[dict[str, Any]]:
        """Token ids (truncated to max_length, counted) and, when ``labelled``, the target of each record."""
        texts = [str(r[self.args.text_column]) for r in records]
        pair_col = self.args.text_pair_column
        pairs = [str(r.get(pair_col) or "") for r in records] if pair_col else None
        max_len = self.cfg.train.max_length
        enc = self.tokenizer(texts, pairs, truncation=False)
        long = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_len]
        if long:  # only the few long texts are tokenised again, truncated
            cut = self.tokenizer([texts[i] for i in long], [pairs[i] for i in long] if pairs else None,
                                 truncation=True, max_length=max_len)
            for j, i in enumerate(long):
                for key in enc:
                    enc[key][i] = cut[key][j]
            truncated["truncated to max_length"] += len(long)
        index = {lab: i for i, lab in enumerate(self.labels or [])}
        features = []
        for i, rec in enumerate(records):
            f = {k: enc[k][i] for k in MODEL_INPUTS if k in enc}
            if labelled:
                values = self.label_values(rec)
                f["targets"] = ([1.0 if lab in values else 0.0 for lab in self.labels or []]
                                if self.args.multi_label else index[values[0]])
            features.append(f)
        return features

    def prepare(self) -> tuple[list[dict], list[dict]]:
        """Read, clean, label and tokenise the train and eval data; every drop is counted in ``report``."""
        bad = BadRows(self.cfg.data.on_bad_rows)
        train, evals = self._train_and_eval(bad)
        self.labels = self.labels or build_label_map([v for r in train for v in self.label_values(r)])
        if len(self.labels) < 2 and not self.args.multi_label:
            raise LeantuneError(f"{self.cfg.data.train}: only one label ({self.labels}); classification needs at "
                                "least two.")
        evals = self.known_labels(evals, bad)
        if not evals:
            raise LeantuneError(f"{self.cfg.data.eval or self.cfg.data.train}: no eval examples left "
                                f"({bad.report()}).")
        self.report_bad_rows(bad)
        truncated: Counter = Counter()
        train_f, eval_f = self.encode(train, True, truncated), self.encode(evals, True, truncated)
        self.report.update(train=len(train), eval=len(evals), labels=len(self.labels),
                           truncated=truncated["truncated to max_length"])
        return train_f, eval_f

    # ---------------------------------------------------------------- model, loss
    @classmethod
    def model_class(cls, model_config: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def build_model(self, path: str, meta: bool = False) -> nn.Module:
        """The classifier on ``path`` with one output per label (see the module docstring for pooling)."""
        num_labels = len(self.labels) if self.labels else 2  # before prepare (preflight): any count will do
        pooling = resolve_pooling(path, self.args.pooling, self.model_config)
        if pooling == "model":
            dropout = {} if self.args.classifier_dropout is None else {"classifier_dropout": self.args.classifier_dropout}
            return self.load_model(self.model_class(self.model_config), path, meta, num_labels=num_labels,
                                   pad_token_id=self.pad_id, **dropout)
        from transformers import AutoModel

        try:
            backbone = self.load_model(AutoModel, path, meta, model_kwargs={"add_pooling_layer": False})
        except TypeError:  # a backbone without a pooler to leave out
            backbone = self.load_model(AutoModel, path, meta)
        return SentenceClassifier(backbone, num_labels, pooling,
                                  head_dropout(self.model_config, self.args.classifier_dropout))

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed loss over the examples of one micro-batch."""
        return loss_sum(model(**model_inputs(batch)).logits, batch["targets"], self.args.multi_label)

    def batch_count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["targets"])

    # ---------------------------------------------------------------- evaluation, prediction
    def logits(self, model: nn.Module, features: list[dict[str, Any]], device: torch.device) -> torch.Tensor:
        """Logits for every feature, in the features' order."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(features)
        for idx, logits in self.eval_batches(model, features, device, lambda b: model(**b).logits.float().cpu(),
                                             MODEL_INPUTS):
            for j, i in enumerate(idx):
                out[i] = logits[j]
        return torch.stack(out)

    def evaluate(self, model: nn.Module, features: list[dict], device: torch.device) -> dict[str, Any]:
        """Mean loss and metrics of the model on labelled features."""
        assert self.labels is not None
        logits = self.logits(model, features, device)
        targets = torch.tensor([f["targets"] for f in features])
        loss = float(loss_sum(logits, targets, self.args.multi_label)) / len(features)
        if self.args.multi_label:
            metrics = multilabel_metrics((logits > 0).float(), targets.float(), self.labels)
        else:
            metrics = classification_metrics(logits.argmax(-1).tolist(), targets.tolist(), self.labels)
        return {"eval_loss": loss, **metrics}

    def read_file(self, path: str, fmt: str = "auto", labelled: bool = True,
                  target: str | None = None) -> tuple[list[dict], list[dict]]:
        """(records, features) of a data file, read and cleaned like the training data (duplicates kept)."""
        self.no_target_file(target)
        bad = BadRows(self.cfg.data.on_bad_rows)
        kept, dropped = self.read(path, self.cfg.data.eval_split or "train", bad, labelled, dedup=False, fmt=fmt)
        self.report_dropped(path, dropped)
        if labelled:
            kept = self.known_labels(kept, bad)
        self.report_bad_rows(bad, path)
        return kept, self.encode(kept, labelled, Counter())

    def evaluate_file(self, model: nn.Module, records: list[dict], features: list[dict],
                      device: torch.device) -> dict[str, Any]:
        return self.evaluate(model, features, device)

    def predict(self, model: nn.Module, records: list[dict], features: list[dict],
                device: torch.device) -> list[dict[str, Any]]:
        """The text(s) of each record, the predicted label(s) and the probability of every label."""
        assert self.labels is not None
        rows = prediction_rows(self.logits(model, features, device), self.labels, self.args.multi_label)
        return [{**{c: r.get(c) for c in self.text_columns}, **row} for r, row in zip(records, rows, strict=True)]

    # ---------------------------------------------------------------- the run folder
    def save_artifacts(self, run_dir: Path) -> None:
        (run_dir / LABELS_FILE).write_text(json.dumps(self.labels, indent=2) + "\n")

    def load_artifacts(self, run_dir: Path) -> None:
        labels_file = run_dir / LABELS_FILE
        if not labels_file.is_file():
            raise LeantuneError(f"{run_dir}: a classification run needs its {LABELS_FILE}, and it has none.")
        self.labels = json.loads(labels_file.read_text())

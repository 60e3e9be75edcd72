"""Extractive question answering (``task: extractive_qa``): predict the answer span in the context.

A start/end head (``qa_outputs``) on an encoder. Long contexts are split into windows of ``max_length`` tokens
overlapping by ``doc_stride``; a window that does not contain the answer is trained to point at [CLS]. At
prediction time the best span over all windows (start <= end, at most ``max_answer_length`` tokens, inside the
context) is mapped back to the original text through the tokenizer's offsets. Metrics: exact match and F1, over
SQuAD's words, or over characters as CMRC 2018 scores Chinese (``task_args.language``, or detected from the answers).
A training answer whose ``answer_start`` is off is re-located to its text; one whose text is not in the context is
dropped (both counted in the data report).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from leantune.data.bad_rows import BadRows
from leantune.data.language import Language
from leantune.data.qa_formats import answers_of, located_answer, read_qa_records
from leantune.errors import LeantuneError
from leantune.tasks.base import MODEL_INPUTS, Task, TaskArgs
from leantune.tasks.qa_metrics import qa_scores

if TYPE_CHECKING:
    from leantune.config import RunConfig


class ExtractiveQAArgs(TaskArgs):
    """``task_args`` of ``task: extractive_qa``."""

    doc_stride: int | None = Field(None, gt=0)
    """Overlap between the windows of a long context, in tokens (default: a third of max_length)."""
    max_answer_length: int = Field(30, gt=0)
    """The longest answer span predicted, in tokens."""
    language: Language | None = None
    """The language of the answers where it changes scoring (zh, Chinese, en ...): exact match and F1 over
    characters for Chinese and other text without spaces (CMRC 2018), else over words (SQuAD). None: detected."""


def make_windows(tokenizer: Any, questions: list[str], contexts: list[str], max_length: int,
                 stride: int) -> dict[str, Any]:
    """Tokenise (question, context) pairs into overlapping windows with offsets into the context."""
    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    # keep offsets only for context tokens, so spans can never land in the question or special tokens
    for i in range(len(enc["input_ids"])):
        seq = enc.sequence_ids(i)
        enc["offset_mapping"][i] = [o if seq[k] == 1 else None for k, o in enumerate(enc["offset_mapping"][i])]
    return enc


def span_targets(offsets: list, start_char: int, end_char: int) -> tuple[int, int]:
    """Token indices of the answer in a window, or (0, 0) (the [CLS] position) when it is not inside."""
    ctx = [k for k, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
        return 0, 0
    start = next(k for k in ctx if offsets[k][1] > start_char)
    end = next(k for k in reversed(ctx) if offsets[k][0] < end_char)
    return start, end


def best_span(start_logits: list[torch.Tensor], end_logits: list[torch.Tensor], offsets: list[list],
              context: str, max_answer_length: int, n_best: int = 20) -> tuple[str, float]:
    """The highest-scoring valid span over all windows of one example, as text of ``context``."""
    best_text, best_score = "", float("-inf")
    for s_log, e_log, offs in zip(start_logits, end_logits, offsets, strict=True):
        starts = torch.topk(s_log, min(n_best, len(s_log))).indices.tolist()
        ends = torch.topk(e_log, min(n_best, len(e_log))).indices.tolist()
        for s in starts:
            for e in ends:
                if offs[s] is None or offs[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(s_log[s] + e_log[e])
                if score > best_score:
                    best_score, best_text = score, context[offs[s][0]:offs[e][1]]
    return best_text, best_score


class ExtractiveQATask(Task):
    """Point at the answer span in the context; scored by exact match and F1 (SQuAD words or CMRC characters)."""

    name = "extractive_qa"
    Args = ExtractiveQAArgs
    serves = "answer"
    metrics = {"exact_match": True, "f1": True}
    default_metric = "f1"
    args: ExtractiveQAArgs

    def __init__(self, cfg: RunConfig, tokenizer: Any, model_config: Any) -> None:
        if not tokenizer.is_fast:
            raise LeantuneError("extractive QA needs a fast tokenizer (offset mapping).")
        super().__init__(cfg, tokenizer, model_config)
        self.eval_records: list[dict[str, Any]] = []

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        stride, max_length = cfg.task_args.doc_stride, cfg.train.max_length or cls.default_max_length
        if stride is not None and stride >= max_length // 2:
            raise ValueError(f"task_args.doc_stride ({stride}) must be below half of train.max_length ({max_length})")

    # ---------------------------------------------------------------- data
    def read(self, path: str, split: str, fmt: str | None = None) -> list[dict[str, Any]]:
        """Question records with a text context and question; others are bad rows (an error, or counted skips)."""
        bad = BadRows(self.cfg.data.on_bad_rows)
        records = read_qa_records(path, fmt or self.cfg.data.format, split, bad)
        kept = []
        for rec in records:
            missing = [k for k in ("context", "question") if not isinstance(rec.get(k), str) or not rec[k].strip()]
            if missing:
                bad(rec.get("_source", path), f"missing or empty field(s) {missing} (SQuAD format expected)")
            else:
                kept.append(rec)
        self.report_bad_rows(bad, path)
        if not kept:
            raise LeantuneError(f"{path}: no questions.")
        return kept

    def windows(self, questions: list[str], contexts: list[str]) -> Any:
        """The tokenised windows of each (question, context), as the run trains and serves them (max_length,
        doc_stride)."""
        max_length = self.cfg.train.max_length
        return make_windows(self.tokenizer, questions, contexts, max_length, self.args.doc_stride or max_length // 3)

    def featurize(self, records: list[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        """Windows of every record; training windows carry start/end targets, eval windows their offsets."""
        spans: list[tuple[str, int]] = []
        if train:  # the answer of every question, re-located where answer_start is off; none in the context: dropped
            positions: Counter = Counter()
            located = [(r, located_answer(r, positions)) for r in records]
            records = [r for r, span in located if span is not None]
            spans = [span for _, span in located if span is not None]
            if positions:
                self.report.setdefault("answer_positions", {}).update(positions)
            if not records:
                raise LeantuneError("no training question has its answer in the context (see answer_positions: "
                                    f"{dict(positions)})")
        enc = self.windows([r["question"] for r in records], [r["context"] for r in records])
        features = []
        for i in range(len(enc["input_ids"])):
            rec_idx = enc["overflow_to_sample_mapping"][i]
            f = {k: enc[k][i] for k in MODEL_INPUTS if k in enc}
            f["example"] = rec_idx
            if train:
                text, start = spans[rec_idx]
                f["start_positions"], f["end_positions"] = span_targets(enc["offset_mapping"][i], start,
                                                                        start + len(text))
            else:
                f["offsets"] = enc["offset_mapping"][i]
            features.append(f)
        return features

    def prepare(self) -> tuple[list[dict], list[dict]]:
        """Windows of the train and eval questions; without eval data, whole articles (or contexts) are held out,
        so no eval context is seen in training."""
        data = self.cfg.data
        train = self.read(data.train, data.train_split)
        if data.eval or data.eval_split:
            evals = self.read(data.eval or data.train, data.eval_split or "validation")
        else:
            train, evals = self.hold_out(train, group=lambda r: r.get("title") or r["context"])
        self.eval_records = evals
        train_f, eval_f = self.featurize(train, train=True), self.featurize(evals, train=False)
        self.report.update(train_questions=len(train), eval_questions=len(evals), train_windows=len(train_f),
                           eval_windows=len(eval_f))
        return train_f, eval_f

    # ---------------------------------------------------------------- model, loss
    @classmethod
    def model_class(cls, model_config: Any) -> Any:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def build_model(self, path: str, meta: bool = False) -> nn.Module:
        return self.load_model(self.model_class(self.model_config), path, meta)

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Start and end cross-entropy, averaged per window and summed over the windows of one micro-batch."""
        out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
        return (F.cross_entropy(out.start_logits.float(), batch["start_positions"], reduction="sum")
                + F.cross_entropy(out.end_logits.float(), batch["end_positions"], reduction="sum")) / 2

    def batch_count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["input_ids"])

    # ---------------------------------------------------------------- evaluation, prediction
    def answers(self, model: nn.Module, records: list[dict], features: list[dict], device: torch.device) -> list[str]:
        """The best answer span of every record, over all its windows."""
        starts: list[Any] = [None] * len(features)
        ends: list[Any] = [None] * len(features)

        def logits(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            out = model(**batch)
            return out.start_logits.float().cpu(), out.end_logits.float().cpu()

        for idx, (start_logits, end_logits) in self.eval_batches(model, features, device, logits, MODEL_INPUTS):
            for j, i in enumerate(idx):
                n = len(features[i]["input_ids"])
                starts[i], ends[i] = start_logits[j, :n], end_logits[j, :n]
        by_example: dict[int, list[int]] = {}
        for i, f in enumerate(features):
            by_example.setdefault(f["example"], []).append(i)
        answers = []
        for r_idx, rec in enumerate(records):
            win = by_example.get(r_idx, [])
            text, _ = best_span([starts[i] for i in win], [ends[i] for i in win],
                                [features[i]["offsets"] for i in win], rec["context"], self.args.max_answer_length)
            answers.append(text)
        return answers

    def evaluate(self, model: nn.Module, features: list[dict], device: torch.device,
                 records: list[dict] | None = None) -> dict[str, Any]:
        """Exact match and F1 of the predicted spans against every reference answer."""
        records = self.eval_records if records is None else records
        predictions = self.answers(model, records, features, device)
        refs = [answers_of(r) or [""] for r in records]
        self.last_predictions = [{"id": r.get("id"), "question": r["question"], "reference": ref, "prediction": p}
                                 for r, ref, p in zip(records, refs, predictions, strict=True)]
        return qa_scores(predictions, refs, self.args.language)

    def read_file(self, path: str, fmt: str = "auto", labelled: bool = True,
                  target: str | None = None) -> tuple[list[dict], list[dict]]:
        """Questions of a file, and their windows."""
        self.no_target_file(target)
        records = self.read(path, "train", fmt)
        return records, self.featurize(records, train=False)

    def evaluate_file(self, model: nn.Module, records: list[dict], features: list[dict],
                      device: torch.device) -> dict[str, Any]:
        return self.evaluate(model, features, device, records)

    def predict(self, model: nn.Module, records: list[dict], features: list[dict],
                device: torch.device) -> list[dict[str, Any]]:
        """The question and id of every record and the predicted answer span."""
        return [{"question": r["question"], "id": r.get("id"), "prediction": p}
                for r, p in zip(records, self.answers(model, records, features, device), strict=True)]

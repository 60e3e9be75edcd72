"""Extractive question answering (``task: extractive_qa``): predict the answer span in the context.

A start/end head (``qa_outputs``) on an encoder. Long contexts are split into windows of ``max_length`` tokens
overlapping by ``doc_stride``; a window that does not contain the answer is trained to point at [CLS]. At
prediction time the best span over all windows (start <= end, at most ``max_answer_length`` tokens, inside the
context) is mapped back to the original text through the tokenizer's offsets. Metrics: SQuAD EM and F1.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leantune.config import RunConfig
from leantune.data.bad_rows import BadRows
from leantune.data.batching import iterate_batches, length_grouped_batches
from leantune.data.labels import stratified_split
from leantune.data.writers import write_jsonl
from leantune.errors import LeantuneError
from leantune.models.loading import pretrained
from leantune.tasks.instruction import answers_of, read_qa_records
from leantune.tasks.qa_metrics import qa_scores


def answer_start(rec: dict[str, Any]) -> int | None:
    answers = rec.get("answers", rec.get("answer"))
    if isinstance(answers, dict):
        starts = answers.get("answer_start", [])
        return int(starts[0]) if starts else None
    if isinstance(answers, list) and answers and isinstance(answers[0], dict):
        return int(answers[0].get("answer_start", -1))
    return rec.get("answer_start")


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


class ExtractiveQATask:
    name = "extractive_qa"
    default_metric = "f1"

    def __init__(self, cfg: RunConfig, tokenizer: Any, labels: list[str] | None = None,
                 model_path: str | None = None) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise LeantuneError("extractive QA needs a fast tokenizer (offset mapping).")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.labels = None
        self.report: dict[str, Any] = {}
        self.eval_records: list[dict[str, Any]] = []
        self.last_predictions: list[dict[str, Any]] = []

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def read(self, path: str, split: str) -> list[dict[str, Any]]:
        """Question records with a text context and question; others are bad rows (an error, or counted skips)."""
        bad = BadRows(self.cfg.data.on_bad_rows)
        records = read_qa_records(path, self.cfg.data.format, split, bad)
        kept = []
        for rec in records:
            missing = [k for k in ("context", "question") if not isinstance(rec.get(k), str) or not rec[k].strip()]
            if missing:
                bad(rec.get("_source", path), f"missing or empty field(s) {missing} (SQuAD format expected)")
            else:
                kept.append(rec)
        if bad.total:
            self.report.setdefault("bad_rows_skipped", {}).update(bad.report())
            print(f"leantune: {path}: skipped {bad.total} bad rows: {bad.report()}", file=sys.stderr, flush=True)
        if not kept:
            raise LeantuneError(f"{path}: no questions.")
        return kept

    def featurize(self, records: list[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        """Windows of every record; training windows carry start/end targets, eval windows their offsets."""
        enc = make_windows(self.tokenizer, [r["question"] for r in records], [r["context"] for r in records],
                           self.cfg.train.max_length, self.cfg.train.doc_stride or self.cfg.train.max_length // 3)
        features, skipped = [], Counter()
        for i, ids in enumerate(enc["input_ids"]):
            rec_idx = enc["overflow_to_sample_mapping"][i]
            f = {"input_ids": ids, "attention_mask": enc["attention_mask"][i], "example": rec_idx}
            if "token_type_ids" in enc:
                f["token_type_ids"] = enc["token_type_ids"][i]
            if train:
                rec = records[rec_idx]
                answers, start = answers_of(rec), answer_start(rec)
                if not answers or start is None or start < 0:
                    skipped["no answer position"] += 1
                    continue
                if rec["context"][start:start + len(answers[0])] != answers[0]:
                    skipped["answer_start does not point at the answer"] += 1
                    continue
                f["start_positions"], f["end_positions"] = span_targets(
                    enc["offset_mapping"][i], start, start + len(answers[0]))
            else:
                f["offsets"] = enc["offset_mapping"][i]
            features.append(f)
        if skipped:
            self.report.setdefault("skipped_windows", {}).update(skipped)
        return features

    def prepare(self) -> tuple[list[dict], list[dict]]:
        d = self.cfg.data
        train = self.read(d.train, d.train_split)
        if d.eval:
            evals = self.read(d.eval, d.eval_split or "validation")
        else:  # hold out whole articles/contexts so no context is seen in training
            groups = sorted({r.get("title") or r["context"] for r in train})
            _, held = stratified_split([0] * len(groups), d.eval_fraction, self.cfg.train.seed)
            held_groups = {groups[i] for i in held}
            evals = [r for r in train if (r.get("title") or r["context"]) in held_groups]
            train = [r for r in train if (r.get("title") or r["context"]) not in held_groups]
        self.eval_records = evals
        train_f, eval_f = self.featurize(train, train=True), self.featurize(evals, train=False)
        self.report.update(train_questions=len(train), eval_questions=len(evals), train_windows=len(train_f),
                           eval_windows=len(eval_f))
        return train_f, eval_f

    def build_model(self, path: str) -> nn.Module:
        from transformers import AutoModelForQuestionAnswering

        return pretrained(AutoModelForQuestionAnswering, path, self.cfg)

    @staticmethod
    def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        out = model(**self._inputs(batch))
        loss = (F.cross_entropy(out.start_logits.float(), batch["start_positions"], reduction="sum")
                + F.cross_entropy(out.end_logits.float(), batch["end_positions"], reduction="sum")) / 2
        return loss, len(batch["input_ids"])

    @staticmethod
    def batch_count(batch: dict[str, torch.Tensor]) -> int:
        return len(batch["input_ids"])

    @torch.no_grad()
    def predict_records(self, model: nn.Module, records: list[dict], features: list[dict],
                        device: torch.device) -> list[str]:
        was_training = model.training
        model.eval()
        bs = self.cfg.train.eval_batch_size or self.cfg.train.batch_size * 2
        plain = [{k: v for k, v in f.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                 for f in features]
        batches = length_grouped_batches([len(f["input_ids"]) for f in plain], bs, seed=0, shuffle=False)
        starts: list[Any] = [None] * len(features)
        ends: list[Any] = [None] * len(features)
        for idx, batch in zip(batches, iterate_batches(plain, batches, self.pad_id), strict=True):
            out = model(**{k: v.to(device) for k, v in batch.items()})
            for j, i in enumerate(idx):
                n = len(features[i]["input_ids"])
                starts[i], ends[i] = out.start_logits[j, :n].float().cpu(), out.end_logits[j, :n].float().cpu()
        model.train(was_training)
        by_example: dict[int, list[int]] = {}
        for i, f in enumerate(features):
            by_example.setdefault(f["example"], []).append(i)
        answers = []
        for r_idx, rec in enumerate(records):
            win = by_example.get(r_idx, [])
            text, _ = best_span([starts[i] for i in win], [ends[i] for i in win],
                                [features[i]["offsets"] for i in win], rec["context"], self.cfg.train.max_answer_length)
            answers.append(text)
        return answers

    def evaluate(self, model: nn.Module, features: list[dict], device: torch.device,
                 records: list[dict] | None = None) -> dict[str, Any]:
        records = self.eval_records if records is None else records
        predictions = self.predict_records(model, records, features, device)
        refs = [answers_of(r) or [""] for r in records]
        self.last_predictions = [{"id": r.get("id"), "question": r["question"], "reference": ref, "prediction": p}
                                 for r, ref, p in zip(records, refs, predictions, strict=True)]
        return qa_scores(predictions, refs)

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {k: metrics[k] for k in ("exact_match", "f1") if k in metrics}

    def save_artifacts(self, run_dir: Path) -> None:
        """Nothing before training; predictions are written by :meth:`finish`."""

    def finish(self, run_dir: Path) -> None:
        """Write the last evaluation's predictions beside their references."""
        write_jsonl(run_dir / "predictions.jsonl", self.last_predictions)

    def read_file(self, path: str, fmt: str = "auto", need_labels: bool = True, target: str | None = None) -> tuple[list[dict], list[dict]]:
        records = self.read(path, "train")
        return records, self.featurize(records, train=False)

    def evaluate_file(self, model: nn.Module, records: list[dict], features: list[dict],
                      device: torch.device) -> dict[str, Any]:
        return self.evaluate(model, features, device, records)

    def predict(self, model: nn.Module, records: list[dict], features: list[dict],
                device: torch.device) -> list[dict[str, Any]]:
        return [{"id": r.get("id"), "prediction": p} for r, p in
                zip(records, self.predict_records(model, records, features, device), strict=True)]

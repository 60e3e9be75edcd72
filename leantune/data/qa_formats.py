"""Question-answering records: SQuAD v1.1 JSON flattened to one record per question, or any file format whose
records hold ``context``, ``question`` and ``answers`` (for extractive and generative QA alike).

Published data has answers whose ``answer_start`` is off (CMRC 2018: 21 train answers a character or more away
from their text, dev answers at -1): :func:`located_answer` finds the answer by its text, nearest to the offset
given, and counts what it re-located or could not find.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from leantune.data.bad_rows import BadRows
from leantune.data.readers import FILE_FORMATS, read_records
from leantune.errors import LeantuneError


def squad_records(path: str) -> list[dict[str, Any]]:
    """Flatten SQuAD v1.1 JSON (data[].paragraphs[].qas[]) into one record per question."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LeantuneError(f"{path}: not a readable SQuAD JSON file ({e}).") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise LeantuneError(f"{path}: SQuAD JSON needs a top-level 'data' list.")
    out = []
    for a, article in enumerate(obj["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            for qa in para.get("qas", []):
                out.append({"context": para["context"], "question": qa["question"], "answers": qa.get("answers", []),
                            "id": qa.get("id"), "title": article.get("title", str(a)),
                            "_source": f"{path}:data[{a}].paragraphs[{p}] question {qa.get('id')}"})
    return out


def read_qa_records(path: str, fmt: str, split: str, bad: BadRows | None = None) -> list[dict[str, Any]]:
    """SQuAD JSON, or any file format whose records have context/question/answers."""
    if fmt in ("squad", "auto") and path.endswith(".json"):
        try:
            return squad_records(path)
        except LeantuneError:
            if fmt == "squad":
                raise
    return read_records(path, fmt if fmt in FILE_FORMATS else "auto", split, bad=bad)


def answers_of(rec: dict[str, Any]) -> list[str]:
    """Answer texts of a QA record: SQuAD's list of {text, answer_start}, HF's {text: [...]}, or a string."""
    answers = rec.get("answers", rec.get("answer"))
    if isinstance(answers, dict):
        answers = answers.get("text", [])
    if isinstance(answers, str):
        answers = [answers]
    return [a["text"] if isinstance(a, dict) else str(a) for a in answers or []]


def _answer_starts(rec: dict[str, Any]) -> list[int | None]:
    """The ``answer_start`` of every answer of a QA record, in the order of :func:`answers_of` (None: not given)."""
    answers = rec.get("answers", rec.get("answer"))
    if isinstance(answers, dict):
        return [int(s) for s in answers.get("answer_start", [])]
    if isinstance(answers, list):
        return [int(a["answer_start"]) if isinstance(a, dict) and a.get("answer_start") is not None else None
                for a in answers]
    return [rec.get("answer_start")]


def locate_answer(context: str, text: str, start: int | None) -> int | None:
    """Where answer ``text`` starts in ``context``: ``start`` when it points at the text, else the occurrence nearest
    to ``start`` (to the beginning when none is given), None when the text is not there."""
    if not text:
        return None
    if start is not None and start >= 0 and context[start:start + len(text)] == text:
        return start
    found = [i for i in range(len(context)) if context.startswith(text, i)]
    return min(found, key=lambda i: abs(i - max(start or 0, 0))) if found else None


def located_answer(rec: dict[str, Any], counts: Counter) -> tuple[str, int] | None:
    """(text, start) of the first answer of a QA record whose text is in its context, at its ``answer_start`` or
    re-located to the occurrence nearest to it; None when no answer is in the context. ``counts`` gets one count
    per record whose answer was re-located, found by text alone, or not found."""
    texts = answers_of(rec)
    starts = _answer_starts(rec) + [None] * len(texts)
    for text, start in zip(texts, starts, strict=False):
        found = locate_answer(rec["context"], text, start)
        if found is None:
            continue
        if start is None:
            counts["answer found by its text (no answer_start)"] += 1
        elif found != start:
            counts["answer_start re-located to the answer text"] += 1
        return text, found
    counts["no answer" if not any(texts) else "answer text not in the context"] += 1
    return None

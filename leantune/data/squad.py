"""Question-answering records: SQuAD v1.1 JSON flattened to one record per question, or any file format whose
records hold ``context``, ``question`` and ``answers`` (for extractive and generative QA alike)."""

from __future__ import annotations

import json
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


def answer_start(rec: dict[str, Any]) -> int | None:
    """Character offset of the first answer in the context (None when the record gives none)."""
    answers = rec.get("answers", rec.get("answer"))
    if isinstance(answers, dict):
        starts = answers.get("answer_start", [])
        return int(starts[0]) if starts else None
    if isinstance(answers, list) and answers and isinstance(answers[0], dict):
        return int(answers[0].get("answer_start", -1))
    return rec.get("answer_start")

"""SQuAD-style answer normalisation, exact match and token F1 (for extractive and generative QA)."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (the official SQuAD script)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean EM and F1 in percent, each prediction scored against its best-matching reference."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = sum(max(exact_match(p, t) for t in refs) for p, refs in zip(predictions, references, strict=True))
    f1 = sum(max(token_f1(p, t) for t in refs) for p, refs in zip(predictions, references, strict=True))
    n = len(predictions)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}

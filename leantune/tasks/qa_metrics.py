"""SQuAD-style answer normalisation, exact match and token F1 (for extractive and generative QA); Chinese is scored
at the character level instead (``qa_metrics_zh``)."""

from __future__ import annotations

import re
import string
from collections import Counter

from leantune.data.language import detect_language, is_spaceless
from leantune.tasks.qa_metrics_zh import cmrc_exact_match, cmrc_f1

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


def qa_scores(predictions: list[str], references: list[list[str]],
              language: str | None = None) -> dict[str, float | str]:
    """Mean EM and F1 in percent, each prediction scored against its best-matching reference, and the scorer used
    (``qa_scorer``): ``cmrc_char``, CMRC 2018's character level, for text without spaces (``language`` such as zh,
    or detected from the references), else ``squad_word``, SQuAD's normalised words."""
    spaceless = is_spaceless(language or detect_language(t for refs in references for t in refs))
    em_of, f1_of = (cmrc_exact_match, cmrc_f1) if spaceless else (exact_match, token_f1)
    scorer = "cmrc_char" if spaceless else "squad_word"
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0, "qa_scorer": scorer}
    em = sum(max(em_of(p, t) for t in refs) for p, refs in zip(predictions, references, strict=True))
    f1 = sum(max(f1_of(p, t) for t in refs) for p, refs in zip(predictions, references, strict=True))
    n = len(predictions)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n, "qa_scorer": scorer}

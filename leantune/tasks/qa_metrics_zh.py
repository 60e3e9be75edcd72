"""QA exact match and F1 for Chinese (and other text without spaces), following CMRC 2018's official evaluation.

SQuAD's F1 splits on whitespace, so a Chinese answer is one "word" and any difference scores 0. CMRC 2018's script
uses *mixed segmentation* instead: each CJK character is a token, a run of Latin letters and digits is a token,
punctuation is removed, and case is ignored; F1 is then computed from the longest common *contiguous* run of
tokens between prediction and reference (not SQuAD's bag-of-tokens overlap), the best over the references.

Two documented differences from the official script: it removes a fixed list of punctuation marks and runs NLTK's
word tokenizer over the rest (so ASCII commas and full stops count as tokens there), where this removes every
punctuation mark and symbol; and exact match compares the token sequences, so "1998 年" equals "1998年" (the
official script compares strings with the spaces kept).
"""

from __future__ import annotations

import unicodedata

from leantune.data.language import CJK_CHAR


def mixed_segmentation(text: str) -> list[str]:
    """CMRC 2018 tokens: each CJK character, each run of letters/digits (lower-cased); punctuation and symbols
    dropped, whitespace separates runs."""
    tokens: list[str] = []
    run: list[str] = []
    for ch in text.lower():
        if CJK_CHAR.match(ch):
            if run:
                tokens.append("".join(run))
                run = []
            tokens.append(ch)
        elif ch.isalnum() or unicodedata.category(ch).startswith("M"):  # letters, digits, combining marks
            run.append(ch)
        elif run:  # whitespace, punctuation, symbols end a run
            tokens.append("".join(run))
            run = []
    if run:
        tokens.append("".join(run))
    return tokens


def longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest contiguous run of tokens shared by ``a`` and ``b`` (the official ``find_lcs``)."""
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def cmrc_exact_match(prediction: str, truth: str) -> float:
    return float(mixed_segmentation(prediction) == mixed_segmentation(truth))


def cmrc_f1(prediction: str, truth: str) -> float:
    pred, gold = mixed_segmentation(prediction), mixed_segmentation(truth)
    if not pred or not gold:
        return float(pred == gold)
    same = longest_common_run(gold, pred)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)

"""BLEU and chrF (sacrebleu) with the BLEU tokenizer the target language needs.

sacrebleu's default tokenizer (``13a``) splits on spaces and punctuation, so a Chinese sentence would be one or two
"words"; its ``zh`` tokenizer splits Chinese characters apart (and keeps Latin words whole). The tokenizer is picked
from the target language (a code or a name), or from the references when the language is not given, and is
recorded beside the scores. chrF works on characters and needs no tokenizer.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from leantune.data.language import detect_language, language_code


def bleu_tokenizer(target_lang: str | None, references: list[str] | None = None) -> str:
    """sacrebleu's tokenizer for BLEU on text in ``target_lang`` (detected from ``references`` when None)."""
    code = language_code(target_lang) if target_lang else detect_language(references or [])
    if code == "zh":
        return "zh"
    if code == "ja":
        return "ja-mecab" if importlib.util.find_spec("MeCab") else "char"
    if code == "ko" and importlib.util.find_spec("mecab_ko"):
        return "ko-mecab"
    if code in ("th", "lo", "km", "my"):  # no spaces between words and no word segmenter in sacrebleu
        return "char"
    return "13a"


def translation_scores(predictions: list[str], references: list[str], target_lang: str | None) -> dict[str, Any]:
    """Corpus chrF and BLEU of ``predictions`` against one reference each, and the BLEU tokenizer used."""
    import sacrebleu

    tokenize = bleu_tokenizer(target_lang, references)
    return {"chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
            "bleu": sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score,
            "bleu_tokenizer": tokenize}

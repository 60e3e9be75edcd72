"""Languages: names and codes, telling text without spaces between words (Chinese, Japanese) from the rest, and
the whitespace fixes such text needs.

Chinese and Japanese are written without spaces between words, so a whitespace word count or a whitespace token
F1 means nothing there: length limits count characters, QA scores count characters (``tasks/qa_metrics_zh.py``)
and BLEU tokenises Chinese with sacrebleu's ``zh`` tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator

# Han ideographs (unified, extension A, compatibility, extensions B+ in the supplementary planes) and Japanese
# kana: written without spaces between words, each character a unit of meaning.
_CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\U00020000-\U0003134f"
# CJK punctuation (、。「」『』【】〜) and full-width punctuation (，！？：；（）), not full-width letters and digits.
_CJK_PUNCT = "\u3001-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
CJK_CHAR = re.compile(f"[{_CJK_CHARS}]")
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK_CHARS}{_CJK_PUNCT}])\\s+(?=[{_CJK_CHARS}{_CJK_PUNCT}])")

# Codes leantune knows by name (ISO 639-1), for prompts ("Translate this English text into Chinese") and for
# choosing tokenizers and scorers. Any other name is used in prompts as written.
LANGUAGES = {
    "en": "English", "zh": "Chinese", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
    "pt": "Portuguese", "nl": "Dutch", "ru": "Russian", "uk": "Ukrainian", "pl": "Polish", "cs": "Czech",
    "tr": "Turkish", "ar": "Arabic", "he": "Hebrew", "fa": "Persian", "hi": "Hindi", "bn": "Bengali",
    "ja": "Japanese", "ko": "Korean", "vi": "Vietnamese", "th": "Thai", "id": "Indonesian", "ms": "Malay",
    "sv": "Swedish", "da": "Danish", "no": "Norwegian", "fi": "Finnish", "el": "Greek", "ro": "Romanian",
    "hu": "Hungarian", "lo": "Lao", "km": "Khmer", "my": "Burmese",
}
_ALIASES = {
    "chinese": "zh", "mandarin": "zh", "中文": "zh", "汉语": "zh", "漢語": "zh", "简体中文": "zh", "繁體中文": "zh",
    "zh-cn": "zh", "zh-tw": "zh", "zh-hans": "zh", "zh-hant": "zh", "zho": "zh", "chi": "zh", "cmn": "zh",
    "english": "en", "eng": "en", "en-us": "en", "en-gb": "en", "german": "de", "deutsch": "de", "deu": "de",
    "ger": "de", "french": "fr", "français": "fr", "francais": "fr", "fra": "fr", "fre": "fr", "spanish": "es",
    "español": "es", "japanese": "ja", "日本語": "ja", "jpn": "ja", "korean": "ko", "한국어": "ko", "kor": "ko",
    "thai": "th",
}
# Written without spaces between words: character-level scores, no whitespace word counts.
SPACELESS = {"zh", "ja", "th", "lo", "km", "my"}


def language_code(name: str | None) -> str | None:
    """The ISO 639-1 code for a language name or code ("Chinese", "zh-CN", "中文" -> "zh"); None for None, and the
    lower-cased name itself when it is not known."""
    if name is None:
        return None
    key = name.strip().lower().replace("_", "-")
    if key in LANGUAGES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    base = key.split("-")[0]
    if base in LANGUAGES and "-" in key:  # a region or script tag: pt-BR, de-AT
        return base
    return next((code for code, english in LANGUAGES.items() if english.lower() == key), key)


def language_name(name: str) -> str:
    """The English name to use in prompts: "zh" -> "Chinese"; a name leantune does not know is kept as written."""
    code = language_code(name)
    return LANGUAGES.get(code, name.strip()) if code else name


def known_language(name: str) -> str:
    """``name`` as given when it names a language leantune knows (a code, an English name, an alias such as 中文 or
    zh-CN); a ValueError listing some codes otherwise (a config setting that picks a scorer must not be a typo)."""
    if language_code(name) not in LANGUAGES:
        raise ValueError(f"unknown language '{name}'; give an ISO 639-1 code or an English name, e.g. "
                         f"{', '.join(list(LANGUAGES)[:10])}, Chinese, English")
    return name


Language = Annotated[str, AfterValidator(known_language)]
"""A config field naming a known language (validated by :func:`known_language`)."""


def is_spaceless(language: str | None) -> bool:
    return language_code(language) in SPACELESS


def cjk_share(texts: Iterable[str], limit: int = 2000) -> float:
    """The share of the letters (anything alphanumeric) of the first ``limit`` texts that are CJK characters."""
    cjk = letters = 0
    for i, text in enumerate(texts):
        if i >= limit:
            break
        letters += sum(ch.isalnum() for ch in text)
        cjk += len(CJK_CHAR.findall(text))
    return cjk / letters if letters else 0.0


def detect_language(texts: Iterable[str]) -> str | None:
    """"zh" when CJK characters make up at least a third of the letters (Chinese; Japanese scores the same way),
    else None (a language with spaces between words)."""
    return "zh" if cjk_share(texts) >= 1 / 3 else None


def join_cjk_spaces(text: str) -> tuple[str, int]:
    """``text`` without the spaces between two CJK characters or CJK punctuation marks (subtitle line breaks and
    segmented text leave them), and how many runs of spaces were removed. Spaces next to Latin text stay."""
    return _SPACE_BETWEEN_CJK.subn("", text)

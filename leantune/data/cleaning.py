"""Text cleaning with a count of every change and drop (never a silent drop)."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING, Any

from leantune.data.language import join_cjk_spaces

if TYPE_CHECKING:
    from leantune.config import CleanConfig

_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str, cfg: CleanConfig) -> str:
    if cfg.strip_html:
        text = html.unescape(_TAG.sub(" ", text))
    if cfg.cjk_spaces:  # before NFKC, which turns full-width punctuation (，！) into ASCII
        text = join_cjk_spaces(text)[0]
    if cfg.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if cfg.whitespace:
        text = _SPACE.sub(" ", text).strip()
    if cfg.lowercase:
        text = text.lower()
    return text


def clean_records(records: list[dict[str, Any]], cfg: CleanConfig,
                  fields: list[str]) -> tuple[list[dict[str, Any]], Counter]:
    """Clean ``fields`` of every record and drop empty, too short/long and duplicate ones (same ``fields``);
    return the kept records and the counts of what was dropped."""
    report: Counter = Counter()
    kept, seen = [], set()
    for rec in records:
        rec = dict(rec)
        for f in fields:
            if rec.get(f) is not None:
                rec[f] = clean_text(str(rec[f]), cfg)
        text = " ".join(str(rec.get(f) or "") for f in fields)
        if cfg.drop_empty and not text.strip():
            report["empty"] += 1
            continue
        if len(text) < cfg.min_chars:
            report[f"shorter than {cfg.min_chars} chars"] += 1
            continue
        if cfg.max_chars is not None and len(text) > cfg.max_chars:
            report[f"longer than {cfg.max_chars} chars"] += 1
            continue
        if cfg.drop_duplicates:
            identity = tuple(rec.get(f) for f in fields)
            if identity in seen:
                report["duplicate"] += 1
                continue
            seen.add(identity)
        kept.append(rec)
    return kept, report

"""Machine translation (``task: translation``): parallel text in, BLEU and chrF (sacrebleu) out.

Data: two aligned files (``data.train`` source lines, ``task_args.train_target`` target lines; plain or .gz), or a
TSV/CSV/JSONL file with ``source``/``target`` columns (``task_args.source_column`` / ``target_column``).
Decoder-only models get a translation instruction (through their chat template); encoder-decoder models read
``translate English to German: <text>`` directly. Languages are given by name or code (``zh`` reads as Chinese in
the prompt); spaces between two Chinese characters (subtitle line breaks) are removed and counted
(``data.clean.cjk_spaces``). BLEU tokenises with the target language's tokenizer (``zh`` for Chinese, recorded as
``bleu_tokenizer``). The loss, generation and truncation are :class:`~leantune.tasks.generative.GenerativeTask`'s.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import Field

from leantune.data.language import join_cjk_spaces, language_name
from leantune.data.readers import FILE_FORMATS, detect_format, read_records
from leantune.errors import LeantuneError
from leantune.tasks.generative import Example, GenerationArgs, GenerativeTask
from leantune.tasks.translation_metrics import translation_scores

PROMPT = "Translate this {src} text into {tgt}. Reply with the translation only.\n\n{text}"
SEQ2SEQ_PROMPT = "translate {src} to {tgt}: {text}"


class TranslationArgs(GenerationArgs):
    """``task_args`` of ``task: translation``."""

    source_lang: str = Field(min_length=1)
    """The source language, as a code or a name (en, English, zh, Chinese, de, ...): the prompt names a language
    leantune knows in English ("zh" reads "Chinese") and any other name as written."""
    target_lang: str = Field(min_length=1)
    """The target language (as source_lang); it also picks BLEU's tokenizer (sacrebleu's zh for Chinese, 13a for
    languages written with spaces)."""
    train_target: str | None = None
    """Two aligned files: ``data.train`` holds the source lines, ``train_target`` their translations."""
    eval_target: str | None = None
    """The translations of ``data.eval``'s lines."""
    source_column: str = "source"
    """Table-like files (tsv, csv, jsonl): the columns of the source and the target text."""
    target_column: str = "target"


class TranslationTask(GenerativeTask):
    """Translate from ``source_lang`` into ``target_lang``; scored by chrF and BLEU, and the eval loss."""

    name = "translation"
    Args = TranslationArgs
    metrics = {"chrf": True, "bleu": True, "eval_loss": False}
    default_metric = "chrf"
    args: TranslationArgs

    def train_target(self) -> str | None:
        return self.args.train_target

    def eval_files(self) -> tuple[str, str | None] | None:
        data = self.cfg.data
        if data.eval or self.args.eval_target:
            return data.eval or data.train, self.args.eval_target
        return None

    def _pairs(self, path: str, target_path: str | None, split: str, need_target: bool,
               fmt: str) -> list[tuple[str, str, str]]:
        """(source, target, where) of every line or record."""
        plain_text = (fmt if fmt != "auto" else detect_format(path)) in ("lines", "text")
        if plain_text and not target_path:  # source sentences only: something to translate
            if need_target:
                raise LeantuneError(f"{path} holds plain sentences: give the aligned translations as "
                                    "task_args.train_target / task_args.eval_target (or --target).")
            return [(r["source"], "", r["_source"])
                    for r in read_records(path, "text", split, text_column="source", bad=self.bad)]
        if target_path:
            sources = read_records(path, "text", split, text_column="source", bad=self.bad)
            targets = read_records(target_path, "text", split, text_column="target", bad=self.bad)
            if len(sources) != len(targets):
                raise LeantuneError(f"{path} has {len(sources)} lines but {target_path} has {len(targets)}: "
                                    "parallel files must be aligned line by line.")
            return [(s["source"], t["target"], s["_source"]) for s, t in zip(sources, targets, strict=True)]
        src, tgt = self.args.source_column, self.args.target_column
        records = read_records(path, fmt, split, bad=self.bad)
        if records and (src not in records[0] or tgt not in records[0]):
            have = [k for k in records[0] if k != "_source"]
            raise LeantuneError(f"{records[0]['_source']}: needs columns '{src}' and '{tgt}' (set "
                                f"task_args.source_column / target_column); has {have}.")
        return [(str(r[src]), str(r[tgt]), r["_source"]) for r in records]

    def read_examples(self, path: str, target_path: str | None, split: str, need_target: bool = True,
                      fmt: str | None = None) -> list[Example]:
        fmt = fmt or self.cfg.data.format
        pairs = self._pairs(path, target_path, split, need_target, fmt if fmt in FILE_FORMATS else "auto")
        template = SEQ2SEQ_PROMPT if self.seq2seq else PROMPT
        src_name, tgt_name = language_name(self.args.source_lang), language_name(self.args.target_lang)
        examples, dropped, joined = [], Counter(), 0
        for source, target, where in pairs:
            source, target = " ".join(source.split()), " ".join(target.split())
            if self.cfg.data.clean.cjk_spaces:  # subtitle line breaks left as spaces between Chinese characters
                (source, n_source), (target, n_target) = join_cjk_spaces(source), join_cjk_spaces(target)
                joined += bool(n_source or n_target)
            if not source or (need_target and not target):
                dropped["empty source or target"] += 1
                continue
            prompt = template.format(src=src_name, tgt=tgt_name, text=source)
            examples.append(Example([{"role": "user", "content": prompt}], target, [target], where,
                                    {"source": source}))
        self.report_dropped(path, dropped)
        if joined:
            self.report.setdefault("pairs_with_spaces_removed_between_cjk", {})[Path(path).name] = joined
        if not examples:
            raise LeantuneError(f"{path}: no translation pairs.")
        return examples

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float | str]:
        return translation_scores(predictions, [e.response for e in examples], self.args.target_lang)

"""Machine translation (``task: translation``): parallel text in, BLEU and chrF (sacrebleu) out.

Data: two aligned files (``data.train`` source lines, ``task_args.train_target`` target lines; plain or .gz), or a
TSV/CSV/JSONL file with ``source``/``target`` columns (``task_args.source_column`` / ``target_column``).
Decoder-only models get a translation instruction (through their chat template); encoder-decoder models read
``translate English to German: <text>`` directly. The loss, generation and truncation are
:class:`~leantune.tasks.generative.GenerativeTask`'s.
"""

from __future__ import annotations

from collections import Counter

from leantune.data.readers import FILE_FORMATS, detect_format, read_records
from leantune.errors import LeantuneError
from leantune.tasks.generative import Example, GenerationArgs, GenerativeTask

PROMPT = "Translate this {src} text into {tgt}. Reply with the translation only.\n\n{text}"
SEQ2SEQ_PROMPT = "translate {src} to {tgt}: {text}"


class TranslationArgs(GenerationArgs):
    """``task_args`` of ``task: translation``."""

    source_lang: str
    """The source language's name as the prompt says it (e.g. English)."""
    target_lang: str
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
        examples, dropped = [], Counter()
        for source, target, where in pairs:
            source, target = " ".join(source.split()), " ".join(target.split())
            if not source or (need_target and not target):
                dropped["empty source or target"] += 1
                continue
            prompt = template.format(src=self.args.source_lang, tgt=self.args.target_lang, text=source)
            examples.append(Example([{"role": "user", "content": prompt}], target, [target], where,
                                    {"source": source}))
        self.report_dropped(path, dropped)
        if not examples:
            raise LeantuneError(f"{path}: no translation pairs.")
        return examples

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        import sacrebleu

        refs = [[e.response for e in examples]]
        return {"chrf": sacrebleu.corpus_chrf(predictions, refs).score,
                "bleu": sacrebleu.corpus_bleu(predictions, refs).score}

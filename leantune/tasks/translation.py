"""Machine translation (``task: translation``): parallel text in, BLEU and chrF (sacrebleu) out.

Data: two aligned files (``data.train`` source lines, ``data.train_target`` target lines; plain or .gz), or a
TSV/CSV/JSONL file with ``source``/``target`` columns (``data.source_column`` / ``target_column``). Decoder-only
models get a translation instruction (through their chat template); encoder-decoder models read
``translate English to German: <text>`` directly.
"""

from __future__ import annotations

from collections import Counter

from leantune.data.readers import FILE_FORMATS, detect_format, read_records
from leantune.errors import LeantuneError
from leantune.tasks.generative import Example, GenerativeTask

PROMPT = "Translate this {src} text into {tgt}. Reply with the translation only.\n\n{text}"
SEQ2SEQ_PROMPT = "translate {src} to {tgt}: {text}"


class TranslationTask(GenerativeTask):
    name = "translation"
    default_metric = "chrf"
    metric_keys = ("chrf", "bleu")

    def read_examples(self, path: str, target_path: str | None, split: str,
                      need_target: bool = True) -> list[Example]:
        d = self.cfg.data
        fmt = d.format if d.format in FILE_FORMATS else "auto"
        plain_text = (fmt if fmt != "auto" else detect_format(path)) in ("lines", "text")
        if plain_text and not target_path:  # source sentences only: something to translate
            if need_target:
                raise LeantuneError(f"{path} holds plain sentences: give the aligned translations as "
                                    "data.train_target / data.eval_target (or --target).")
            pairs = [(r["source"], "", r["_source"]) for r in read_records(path, "text", split, text_column="source",
                                                                           bad=self.bad)]
        elif target_path:
            sources = read_records(path, "text", split, text_column="source", bad=self.bad)
            targets = read_records(target_path, "text", split, text_column="target", bad=self.bad)
            if len(sources) != len(targets):
                raise LeantuneError(f"{path} has {len(sources)} lines but {target_path} has {len(targets)}: "
                                    "parallel files must be aligned line by line.")
            pairs = [(s["source"], t["target"], s["_source"]) for s, t in zip(sources, targets, strict=True)]
        else:
            records = read_records(path, fmt, split, bad=self.bad)
            if records and (d.source_column not in records[0] or d.target_column not in records[0]):
                have = [k for k in records[0] if k != "_source"]
                raise LeantuneError(f"{records[0]['_source']}: needs columns '{d.source_column}' and "
                                    f"'{d.target_column}' (set data.source_column / target_column); has {have}.")
            pairs = [(str(r[d.source_column]), str(r[d.target_column]), r["_source"]) for r in records]
        template = SEQ2SEQ_PROMPT if self.seq2seq else PROMPT
        examples, dropped = [], Counter()
        for source, target, where in pairs:
            source, target = " ".join(source.split()), " ".join(target.split())
            if not source or (need_target and not target):
                dropped["empty source or target"] += 1
                continue
            prompt = template.format(src=d.source_lang, tgt=d.target_lang, text=source)
            examples.append(Example([{"role": "user", "content": prompt}], target, [target], where,
                                    {"source": source}))
        self._drop_report(path, dropped)
        if not examples:
            raise LeantuneError(f"{path}: no translation pairs.")
        return examples

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        import sacrebleu

        refs = [[e.response for e in examples]]
        return {"chrf": sacrebleu.corpus_chrf(predictions, refs).score,
                "bleu": sacrebleu.corpus_bleu(predictions, refs).score}

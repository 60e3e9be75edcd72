"""Instruction tuning and generative QA (``task: instruction``).

Record styles (``data.format``, or detected from the keys):
- ``alpaca``: ``instruction``, optional ``input``, ``output`` (Alpaca's seed tasks with ``instances`` too);
- ``chat``: ``messages`` with ``role``/``content`` (OpenAI style); every assistant turn is trained;
- ``prompt_completion``: ``prompt``, ``completion``;
- ``squad``: SQuAD v1.1 JSON or JSONL (``context``, ``question``, ``answers``) answered in words (generative QA);
  the model is trained on the first answer whose text is in the context (CMRC 2018 has references that are not).
Metrics: exact match and F1 of generated answers against every reference, over SQuAD's normalised words or, for
Chinese and other text without spaces, over characters as CMRC 2018 scores them (``task_args.language``, or detected
from the references; the scorer is recorded as ``qa_scorer``), and the eval loss.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from leantune.data.language import Language
from leantune.data.qa_formats import answers_of, located_answer, read_qa_records
from leantune.errors import LeantuneError
from leantune.tasks.generative import Example, GenerationArgs, GenerativeTask
from leantune.tasks.qa_metrics import qa_scores

STYLES = ("alpaca", "chat", "prompt_completion", "squad")

QA_PROMPT = "Answer the question with a short phrase taken from the context.\n\nContext: {context}\n\nQuestion: {question}"


def detect_style(record: dict[str, Any]) -> str:
    if "messages" in record:
        return "chat"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "question" in record and "context" in record:
        return "squad"
    keys = [k for k in record if k != "_source"]
    raise LeantuneError(f"{record.get('_source', '?')}: cannot tell the record style from its keys {keys}; "
                        "set data.format to alpaca, chat, prompt_completion or squad.")


class InstructionArgs(GenerationArgs):
    """``task_args`` of ``task: instruction`` (the record style is ``data.format``)."""

    language: Language | None = None
    """The language of the answers where it changes scoring (zh, Chinese, en ...): exact match and F1 over
    characters for Chinese and other text without spaces (CMRC 2018), else over words (SQuAD). None: detected."""


class InstructionTask(GenerativeTask):
    """Answer instructions, chats and questions in words; scored by exact match and F1, and the eval loss."""

    name = "instruction"
    Args = InstructionArgs
    metrics = {"exact_match": True, "f1": True, "eval_loss": False}
    default_metric = "eval_loss"

    def read_examples(self, path: str, target_path: str | None, split: str, need_target: bool = True,
                      fmt: str | None = None) -> list[Example]:
        self.no_target_file(target_path)
        fmt = fmt or self.cfg.data.format
        records = read_qa_records(path, fmt, split, self.bad)
        if not records:
            raise LeantuneError(f"{path}: no examples.")
        style = fmt if fmt in STYLES else detect_style(records[0])
        examples: list[Example] = []
        dropped: Counter = Counter()
        notes: Counter = Counter()
        for rec in records:
            try:
                converted = self._to_examples(rec, style, need_target, notes)
            except LeantuneError as e:
                self.bad.handle(e, rec.get("_source", path), str(e).split(": ", 1)[-1])
                continue
            for ex in converted:
                if (need_target and not ex.response.strip()) or not any(m["content"].strip() for m in ex.messages):
                    dropped["empty prompt or response"] += 1
                    continue
                examples.append(ex)
        self.report_dropped(path, dropped)
        if notes:
            self.report.setdefault("answer_positions", {}).update(
                {f"{Path(path).name}: {k}": v for k, v in notes.items()})
        return examples

    def _to_examples(self, rec: dict[str, Any], style: str, need_target: bool, notes: Counter) -> list[Example]:
        """The examples of one record (``notes`` counts what the data report should say about it)."""
        src = rec.get("_source", "")

        def need(key: str) -> Any:
            if key not in rec:
                if not need_target and key in ("output", "completion"):
                    return ""
                raise LeantuneError(f"{src}: missing field '{key}' for data.format {style}.")
            return rec[key]

        if style == "alpaca":
            instruction = str(need("instruction"))
            if "instances" in rec:  # Alpaca seed tasks: one instruction, several input/output instances
                pairs = [(str(i.get("input", "")), str(i.get("output", ""))) for i in rec["instances"]]
            else:
                pairs = [(str(rec.get("input") or ""), str(need("output")))]
            return [Example([{"role": "user", "content": instruction + (f"\n\n{inp}" if inp.strip() else "")}],
                            out, [out], src) for inp, out in pairs]
        if style == "prompt_completion":
            completion = str(need("completion"))
            return [Example([{"role": "user", "content": str(need("prompt"))}], completion, [completion], src)]
        if style == "chat":
            messages = need("messages")
            if not isinstance(messages, list) or not messages:
                raise LeantuneError(f"{src}: 'messages' must be a non-empty list of {{role, content}}.")
            for m in messages:
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or "content" not in m:
                    raise LeantuneError(f"{src}: each message needs role (system, user or assistant) and content.")
            if messages[-1]["role"] != "assistant":
                if not need_target:
                    return [Example([{"role": m["role"], "content": str(m["content"])} for m in messages], "", [], src)]
                raise LeantuneError(f"{src}: the last message must be the assistant's answer.")
            clean = [{"role": m["role"], "content": str(m["content"])} for m in messages]
            return [Example(clean[:-1], clean[-1]["content"], [clean[-1]["content"]], src)]
        if style == "squad":
            context, answers = str(need("context")), answers_of(rec)
            prompt = QA_PROMPT.format(context=context, question=need("question"))
            meta = {"id": rec.get("id")} if rec.get("id") is not None else {}
            located = located_answer({**rec, "context": context}, Counter())
            if answers and located is None:
                notes["answer text not in the context (trained as given)"] += 1
            response = located[0] if located else answers[0] if answers else ""
            return [Example([{"role": "user", "content": prompt}], response, answers, src, meta)]
        raise LeantuneError(f"unknown instruction data format '{style}'")

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float | str]:
        return qa_scores(predictions, [e.references or [e.response] for e in examples], self.args.language)

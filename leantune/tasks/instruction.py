"""Instruction tuning and generative QA (``task: instruction``).

Record styles (``data.format``, or detected from the keys):
- ``alpaca``: ``instruction``, optional ``input``, ``output`` (Alpaca's seed tasks with ``instances`` too);
- ``chat``: ``messages`` with ``role``/``content`` (OpenAI style); every assistant turn is trained;
- ``prompt_completion``: ``prompt``, ``completion``;
- ``squad``: SQuAD v1.1 JSON or JSONL (``context``, ``question``, ``answers``) answered in words (generative QA).
Metrics: exact match and token F1 (SQuAD normalisation) of generated answers, and the eval loss.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from leantune.data.bad_rows import BadRows
from leantune.data.readers import FILE_FORMATS, read_records
from leantune.errors import LeantuneError
from leantune.tasks.generative import Example, GenerativeTask
from leantune.tasks.qa_metrics import qa_scores

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


def squad_records(path: str) -> list[dict[str, Any]]:
    """Flatten SQuAD v1.1 JSON (data[].paragraphs[].qas[]) into one record per question."""
    import json
    from pathlib import Path

    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LeantuneError(f"{path}: not a readable SQuAD JSON file ({e}).") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise LeantuneError(f"{path}: SQuAD JSON needs a top-level 'data' list.")
    out = []
    for a, article in enumerate(obj["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            for qa in para.get("qas", []):
                out.append({"context": para["context"], "question": qa["question"], "answers": qa.get("answers", []),
                            "id": qa.get("id"), "title": article.get("title", str(a)),
                            "_source": f"{path}:data[{a}].paragraphs[{p}] question {qa.get('id')}"})
    return out


def read_qa_records(path: str, fmt: str, split: str, bad: BadRows | None = None) -> list[dict[str, Any]]:
    """SQuAD JSON, or any file format whose records have context/question/answers."""
    if fmt in ("squad", "auto") and path.endswith(".json"):
        try:
            return squad_records(path)
        except LeantuneError:
            if fmt == "squad":
                raise
    return read_records(path, fmt if fmt in FILE_FORMATS else "auto", split, bad=bad)


def answers_of(rec: dict[str, Any]) -> list[str]:
    """Answer texts of a QA record: SQuAD's list of {text, answer_start}, HF's {text: [...]}, or a string."""
    answers = rec.get("answers", rec.get("answer"))
    if isinstance(answers, dict):
        answers = answers.get("text", [])
    if isinstance(answers, str):
        answers = [answers]
    return [a["text"] if isinstance(a, dict) else str(a) for a in answers or []]


class InstructionTask(GenerativeTask):
    name = "instruction"
    default_metric = "eval_loss"
    metric_keys = ("exact_match", "f1")

    def read_examples(self, path: str, target_path: str | None, split: str,
                      need_target: bool = True) -> list[Example]:
        fmt = self.cfg.data.format
        records = read_qa_records(path, fmt, split, self.bad)
        if not records:
            raise LeantuneError(f"{path}: no examples.")
        style = fmt if fmt in ("alpaca", "chat", "prompt_completion", "squad") else detect_style(records[0])
        examples: list[Example] = []
        dropped: Counter = Counter()
        for rec in records:
            try:
                converted = self._to_examples(rec, style, need_target)
            except LeantuneError as e:
                self.bad.handle(e, rec.get("_source", path), str(e).split(": ", 1)[-1])
                continue
            for ex in converted:
                if (need_target and not ex.response.strip()) or not any(m["content"].strip() for m in ex.messages):
                    dropped["empty prompt or response"] += 1
                    continue
                examples.append(ex)
        self._drop_report(path, dropped)
        return examples

    def _to_examples(self, rec: dict[str, Any], style: str, need_target: bool = True) -> list[Example]:
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
            answers = answers_of(rec)
            prompt = QA_PROMPT.format(context=need("context"), question=need("question"))
            meta = {"id": rec.get("id")} if rec.get("id") is not None else {}
            return [Example([{"role": "user", "content": prompt}], answers[0] if answers else "", answers, src, meta)]
        raise LeantuneError(f"unknown instruction data format '{style}'")

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        return qa_scores(predictions, [e.references or [e.response] for e in examples])

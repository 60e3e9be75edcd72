"""What instruction tuning, generative QA and translation share: (prompt, response) pairs, the loss on response
tokens only, generation-based evaluation, causal LMs and encoder-decoder models alike.

A decoder-only model sees ``prompt + response + EOS`` with the prompt and the padding masked out of the loss
(``-100``), so it learns to answer and to stop. The prompt is rendered with the model's own chat template when it
has one (``data.template: auto``), else with leantune's plain template::

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Response:
    {response}<eos>

An encoder-decoder model reads the prompt as plain text and is trained on ``response + EOS``.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leantune.config import RunConfig
from leantune.data.bad_rows import BadRows
from leantune.data.batching import iterate_batches, length_grouped_batches
from leantune.data.labels import stratified_split
from leantune.data.writers import write_jsonl
from leantune.errors import LeantuneError
from leantune.generate import generate
from leantune.kernels.linear_cross_entropy import fusable_head, hidden_states_as_logits, linear_cross_entropy
from leantune.models.loading import pretrained


@dataclass
class Example:
    """One training or evaluation example: chat messages up to the answer, the answer, and what counts as right."""

    messages: list[dict[str, str]]  # the conversation before the (last) response; roles: system, user, assistant
    response: str
    references: list[str] = field(default_factory=list)
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    history_responses: bool = True  # chat data: earlier assistant turns are trained too


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """leantune's plain template (models without a chat template, or ``data.template: plain``)."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(f"{m['content']}\n\n")
        elif m["role"] == "user":
            content = m["content"]
            if "\n\n### Input:\n" not in content and m.get("input"):
                content += f"\n\n### Input:\n{m['input']}"
            parts.append(f"### Instruction:\n{content}\n\n")
        else:
            parts.append(f"### Response:\n{m['content']}\n\n")
    return "".join(parts) + "### Response:\n"


class GenerativeTask:
    """Base of the generative tasks; subclasses turn records into :class:`Example` and score predictions."""

    name = "generative"
    default_metric = "eval_loss"
    metric_keys: tuple[str, ...] = ()

    def __init__(self, cfg: RunConfig, tokenizer: Any, labels: list[str] | None = None,
                 model_path: str | None = None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.labels = None
        self.report: dict[str, Any] = {}
        self.seq2seq = False
        if model_path is not None:
            from transformers import AutoConfig

            self.seq2seq = bool(getattr(AutoConfig.from_pretrained(model_path), "is_encoder_decoder", False))
        self.use_chat = (
            not self.seq2seq and cfg.data.template != "plain" and getattr(tokenizer, "chat_template", None) is not None
        )
        if cfg.data.template == "chat" and not self.use_chat:
            raise LeantuneError(f"data.template is 'chat' but the tokenizer of {cfg.model} has no chat template.")
        self.bad = BadRows(cfg.data.on_bad_rows)
        self.eval_examples: list[Example] = []
        self.last_predictions: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- subclasses
    def read_examples(self, path: str, target_path: str | None, split: str,
                      need_target: bool = True) -> list[Example]:
        raise NotImplementedError

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError

    # ---------------------------------------------------------------- data
    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        if self.seq2seq:
            return "\n\n".join(m["content"] for m in messages if m["role"] != "system")
        if self.use_chat:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return plain_prompt(messages)

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.cfg.data.system_prompt and not any(m["role"] == "system" for m in messages):
            return [{"role": "system", "content": self.cfg.data.system_prompt}, *messages]
        return messages

    def _segments(self, ex: Example) -> list[tuple[str, bool]]:
        """The example as (text, trained?) pieces, in order."""
        messages = self._with_system(ex.messages)
        eos = self.tokenizer.eos_token or ""
        if not self.use_chat:
            return [(self.prompt_text(messages), False), (ex.response + eos, True)]
        segments: list[tuple[str, bool]] = []
        done = ""
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"] if ex.history_responses else []
        full_messages = [*messages, {"role": "assistant", "content": ex.response}]
        for i in [*turns, len(messages)]:
            prompt = self.tokenizer.apply_chat_template(full_messages[:i], add_generation_prompt=True, tokenize=False)
            full = self.tokenizer.apply_chat_template(full_messages[:i + 1], tokenize=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise LeantuneError(f"{ex.source}: the chat template does not extend turn by turn; use template: plain.")
            segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        return segments

    def encode(self, ex: Example, truncated: Counter) -> dict[str, Any]:
        """Token ids and labels (-100 where no loss) of one example, within max_length."""
        max_len = self.cfg.train.max_length
        tok = self.tokenizer
        if self.seq2seq:
            src = tok(self.prompt_text(self._with_system(ex.messages)), truncation=True, max_length=max_len)["input_ids"]
            tgt = tok(text_target=ex.response, truncation=True, max_length=max_len)["input_ids"]
            return {"input_ids": src, "attention_mask": [1] * len(src), "labels": tgt}
        ids: list[int] = []
        labels: list[int] = []
        for text, trained in self._segments(ex):
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trained else [-100] * len(piece)
        if len(ids) > max_len:
            truncated["truncated to max_length"] += 1
            first_target = next((i for i, lab in enumerate(labels) if lab != -100), len(labels))
            cut = min(len(ids) - max_len, first_target)  # drop the start of the prompt first
            ids, labels = ids[cut:], labels[cut:]
            ids, labels = ids[:max_len], labels[:max_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    def prepare(self) -> tuple[list[dict], list[dict]]:
        """Read the train and eval examples (holding some out when no eval data is given) and tokenise them."""
        d = self.cfg.data
        train = self.read_examples(d.train, d.train_target, d.train_split)
        if d.eval or d.eval_target:
            evals = self.read_examples(d.eval or d.train, d.eval_target, d.eval_split or "validation")
        else:
            tr, ev = stratified_split([0] * len(train), d.eval_fraction, self.cfg.train.seed)
            train, evals = [train[i] for i in tr], [train[i] for i in ev]
            self.report["eval_split_from_train"] = len(evals)
        if not train or not evals:
            raise LeantuneError(f"{d.train}: not enough examples ({len(train)} train, {len(evals)} eval).")
        truncated: Counter = Counter()
        self.eval_examples = evals
        train_f = [self.encode(e, truncated) for e in train]
        eval_f = [self.encode(e, truncated) for e in evals]
        self.report.update(train=len(train), eval=len(evals), truncated=truncated["truncated to max_length"])
        if self.bad.total:
            self.report["bad_rows_skipped"] = self.bad.report()
            print(f"leantune: skipped {self.bad.total} bad rows: {self.bad.report()}", file=sys.stderr, flush=True)
        return train_f, eval_f

    def _drop_report(self, path: str, dropped: Counter) -> None:
        if dropped:
            print(f"leantune: {path}: skipped {dict(dropped)}", file=sys.stderr, flush=True)
            self.report.setdefault("dropped", {}).update({f"{Path(path).name}: {k}": v for k, v in dropped.items()})

    # ---------------------------------------------------------------- model, loss
    def build_model(self, path: str) -> nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        model = pretrained(cls, path, self.cfg)
        model.config.use_cache = False  # no KV cache while training; generation asks for it explicitly
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.pad_id
        return model

    def _outputs_and_targets(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's per-position outputs and the targets they predict, aligned."""
        labels = batch["labels"]
        if self.seq2seq:
            decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels.clamp(min=0))
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        decoder_input_ids=decoder_input_ids, use_cache=False)
            return out.logits, labels
        if "position_ids" in batch:  # packed rows: positions restart per example, attention stays inside each
            out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        else:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        outputs = out.logits
        if outputs.shape[1] > labels.shape[1]:  # prompt tuning puts virtual tokens in front
            outputs = outputs[:, -labels.shape[1]:]
        return outputs[:, :-1], labels[:, 1:]

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(summed cross-entropy over response tokens, number of response tokens) of one micro-batch.

        For decoder-only models with a plain LM head, the head is fused with the loss and applied only to the
        response positions, chunk by chunk: the [tokens x vocab] logits never exist.
        """
        head = None if self.seq2seq else fusable_head(model)
        if head is None:
            logits, targets = self._outputs_and_targets(model, batch)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                   ignore_index=-100, reduction="sum")
            return loss, int((targets != -100).sum())
        with hidden_states_as_logits(model, head):
            hidden, targets = self._outputs_and_targets(model, batch)
        keep = targets != -100
        loss = linear_cross_entropy(hidden[keep], head.weight, targets[keep], head.bias)
        return loss, int(keep.sum())

    def fused_head_bytes(self, model: nn.Module, tokens: int, chunk_size: int = 512) -> int:
        """Transient of the fused head: one chunk's fp32 logits (0 when the head is not fused)."""
        head = None if self.seq2seq else fusable_head(model)
        return 0 if head is None else min(tokens, chunk_size) * head.weight.shape[0] * 4

    def batch_count(self, batch: dict[str, torch.Tensor]) -> int:
        labels = batch["labels"]
        return int((labels != -100).sum()) if self.seq2seq else int((labels[:, 1:] != -100).sum())

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def eval_loss(self, model: nn.Module, features: list[dict], device: torch.device) -> float:
        was_training = model.training
        model.eval()
        bs = self.cfg.train.eval_batch_size or self.cfg.train.batch_size
        batches = length_grouped_batches([len(f["input_ids"]) for f in features], bs, seed=0, shuffle=False)
        total, count = 0.0, 0
        for batch in iterate_batches(features, batches, self.pad_id):
            loss, n = self.batch_loss(model, {k: v.to(device) for k, v in batch.items()})
            total, count = total + float(loss), count + n
        model.train(was_training)
        return total / max(count, 1)

    def generate_for(self, model: nn.Module, examples: list[Example], **kwargs: Any) -> list[str]:
        prompts = [self.prompt_text(self._with_system(e.messages)) for e in examples]
        bs = self.cfg.train.eval_batch_size or self.cfg.train.batch_size
        return generate(model, self.tokenizer, prompts, max_new_tokens=kwargs.pop("max_new_tokens",
                        self.cfg.train.max_new_tokens), batch_size=bs, add_special_tokens=self.seq2seq, **kwargs)

    def evaluate(self, model: nn.Module, features: list[dict], device: torch.device,
                 examples: list[Example] | None = None) -> dict[str, Any]:
        """eval_loss over all eval examples, plus generation metrics on the first ``eval_max_examples``."""
        metrics: dict[str, Any] = {"eval_loss": self.eval_loss(model, features, device)}
        examples = self.eval_examples if examples is None else examples
        limit = self.cfg.train.eval_max_examples
        subset = examples if limit is None else examples[:limit]
        if subset:
            predictions = self.generate_for(model, subset)
            metrics.update(self.score(predictions, subset))
            metrics["generated"] = len(subset)
            self.last_predictions = [
                {"prompt": e.messages[-1]["content"] if e.messages else "", "reference": e.references or [e.response],
                 "prediction": p, **e.meta}
                for e, p in zip(subset, predictions, strict=True)
            ]
        return metrics

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {k: metrics[k] for k in (*self.metric_keys, "eval_loss") if k in metrics}

    def save_artifacts(self, run_dir: Path) -> None:
        """Nothing before training; predictions are written by :meth:`finish`."""

    def finish(self, run_dir: Path) -> None:
        """Write the last evaluation's predictions beside their references."""
        if self.last_predictions:
            write_jsonl(run_dir / "predictions.jsonl", self.last_predictions)

    # ---------------------------------------------------------------- eval / predict on files
    def read_file(self, path: str, fmt: str = "auto", need_labels: bool = True,
                  target: str | None = None) -> tuple[list[Example], list[dict]]:
        """Examples and features of a file for eval (answers needed) or predict (prompts are enough)."""
        examples = self.read_examples(path, target, self.cfg.data.eval_split or "train", need_target=need_labels)
        return examples, [self.encode(e, Counter()) for e in examples]

    def evaluate_file(self, model: nn.Module, examples: list[Example], features: list[dict],
                      device: torch.device) -> dict[str, Any]:
        return self.evaluate(model, features, device, examples)

    def predict(self, model: nn.Module, examples: list[Example], features: list[dict],
                device: torch.device) -> list[dict[str, Any]]:
        return [{"prediction": p} for p in self.generate_for(model, examples)]

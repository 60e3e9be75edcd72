"""What instruction tuning, generative QA and translation share: (prompt, response) pairs, the loss on response
tokens only, generation-based evaluation, causal LMs and encoder-decoder models alike.

A decoder-only model sees ``prompt + response + EOS`` with the prompt and the padding masked out of the loss
(``-100``), so it learns to answer and to stop. The prompt is rendered with the model's own chat template when it
has one (``task_args.template: auto``), else with leantune's plain template::

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Response:
    {response}<eos>

An encoder-decoder model reads the prompt as plain text and is trained on ``response + EOS``.

An example longer than ``max_length`` loses the start of its prompt first (after a leading BOS token, which
stays); a response that does not fit on its own keeps its first tokens. Both are counted in the data report
(``truncated``, ``response_truncated``), and more than 1% truncated is a warning. Unset, ``max_length`` is chosen
from the data (:func:`pick_max_length`) and said on stderr.
"""

from __future__ import annotations

import math
import sys
from abc import abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from leantune.data.bad_rows import BadRows
from leantune.errors import LeantuneError
from leantune.generate import generate
from leantune.kernels.linear_cross_entropy import (
    chunk_rows,
    fusable_head,
    hidden_states_as_logits,
    linear_cross_entropy,
)
from leantune.tasks.base import Task, TaskArgs

if TYPE_CHECKING:
    from leantune.config import RunConfig


def pick_max_length(lengths: list[int], cap: int | None, multiple: int = 8) -> tuple[int, str]:
    """A max_length for examples of ``lengths`` tokens, and why: the longest, or the 99th percentile (nearest
    rank) where the longest is more than twice that (a few outliers are cut rather than sizing every batch's
    memory on them); rounded up to ``multiple``, at most ``cap``."""
    ordered = sorted(lengths)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    longest = ordered[-1]
    wanted, rule = (longest, "the longest") if longest <= 2 * p99 else (p99, "the 99th percentile")
    chosen = max(multiple, math.ceil(wanted / multiple) * multiple)
    if cap is not None:
        chosen = min(chosen, cap)
    return chosen, f"{rule} of {len(ordered)} tokenised lengths: 99th percentile {p99}, longest {longest}"


def context_length(model_config: Any, tokenizer: Any) -> int | None:
    """The longest sequence the model takes: its config's position limit, else the tokenizer's (None: no limit
    known, e.g. T5's relative positions)."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    limits = [getattr(text_config, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    known = [int(n) for n in limits if isinstance(n, int) and 1 < n < 10**7]  # tokenizers say 1e30 for "none"
    return min(known) if known else None


class GenerationArgs(TaskArgs):
    """``task_args`` every generative task has."""

    template: Literal["auto", "chat", "plain"] = "auto"
    """The prompt template: the model's chat template (auto, when it has one) or leantune's plain
    '### Instruction / ### Input / ### Response' template."""
    system_prompt: str | None = None
    """A system message put in front of every conversation that has none."""
    eval_max_examples: int | None = Field(100, ge=0)
    """How many eval examples are generated for the metrics (None: all; 0: eval loss only)."""
    max_new_tokens: int = Field(64, gt=0)
    """The longest generation in evaluation."""


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
    """leantune's plain template (models without a chat template, or ``task_args.template: plain``)."""
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


def starts_with_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` puts its BOS token before a text by itself (Gemma's and Llama's do, GPT-2's not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


class GenerativeTask(Task):
    """Base of the generative tasks; subclasses turn records into :class:`Example` and score predictions."""

    generates = True
    default_max_length = None  # chosen from the data by prepare()
    args: GenerationArgs

    def __init__(self, cfg: RunConfig, tokenizer: Any, model_config: Any) -> None:
        super().__init__(cfg, tokenizer, model_config)
        self.use_chat = (not self.seq2seq and self.args.template != "plain"
                         and getattr(tokenizer, "chat_template", None) is not None)
        if self.args.template == "chat" and not self.use_chat:
            raise LeantuneError(f"task_args.template is 'chat' but the tokenizer of {cfg.model} has no chat template.")
        # The plain template starts with the BOS token where the tokenizer puts one before a text (Gemma: without
        # it the model degenerates); chat templates write their own.
        self.bos = tokenizer.bos_token if not self.seq2seq and starts_with_bos(tokenizer) else ""
        self.bad = BadRows(cfg.data.on_bad_rows)
        self.eval_examples: list[Example] = []

    @property
    def seq2seq(self) -> bool:
        return bool(self.model_config.is_encoder_decoder)

    # ---------------------------------------------------------------- subclasses
    @abstractmethod
    def read_examples(self, path: str, target_path: str | None, split: str, need_target: bool = True,
                      fmt: str | None = None) -> list[Example]:
        """The examples of a file (``target_path``: the aligned answers, for tasks that have them; ``fmt``: the
        file format or record style, default ``data.format``)."""

    @abstractmethod
    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float | str]:
        """Metrics of generated ``predictions`` against the examples' references."""

    def eval_files(self) -> tuple[str, str | None] | None:
        """(eval file, its aligned answers file) from the config, or None: hold part of the training data out."""
        data = self.cfg.data
        return (data.eval, None) if data.eval else None

    def train_target(self) -> str | None:
        """The aligned answers file of the training data, for tasks that have one."""
        return None

    # ---------------------------------------------------------------- prompts, tokens
    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The prompt as the model reads it: through the chat template, the plain template, or (seq2seq) as is."""
        if self.seq2seq:
            return "\n\n".join(m["content"] for m in messages if m["role"] != "system")
        if self.use_chat:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.bos + plain_prompt(messages)

    def conversation_prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt for a conversation as in training: the system prompt put in front, then the template."""
        return self.prompt_text(self._with_system(messages))

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.args.system_prompt and not any(m["role"] == "system" for m in messages):
            return [{"role": "system", "content": self.args.system_prompt}, *messages]
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
                raise LeantuneError(f"{ex.source}: the chat template does not extend turn by turn; use task_args.template: plain.")
            segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        return segments

    def _fit(self, text: str, target: bool, truncated: Counter) -> list[int]:
        """Seq2seq: the token ids of ``text`` (special tokens included) within max_length. A too-long source
        loses its start, a too-long target its end (counted)."""
        max_len = self.cfg.train.max_length
        kwargs = {"text_target": text} if target else {"text": text}
        enc = self.tokenizer(**kwargs, return_special_tokens_mask=True)
        ids, special = enc["input_ids"], enc["special_tokens_mask"]
        if max_len is None or len(ids) <= max_len:  # None: not chosen yet (prepare() chooses it), nothing is cut
            return ids
        truncated["response_truncated" if target else "truncated"] += 1
        content = [i for i, s in enumerate(special) if not s] or [0]
        lo, hi = content[0], content[-1] + 1
        room = max(0, max_len - (len(ids) - (hi - lo)))
        body = ids[lo:hi][:room] if target else ids[lo:hi][hi - lo - room:]
        return ids[:lo] + body + ids[hi:]

    def encode(self, ex: Example, truncated: Counter) -> dict[str, Any]:
        """Token ids and labels (-100 where no loss) of one example, within max_length: the start of the prompt
        goes first; a response longer than max_length on its own keeps its head. Both are counted."""
        if self.seq2seq:
            src = self._fit(self.prompt_text(self._with_system(ex.messages)), False, truncated)
            return {"input_ids": src, "attention_mask": [1] * len(src), "labels": self._fit(ex.response, True, truncated)}
        ids: list[int] = []
        labels: list[int] = []
        for text, trained in self._segments(ex):
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trained else [-100] * len(piece)
        max_len = self.cfg.train.max_length
        if max_len is not None and len(ids) > max_len:
            truncated["truncated"] += 1
            first_target = next((i for i, lab in enumerate(labels) if lab != -100), len(labels))
            keep = int(bool(ids) and ids[0] == self.tokenizer.bos_token_id)  # BOS stays (Gemma needs it)
            cut = max(0, min(len(ids) - max_len, first_target - keep))  # then the start of the prompt goes first
            ids, labels = ids[:keep] + ids[keep + cut:], labels[:keep] + labels[keep + cut:]
            if len(ids) > max_len:  # the response alone does not fit: keep its head
                truncated["response_truncated"] += 1
                ids, labels = ids[:max_len], labels[:max_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    # ---------------------------------------------------------------- data
    def prepare(self) -> tuple[list[dict], list[dict]]:
        """Read the train and eval examples (holding some out when no eval data is given) and tokenise them."""
        data = self.cfg.data
        train = self.read_examples(data.train, self.train_target(), data.train_split)
        eval_files = self.eval_files()
        if eval_files:
            evals = self.read_examples(*eval_files, data.eval_split or "validation")
        else:
            train, evals = self.hold_out(train)
        if not train or not evals:
            raise LeantuneError(f"{data.train}: not enough examples ({len(train)} train, {len(evals)} eval).")
        if self.cfg.train.max_length is None:
            self.cfg.train.max_length = self.choose_max_length(train + evals)
        truncated: Counter = Counter()
        self.eval_examples = evals
        train_f = [self.encode(e, truncated) for e in train]
        eval_f = [self.encode(e, truncated) for e in evals]
        self.report.update(train=len(train), eval=len(evals), truncated=truncated["truncated"],
                           response_truncated=truncated["response_truncated"])
        cut = truncated["truncated"] + (truncated["response_truncated"] if self.seq2seq else 0)
        if cut > 0.01 * (len(train) + len(evals)):
            print(f"leantune: warning: {cut} of {len(train) + len(evals)} examples truncated to max_length "
                  f"{self.cfg.train.max_length}; raise train.max_length (or leave it unset to choose from the data)",
                  file=sys.stderr, flush=True)
        self.report_bad_rows(self.bad)
        return train_f, eval_f

    def full_length(self, ex: Example) -> int:
        """The tokens of ``ex`` untruncated (seq2seq: the longer of its source and its target)."""
        if self.seq2seq:
            source = self.tokenizer(self.prompt_text(self._with_system(ex.messages)))["input_ids"]
            return max(len(source), len(self.tokenizer(text_target=ex.response)["input_ids"]))
        return sum(len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) for text, _ in self._segments(ex))

    def choose_max_length(self, examples: list[Example]) -> int:
        """``train.max_length`` from the tokenised lengths of ``examples`` (:func:`pick_max_length`), said on stderr
        and kept in the data report."""
        lengths = [self.full_length(ex) for ex in examples]
        cap = context_length(self.model_config, self.tokenizer)
        chosen, why = pick_max_length(lengths, cap)
        print(f"leantune: max_length: chose {chosen} ({why}; cap {cap or 'none'}, the model's context length)",
              file=sys.stderr, flush=True)
        self.report["max_length_chosen"] = chosen
        return chosen

    # ---------------------------------------------------------------- model, loss
    @classmethod
    def model_class(cls, model_config: Any) -> Any:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM if model_config.is_encoder_decoder else AutoModelForCausalLM

    def build_model(self, path: str, meta: bool = False) -> nn.Module:
        model = self.load_model(self.model_class(self.model_config), path, meta)
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

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy summed over the response tokens of one micro-batch.

        For decoder-only models with a plain LM head, the head is fused with the loss and applied only to the
        response positions, chunk by chunk: the [tokens x vocab] logits never exist.
        """
        head = None if self.seq2seq else fusable_head(model)
        if head is None:
            logits, targets = self._outputs_and_targets(model, batch)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                   ignore_index=-100, reduction="sum")
        with hidden_states_as_logits(model, head):
            hidden, targets = self._outputs_and_targets(model, batch)
        keep = targets != -100
        return linear_cross_entropy(hidden[keep], head.weight, targets[keep], head.bias)

    def batch_count(self, batch: dict[str, torch.Tensor]) -> int:
        """The response tokens that are targets (decoder-only: every label but the first predicts one)."""
        labels = batch["labels"]
        return int((labels != -100).sum()) if self.seq2seq else int((labels[:, 1:] != -100).sum())

    def fused_head_bytes(self, model: nn.Module, tokens: int) -> int:
        """Transient of the fused head: one chunk's fp32 logits (0 when the head is not fused)."""
        head = None if self.seq2seq else fusable_head(model)
        return 0 if head is None else min(tokens, chunk_rows(head.weight.shape[0])) * head.weight.shape[0] * 4

    # ---------------------------------------------------------------- evaluation, generation
    def eval_loss(self, model: nn.Module, features: list[dict], device: torch.device) -> float:
        """Mean cross-entropy per response token over ``features``."""
        sums = self.eval_batches(model, features, device,
                                 lambda b: (float(self.batch_loss(model, b)), self.batch_count(b)))
        return sum(loss for _, (loss, _) in sums) / max(sum(n for _, (_, n) in sums), 1)

    def generate(self, model: nn.Module, prompts: list[str], **options: Any) -> list[str]:
        """Completions of user ``prompts``, each rendered as the first user turn of a conversation."""
        return self.generate_examples(model, [Example([{"role": "user", "content": p}], "") for p in prompts],
                                      **options)

    def generate_examples(self, model: nn.Module, examples: list[Example], **options: Any) -> list[str]:
        """Completions of the examples' prompts; ``options``: max_new_tokens, temperature, top_p, seed."""
        prompts = [self.conversation_prompt(e.messages) for e in examples]
        options.setdefault("max_new_tokens", self.args.max_new_tokens)
        return generate(model, self.tokenizer, prompts, batch_size=self.eval_batch_size,
                        add_special_tokens=self.seq2seq, **options)

    def evaluate(self, model: nn.Module, features: list[dict], device: torch.device,
                 examples: list[Example] | None = None) -> dict[str, Any]:
        """eval_loss over all eval examples, plus generation metrics on the first ``eval_max_examples``."""
        metrics: dict[str, Any] = {"eval_loss": self.eval_loss(model, features, device)}
        examples = self.eval_examples if examples is None else examples
        limit = self.args.eval_max_examples
        subset = examples if limit is None else examples[:limit]
        if subset:
            predictions = self.generate_examples(model, subset)
            metrics.update(self.score(predictions, subset))
            metrics["generated"] = len(subset)
            self.last_predictions = [
                {"prompt": e.messages[-1]["content"] if e.messages else "", "reference": e.references or [e.response],
                 "prediction": p, **e.meta}
                for e, p in zip(subset, predictions, strict=True)
            ]
        return metrics

    # ---------------------------------------------------------------- eval / predict on files
    def read_file(self, path: str, fmt: str = "auto", labelled: bool = True,
                  target: str | None = None) -> tuple[list[Example], list[dict]]:
        """Examples and features of a file for eval (answers needed) or predict (prompts are enough)."""
        examples = self.read_examples(path, target, self.cfg.data.eval_split or "train", labelled, fmt)
        self.report_bad_rows(self.bad, path)
        return examples, [self.encode(e, Counter()) for e in examples]

    def evaluate_file(self, model: nn.Module, records: list[Example], features: list[dict],
                      device: torch.device) -> dict[str, Any]:
        return self.evaluate(model, features, device, records)

    def predict(self, model: nn.Module, records: list[Example], features: list[dict],
                device: torch.device) -> list[dict[str, Any]]:
        """The input of each example (the source text, or the last user message) and the generated text."""
        return [{"input": e.meta.get("source") or e.messages[-1]["content"], "prediction": p}
                for e, p in zip(records, self.generate_examples(model, records), strict=True)]

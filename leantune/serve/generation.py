"""Continuous batching for a causal LM: one scheduler thread, many adapters in every decode step.

Between two decode steps the scheduler admits waiting requests (each is prefilled alone, with its own adapter and
virtual tokens, then its cache row joins the batch), and after each step finished or cancelled rows leave at once.
Rows are kept sorted by adapter, so every adapter's rows are one contiguous segment of the batch.

Greedy decoding gives the tokens ``leantune generate`` gives for the same prompt alone: same prompt tokens, same
positions, same adapter arithmetic; padding is masked and each row keeps its own positions.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from leantune.serve.cache import BatchKV, kv_of, make_cache
from leantune.serve.layers import RowContext, Segment
from leantune.serve.text import TextStream
from leantune.serve.weights import AdapterWeights
from leantune.serve.worker import Worker
from leantune.system.memory import heap_trimmer


@dataclass
class GenRequest:
    """One completion: prompt ids, sampling settings, and where its output goes (``emit`` is called from the
    scheduler thread with (text delta, finish reason or None))."""

    prompt: list[int]
    max_tokens: int
    emit: Callable[[str, str | None], None]
    adapter: AdapterWeights | None = None
    order: int = -1  # adapter's sort key; the base sorts first
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Row:
    req: GenRequest
    position: int
    last: int
    text: TextStream
    generator: torch.Generator | None


class GenerationEngine(Worker):
    """Runs the decode loop of one base model in its own thread."""

    def __init__(self, model: nn.Module, tokenizer: Any, ctx: RowContext, lock: threading.Lock, stop_ids: list[int],
                 sample: Callable, cache_kwarg: str, max_batch: int = 32, max_queue: int = 256,
                 context_length: int | None = None, on_step: Callable[[int], None] | None = None) -> None:
        super().__init__(max_queue, "leantune-generate")
        self.model, self.tokenizer, self.ctx, self.lock = model, tokenizer, ctx, lock
        self.stop_ids = set(stop_ids)
        self.sample = sample
        self.cache_kwarg = cache_kwarg
        self.max_batch = max_batch
        self.context_length = context_length
        self.on_step = on_step
        self.device = next(model.parameters()).device
        self.trim_heap = heap_trimmer(self.device)
        self.rows: list[_Row] = []
        self.admitting = 0
        self.batch = BatchKV(max_batch)

    @property
    def batch_size(self) -> int:
        """Sequences in the running batch, counting those being prefilled to join it."""
        return len(self.rows) + self.admitting

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.rows and not self.stopping:
                    self.cond.wait()
                if self.stopping and not self.pending and not self.rows:
                    return
                admit = []
                while self.pending and len(self.rows) + len(admit) < self.max_batch:
                    admit.append(self.pending.popleft())
                self.admitting = len(admit)
            for req in admit:
                self._guarded(self._admit, req, [req])
                self.admitting -= 1
            if self.rows:
                self._guarded(self._decode_step, None, [r.req for r in self.rows])
            self.trim_heap()

    def _guarded(self, fn: Callable, arg: Any, affected: list[GenRequest]) -> None:
        """A failure inside the model ends the requests it touched with an error, never the server."""
        try:
            fn() if arg is None else fn(arg)
        except Exception as e:  # noqa: BLE001 - reported to the affected clients
            failed = {id(r) for r in affected}
            for r in affected:
                r.emit("", f"error: {type(e).__name__}: {e}")
            keep = [i for i, row in enumerate(self.rows) if id(row.req) not in failed]
            self.rows = [self.rows[i] for i in keep]
            self.batch.keep(keep)

    def _segments(self) -> list[Segment]:
        segments: list[Segment] = []
        for i, row in enumerate(self.rows):
            adapter = row.req.adapter
            if adapter is None:
                continue
            if segments and segments[-1].ops is adapter.ops:
                segments[-1].end = i + 1
            else:
                segments.append(Segment(adapter.ops, i, i + 1))
        return segments

    def _forward(self, segments: list[Segment], **inputs: Any) -> Any:
        with self.lock, self.ctx.use(segments), torch.no_grad():
            return self.model(use_cache=True, logits_to_keep=1, **inputs)

    def _admit(self, req: GenRequest) -> None:
        if req.cancelled.is_set():
            req.emit("", "cancelled")
            return
        ids = torch.tensor([req.prompt], device=self.device)
        n_prompt = ids.shape[1]
        virtual = req.adapter.virtual if req.adapter is not None else None
        segments = [Segment(req.adapter.ops, 0, 1)] if req.adapter is not None and req.adapter.ops else []
        inputs: dict[str, Any] = {}
        n_virtual = 0
        if virtual is None:
            inputs["input_ids"] = ids
            positions = torch.arange(n_prompt, device=self.device)
        elif virtual.embeddings is not None:  # prompt tuning: virtual embeddings before the prompt's
            n_virtual = virtual.n
            with self.lock, self.ctx.use(segments), torch.no_grad():
                words = self.model.get_input_embeddings()(ids)
            inputs["inputs_embeds"] = torch.cat([virtual.embeddings[None].to(words.dtype), words], dim=1)
            positions = torch.arange(n_virtual + n_prompt, device=self.device)
        else:  # prefix tuning: the prefixes are the cache's first entries; positions after them
            n_virtual = virtual.n
            inputs["input_ids"] = ids
            inputs[self.cache_kwarg] = make_cache([(k.clone(), v.clone()) for k, v in virtual.prefix])
            positions = torch.arange(n_virtual, n_virtual + n_prompt, device=self.device)
        length = n_virtual + n_prompt
        mask = torch.ones(1, length, dtype=torch.long, device=self.device)
        out = self._forward(segments, attention_mask=mask, position_ids=positions[None], **inputs)
        generator = torch.Generator(device=self.device).manual_seed(req.seed) if req.seed is not None else None
        row = _Row(req, length, -1, TextStream(self.tokenizer, req.stop), generator)
        token = self._pick(out.logits[:, -1], [row])[0]
        if self._take(row, token):
            return
        index = bisect.bisect_right([r.req.order for r in self.rows], req.order)
        self.batch.insert(index, kv_of(self._cache_of(out)), mask)
        self.rows.insert(index, row)

    def _cache_of(self, out: Any) -> Any:
        value = getattr(out, "cache", None)
        return value if value is not None else out.past_key_values

    def _decode_step(self) -> None:
        live = [i for i, row in enumerate(self.rows) if not row.req.cancelled.is_set()]
        if len(live) != len(self.rows):
            for row in self.rows:
                if row.req.cancelled.is_set():
                    row.req.emit("", "cancelled")
            self.rows = [self.rows[i] for i in live]
            self.batch.keep(live)
            if not self.rows:
                return
        cache, mask = self.batch.step_inputs()
        ids = torch.tensor([[row.last] for row in self.rows], device=self.device)
        positions = torch.tensor([[row.position] for row in self.rows], device=self.device)
        out = self._forward(self._segments(), input_ids=ids, attention_mask=mask, position_ids=positions,
                            **{self.cache_kwarg: cache})
        self.batch.after_step(mask)
        if self.on_step is not None:
            self.on_step(len(self.rows))
        tokens = self._pick(out.logits[:, -1], self.rows)
        keep = []
        for i, (row, token) in enumerate(zip(self.rows, tokens, strict=True)):
            row.position += 1
            if not self._take(row, token):
                keep.append(i)
        if len(keep) != len(self.rows):
            self.rows = [self.rows[i] for i in keep]
            self.batch.keep(keep)

    def _pick(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Each row's next token: greedy rows in one argmax, sampled rows with their own generator."""
        tokens = logits.argmax(-1).tolist()
        for i, row in enumerate(rows):
            if row.req.temperature > 0:
                tokens[i] = int(self.sample(logits[i:i + 1], row.req.temperature, row.req.top_p, row.generator)[0])
        return tokens

    def _take(self, row: _Row, token: int) -> bool:
        """Record ``token`` for the row's request; True when the request is finished (and told so)."""
        req = row.req
        if token in self.stop_ids and not req.ignore_eos:
            req.emit(row.text.finish(), "stop")
            return True
        req.tokens.append(token)
        row.last = token
        delta = row.text.push(token)
        if row.text.stopped:
            req.emit(delta, "stop")
            return True
        full = self.context_length is not None and row.position >= self.context_length
        if len(req.tokens) >= req.max_tokens or full:
            req.emit(delta + row.text.finish(), "length")
            return True
        if delta:
            req.emit(delta, None)
        return False

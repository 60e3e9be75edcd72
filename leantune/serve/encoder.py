"""Classification and extractive QA: one forward pass per request, requests for any adapters batched together.

A worker thread takes every waiting request (up to ``max_rows`` rows), orders the rows by adapter, pads them into
one batch and runs it once; each adapter's rows get its own layers and its own head.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from leantune.serve.layers import RowContext, Segment
from leantune.serve.weights import AdapterWeights
from leantune.serve.worker import Worker
from leantune.system.memory import heap_trimmer


@dataclass
class EncodeRequest:
    """Tokenised rows (``input_ids``, ``attention_mask``, maybe ``token_type_ids``) for one adapter; ``done`` gets
    the model output of each row (sliced to the row's length), or an exception."""

    rows: list[dict[str, list[int]]]
    done: Callable[[list[dict[str, torch.Tensor]] | Exception], None]
    adapter: AdapterWeights | None = None
    order: int = -1
    cancelled: threading.Event = field(default_factory=threading.Event)


class EncoderEngine(Worker):
    def __init__(self, model: nn.Module, ctx: RowContext, lock: threading.Lock, pad_id: int, max_rows: int = 64,
                 max_queue: int = 256, on_step: Callable[[int], None] | None = None) -> None:
        super().__init__(max_queue, "leantune-encode")
        self.model, self.ctx, self.lock, self.pad_id = model, ctx, lock, pad_id
        self.max_rows = max_rows
        self.on_step = on_step
        self.device = next(model.parameters()).device
        self.trim_heap = heap_trimmer(self.device)
        self.busy = 0

    @property
    def batch_size(self) -> int:
        return self.busy

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.stopping:
                    self.cond.wait()
                if self.stopping and not self.pending:
                    return
                take, rows = [], 0
                while self.pending and (not take or rows + len(self.pending[0].rows) <= self.max_rows):
                    req = self.pending.popleft()
                    if not req.cancelled.is_set():
                        take.append(req)
                        rows += len(req.rows)
            if take:
                self.busy = rows
                try:
                    self._run(sorted(take, key=lambda r: r.order))
                except Exception as e:  # noqa: BLE001 - reported to the affected clients, never the server's end
                    for req in take:
                        req.done(e)
                self.busy = 0
                self.trim_heap()

    def _run(self, reqs: list[EncodeRequest]) -> None:
        rows = [row for req in reqs for row in req.rows]
        segments: list[Segment] = []
        start = 0
        for req in reqs:
            end = start + len(req.rows)
            if req.adapter is not None:
                segments.append(Segment(req.adapter.ops, start, end))
            start = end
        longest = max(len(r["input_ids"]) for r in rows)
        batch = {}
        for key in rows[0]:
            fill = self.pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor([r[key] + [fill] * (longest - len(r[key])) for r in rows], device=self.device)
        with self.lock, self.ctx.use(segments), torch.no_grad():
            out = self.model(**batch)
        if self.on_step is not None:
            self.on_step(len(rows))
        fields = {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k.endswith("logits")}
        start = 0
        for req in reqs:
            results = []
            for i in range(start, start + len(req.rows)):
                n = len(rows[i]["input_ids"])
                results.append({k: (v[i, :n] if v.dim() == 2 and k != "logits" else v[i]).float().cpu()
                                for k, v in fields.items()})
            start += len(req.rows)
            req.done(results)

"""The handlers of the encoder endpoints: ``/v1/classify`` and ``/v1/answer`` (extractive QA) through the encoder
engine."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import torch
from starlette.concurrency import run_in_threadpool

from leantune.serve.encoder import EncodeRequest
from leantune.serve.gate import ApiError
from leantune.serve.registry import ServedAdapter, ServedBase
from leantune.serve.schemas import AnswerRequest, ClassifyRequest

logger = logging.getLogger("leantune.serve")


def _adapter_for(server: Any, name: str, kind: str) -> ServedAdapter:
    found = server.registry.lookup(name)
    base = found.base if isinstance(found, ServedAdapter) else found
    if base.kind != kind:
        endpoint = {"generate": "/v1/chat/completions", "classify": "/v1/classify", "answer": "/v1/answer"}[base.kind]
        raise ApiError(400, f"'{name}' is a {base.kind} model; use {endpoint}.", param="model")
    if isinstance(found, ServedBase):
        trained = sorted(a.name for a in server.registry.adapters.values() if a.base is found)
        raise ApiError(400, f"'{name}' is a base model without a trained head; name one of its adapters: {trained}.",
                       param="model")
    return found


async def _encode(server: Any, adapter: ServedAdapter, rows: list[dict[str, list[int]]]) -> list[dict]:
    """Run ``rows`` through the adapter's base in the next batch; the output of every row."""
    weights = await run_in_threadpool(server.registry.acquire, adapter)
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def done(result: Any) -> None:
        def settle() -> None:
            if not future.done():
                future.set_result(result)

        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass

    req = EncodeRequest(rows, done, weights, adapter.order)
    try:
        adapter.base.engine.submit(req)
        result = await future
    except asyncio.CancelledError:
        req.cancelled.set()
        raise
    finally:
        server.registry.release(adapter)
    if isinstance(result, Exception):
        logger.error("leantune serve: %s failed on a batch: %s: %s", adapter.name, type(result).__name__, result)
        raise ApiError(500, "the model failed on this request's batch (the server's log has the details).",
                       kind="server_error")
    return result


def _rows(encoding: Any, count: int) -> list[dict[str, list[int]]]:
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding]
    return [{k: list(encoding[k][i]) for k in keys} for i in range(count)]


async def classify(server: Any, body: ClassifyRequest) -> dict[str, Any]:
    adapter = _adapter_for(server, body.model, "classify")
    run, tok = adapter.run, adapter.base.tokenizer
    texts: list[str] = body.input  # type: ignore[assignment]

    def encode() -> list[dict[str, list[int]]]:
        with adapter.base.text_lock:
            return _rows(tok(texts, truncation=True, max_length=run.cfg.train.max_length), len(texts))

    rows = await run_in_threadpool(encode)
    outputs = await _encode(server, adapter, rows)
    labels = run.labels or []
    logits = torch.stack([o["logits"][:len(labels)] for o in outputs])
    multi = run.cfg.task_args.multi_label
    probs = torch.sigmoid(logits) if multi else torch.softmax(logits, -1)
    data = []
    for i, p in enumerate(probs.tolist()):
        chosen = [lab for lab, v in zip(labels, p, strict=True) if v > 0.5] if multi else [labels[p.index(max(p))]]
        data.append({"index": i, "label": ",".join(chosen), "probabilities": dict(zip(labels, p, strict=True))})
    tokens = sum(len(r["input_ids"]) for r in rows)
    server.metrics.tokens(body.model, tokens, 0)
    return {"object": "list", "model": body.model, "labels": labels, "multi_label": multi, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def answer(server: Any, body: AnswerRequest) -> dict[str, Any]:
    adapter = _adapter_for(server, body.model, "answer")
    run, tok = adapter.run, adapter.base.tokenizer
    limit = server.options.max_prompt_tokens

    def encode() -> Any:
        with adapter.base.text_lock:
            n_context = len(tok(body.context, add_special_tokens=False)["input_ids"])
            if n_context > limit:
                raise ApiError(400, f"context: {n_context} tokens; the limit is {limit} (--max-prompt-tokens).",
                               param="context", code="prompt_too_long")
            return adapter.task.windows([body.question], [body.context])  # as the run was trained

    windows = await run_in_threadpool(encode)
    rows = _rows(windows, len(windows["input_ids"]))
    outputs = await _encode(server, adapter, rows)
    start, end, score = best_char_span(outputs, windows["offset_mapping"], run.cfg.task_args.max_answer_length)
    tokens = sum(len(r["input_ids"]) for r in rows)
    server.metrics.tokens(body.model, tokens, 0)
    return {"object": "answer", "model": body.model, "answer": body.context[start:end], "start": start, "end": end,
            "score": score, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def best_char_span(outputs: list[dict], offsets: list[list], max_answer_length: int,
                   n_best: int = 20) -> tuple[int, int, float]:
    """The best valid span over all windows, as character offsets into the context, and its probability
    (start probability × end probability within its window). Same search as training's evaluation."""
    best, best_logit = (0, 0, 0.0), float("-inf")
    for out, offs in zip(outputs, offsets, strict=True):
        s_log, e_log = out["start_logits"], out["end_logits"]
        s_prob, e_prob = torch.softmax(s_log, -1), torch.softmax(e_log, -1)
        for s in torch.topk(s_log, min(n_best, len(s_log))).indices.tolist():
            for e in torch.topk(e_log, min(n_best, len(e_log))).indices.tolist():
                if offs[s] is None or offs[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                logit = float(s_log[s] + e_log[e])
                if logit > best_logit:
                    best_logit = logit
                    best = (offs[s][0], offs[e][1], float(s_prob[s] * e_prob[e]))
    return best

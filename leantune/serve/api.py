"""The HTTP API: OpenAI-compatible chat and completions, classification, extractive QA, adapter admin, health and
metrics. Every error has OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from leantune.errors import LeantuneError
from leantune.serve.adapter_root import resolve_adapter_path
from leantune.serve.gate import ApiError, Gate, admin_refusal, bearer_token, error_response
from leantune.serve.generation import GenRequest
from leantune.serve.handlers import answer, classify
from leantune.serve.registry import AdapterBusy, ServedAdapter, ServedBase, UnknownModel
from leantune.serve.schemas import (
    ERROR_RESPONSES,
    JSON_ERRORS,
    AdapterLoad,
    AnswerRequest,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
)
from leantune.serve.server import ServeOptions, Server
from leantune.serve.weights import AdapterRejected
from leantune.serve.worker import QueueFull

STARTED = int(time.time())
INTERNAL_ERROR = "internal error: the server's log has the details."
logger = logging.getLogger("leantune.serve")
STREAMED = {200: {"content": {"application/json": {}, "text/event-stream": {}},
                  "description": "the completion; with stream: true, server-sent events"}}


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.start()
        yield
        await run_in_threadpool(server.stop)

    app = FastAPI(title="leantune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  responses=ERROR_RESPONSES)
    app.add_middleware(Gate, server=server)
    _errors(app)
    reg = server.registry

    async def admin(request: Request) -> None:
        """The admin token, checked on the route itself (the gate checks it too), wherever the app is mounted."""
        problem = admin_refusal(server.options, bearer_token(request.headers.get("authorization", "")))
        if problem is not None:
            raise problem

    @app.get("/health", responses={503: {"description": "draining: the server is shutting down"}})
    async def health() -> JSONResponse:
        status = "draining" if server.draining else "ok"
        return JSONResponse({"status": status, "models": len(reg.names())}, 503 if server.draining else 200)

    @app.get("/metrics", response_class=PlainTextResponse, responses=JSON_ERRORS)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(server.gauges()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(m) for m in [*reg.bases.values(), *reg.adapters.values()]]}

    @app.post("/v1/chat/completions", responses=STREAMED)
    async def chat(body: ChatRequest, request: Request) -> Any:
        return await _generate(server, request, body, chat=True)

    @app.post("/v1/completions", responses=STREAMED)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await _generate(server, request, body, chat=False)

    @app.post("/v1/classify")
    async def classify_endpoint(body: ClassifyRequest) -> dict[str, Any]:
        return await classify(server, body)

    @app.post("/v1/answer")
    async def answer_endpoint(body: AnswerRequest) -> dict[str, Any]:
        return await answer(server, body)

    @app.post("/v1/adapters", status_code=201, dependencies=[Depends(admin)])
    async def load_adapter(body: AdapterLoad) -> dict[str, Any]:
        path = await run_in_threadpool(resolve_adapter_path, server.options.adapter_root, body.path)
        try:
            adapter = await run_in_threadpool(reg.register, body.name, path, False)
        except AdapterRejected as e:
            status = 409 if "already served" in str(e) else 400
            raise ApiError(status, str(e), param="name" if status == 409 else "path") from None
        except LeantuneError as e:
            raise ApiError(400, str(e), param="path") from None
        except (ValueError, TypeError, OSError) as e:  # a file of the run that is not what it should be
            raise ApiError(400, f"path: {body.path!r} is not a readable run folder ({type(e).__name__}).",
                           param="path") from None
        return _model_card(adapter)

    @app.delete("/v1/adapters/{name}", dependencies=[Depends(admin)])
    async def unload_adapter(name: str) -> dict[str, Any]:
        if name in reg.bases:
            raise ApiError(400, f"'{name}' is a base model; only adapters can be unloaded.", param="name")
        reg.unregister(name)
        return {"id": name, "object": "model", "deleted": True}

    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            message = f"the body is not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})"
        else:
            message = f"{field}: {err['msg']}"
        return error_response(ApiError(400, message, param=field))

    @app.exception_handler(UnknownModel)
    async def unknown(request: Request, e: UnknownModel) -> JSONResponse:
        return error_response(ApiError(404, str(e), param="model", code="model_not_found", kind="not_found_error"))

    @app.exception_handler(AdapterBusy)
    async def busy(request: Request, e: AdapterBusy) -> JSONResponse:
        return error_response(ApiError(503, str(e), kind="server_error", headers={"Retry-After": "2"}))

    @app.exception_handler(QueueFull)
    async def full(request: Request, e: QueueFull) -> JSONResponse:
        return error_response(ApiError(429, f"{e}; retry later.", kind="rate_limit_error", code="queue_full",
                                       headers={"Retry-After": "1"}))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:  # unknown path, wrong method
        return error_response(ApiError(e.status_code, str(e.detail), headers=e.headers))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:  # the traceback goes to the server's log
        return error_response(ApiError(500, INTERNAL_ERROR, kind="server_error"))


def _model_card(m: ServedBase | ServedAdapter) -> dict[str, Any]:
    parent = m.base.name if isinstance(m, ServedAdapter) else None
    created = m.created if isinstance(m, ServedAdapter) else STARTED
    return {"id": m.name, "object": "model", "created": created, "owned_by": "leantune", "root": parent or m.name,
            "parent": parent, "task": m.run.kind if isinstance(m, ServedAdapter) else m.kind}


# ---------------------------------------------------------------------------------------------- generation


def _target(server: Server, name: str, kind: str) -> tuple[ServedBase, ServedAdapter | None]:
    found = server.registry.lookup(name)
    base = found.base if isinstance(found, ServedAdapter) else found
    if base.kind != kind:
        endpoint = {"generate": "/v1/chat/completions", "classify": "/v1/classify", "answer": "/v1/answer"}[base.kind]
        raise ApiError(400, f"'{name}' is a {base.kind} model; use {endpoint}.", param="model")
    return base, found if isinstance(found, ServedAdapter) else None


def _prompt_ids(server: Server, base: ServedBase, adapter: ServedAdapter | None, body: Any, chat: bool) -> list[int]:
    """The prompt's token ids, checked (called off the event loop: templates and tokenisation take time)."""
    tok = base.tokenizer
    if chat:
        messages = body.as_messages()
        try:
            text = adapter.prompt(messages) if adapter is not None else base.task.prompt_text(messages)
        except Exception as e:
            if not _is_template_error(e):
                raise
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ApiError(400, f"messages: the model's chat template refuses them: {reason}", param="messages",
                           code="invalid_messages") from None
        with base.text_lock:
            ids = tok(text, add_special_tokens=False)["input_ids"]
    elif isinstance(body.prompt, str):
        with base.text_lock:
            ids = tok(body.prompt, add_special_tokens=False)["input_ids"]
    else:
        ids = list(body.prompt)
        vocab = base.model.get_input_embeddings().num_embeddings
        if any(not isinstance(t, int) or t < 0 or t >= vocab for t in ids):
            raise ApiError(400, f"prompt: token ids must lie in [0, {vocab}).", param="prompt")
    field = "messages" if chat else "prompt"
    if not ids:
        raise ApiError(400, f"{field}: the prompt is empty.", param=field)
    limit = server.options.max_prompt_tokens
    if len(ids) > limit:
        raise ApiError(400, f"{field}: the prompt has {len(ids)} tokens; the limit is {limit} (--max-prompt-tokens).",
                       param=field, code="prompt_too_long")
    return ids


def _is_template_error(e: Exception) -> bool:
    """Whether ``e`` is a chat template's own error (jinja's; e.g. Gemma's roles that must alternate)."""
    try:
        from jinja2 import TemplateError
    except ImportError:
        return False
    return isinstance(e, TemplateError)


def _max_tokens(server: Server, body: Any) -> int:
    requested = getattr(body, "max_completion_tokens", None) or body.max_tokens
    limit = server.options.max_tokens
    if requested is not None and requested > limit:
        raise ApiError(400, f"max_tokens: {requested} is over the limit of {limit} (--max-tokens).",
                       param="max_tokens", code="max_tokens_too_large")
    return requested or min(server.options.default_max_tokens, limit)


async def _generate(server: Server, request: Request, body: Any, chat: bool) -> Any:
    base, adapter = _target(server, body.model, "generate")
    ids = await run_in_threadpool(_prompt_ids, server, base, adapter, body, chat)
    max_tokens = _max_tokens(server, body)
    context = base.engine.context_length
    virtual = 0
    weights = None
    if adapter is not None:
        weights = await run_in_threadpool(server.registry.acquire, adapter)
        virtual = weights.virtual.n if weights.virtual is not None else 0
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def emit(delta: str, finish: str | None) -> None:
        if finish is not None and adapter is not None:
            server.registry.release(adapter)
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (delta, finish))
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass

    req = GenRequest(ids, max_tokens, emit, weights, adapter.order if adapter else -1, body.temperature, body.top_p,
                     body.seed, body.stop, body.ignore_eos)
    try:
        if context is not None and len(ids) + virtual >= context:
            raise ApiError(400, f"the prompt ({len(ids)} tokens) does not fit the model's context of {context} "
                                "tokens.", param="messages" if chat else "prompt", code="context_length_exceeded")
        base.engine.submit(req)
    except BaseException:
        if adapter is not None:
            server.registry.release(adapter)
        raise
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": body.model}
    prefix = await run_in_threadpool(base.tokenizer.decode, ids) if not chat and body.echo else ""
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_stream(server, req, queue, meta, chat, prefix, usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return await _collect(server, request, req, queue, meta, chat, prefix)


def _usage(req: GenRequest) -> dict[str, int]:
    return {"prompt_tokens": len(req.prompt), "completion_tokens": len(req.tokens),
            "total_tokens": len(req.prompt) + len(req.tokens)}


async def _collect(server: Server, request: Request, req: GenRequest, queue: asyncio.Queue, meta: dict, chat: bool,
                   prefix: str) -> Any:
    text, finish = [prefix], None
    try:
        while finish is None:
            try:
                delta, finish = await asyncio.wait_for(queue.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    req.cancel()
                    return JSONResponse({}, status_code=499)
                continue
            text.append(delta)
    except asyncio.CancelledError:
        req.cancel()
        raise
    server.metrics.tokens(meta["model"], len(req.prompt), len(req.tokens))
    if finish.startswith("error"):
        raise ApiError(500, _failed(meta, finish), kind="server_error")
    content = "".join(text)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        return {**meta, "object": "chat.completion", "choices": [choice], "usage": _usage(req)}
    choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
    return {**meta, "object": "text_completion", "choices": [choice], "usage": _usage(req)}


def _failed(meta: dict, finish: str) -> str:
    """The client's message for a generation that failed in the engine; the reason goes to the server's log."""
    logger.error("leantune serve: %s (%s) failed: %s", meta["id"], meta["model"], finish.removeprefix("error: "))
    return "generation failed (the server's log has the details)."


def _sse(payload: dict) -> bytes:
    import json

    return f"data: {json.dumps(payload)}\n\n".encode()


async def _stream(server: Server, req: GenRequest, queue: asyncio.Queue, meta: dict, chat: bool, prefix: str,
                  include_usage: bool) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, finish: str | None, first: bool = False) -> bytes:
        if chat:
            d = {"role": "assistant", "content": delta or ""} if first else ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": d, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return _sse({**meta, "object": kind, "choices": [choice]})

    finish = None
    try:
        yield chunk(prefix, None, first=True)
        while finish is None:
            delta, finish = await queue.get()
            if finish is not None and finish.startswith("error"):
                yield _sse({"error": {"message": _failed(meta, finish), "type": "server_error", "param": None,
                                      "code": None}})
                break
            if delta or finish is not None:
                yield chunk(delta, finish)
        if include_usage:
            yield _sse({**meta, "object": kind, "choices": [], "usage": _usage(req)})
        yield b"data: [DONE]\n\n"
    finally:
        if finish is None:  # the client went away mid-stream: free its row now
            req.cancel()
        server.metrics.tokens(meta["model"], len(req.prompt), len(req.tokens))


def serve(runs: list[tuple[str, str]], options: ServeOptions) -> None:
    """Load everything, then serve HTTP until Ctrl-C (which finishes in-flight requests first)."""
    import uvicorn

    server = Server(runs, options)
    app = create_app(server)
    if options.host not in ("127.0.0.1", "localhost", "::1") and not options.api_key:
        print(f"warning: serving on {options.host} without --api-key: anyone who can reach it can use it.",
              file=sys.stderr, flush=True)
    for base in server.registry.bases.values():
        served = [a.name for a in server.registry.adapters.values() if a.base is base]
        print(f"leantune: {base.name} ({base.kind}): {', '.join(served)}", file=sys.stderr, flush=True)
    print(f"leantune: serving on http://{options.host}:{options.port}/v1 (Ctrl-C finishes in-flight requests, then "
          f"stops; after {options.shutdown_timeout:g} s it cancels them)", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=options.host, port=options.port, log_level="warning",
                    limit_concurrency=options.limit_concurrency, timeout_graceful_shutdown=options.shutdown_timeout)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after the drain
        pass
    print("leantune: stopped", file=sys.stderr, flush=True)

"""What every request passes before a handler: the API key, the admin token, the body-size limit; and the
request counter and latency histogram after it. A plain ASGI middleware, so streaming and disconnects pass
through untouched.

Paths are read relative to where the app is mounted (the ASGI ``root_path``), as its router reads them, so the
admin endpoints need the admin token under any prefix; the admin routes check it again themselves
(:func:`admin_refusal` as a dependency)."""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi.responses import JSONResponse

ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/classify",
             "/v1/answer", "/v1/adapters")


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.kind = kind or {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                             429: "rate_limit_error"}.get(status, "invalid_request_error")


def error_response(e: ApiError) -> JSONResponse:
    body = {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


def _same(given: str | None, expected: str | None) -> bool:
    return given is not None and expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def route_path(scope: dict) -> str:
    """The request's path inside this app: without the prefix it is mounted under, as Starlette routes it."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):] or "/"
    return path


def bearer_token(authorization: str) -> str | None:
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else None


def admin_refusal(options: Any, token: str | None) -> ApiError | None:
    """Why a request with bearer ``token`` may not use the adapter admin endpoints, or None."""
    if not options.admin_token:
        return ApiError(403, "adapter admin is off: start the server with --admin-token (or the "
                             "LEANTUNE_ADMIN_TOKEN environment variable) and --adapter-root.")
    if not _same(token, options.admin_token):
        return ApiError(401, "adapter admin needs the admin token: Authorization: Bearer <admin token>.")
    return None


def _endpoint(path: str) -> str:
    if path.startswith("/v1/adapters/"):
        return "/v1/adapters/{name}"
    return path if path in ENDPOINTS else "other"


class Gate:
    def __init__(self, app: Any, server: Any) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = {"code": 500}

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            problem = self._refuse(scope)
            if problem is None:
                receive, problem = await self._limit_body(scope, receive)
            if problem is not None:
                await error_response(problem)(scope, receive, send_and_record)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            self.server.metrics.request(_endpoint(route_path(scope)), status["code"], time.monotonic() - started)

    def _refuse(self, scope: dict) -> ApiError | None:
        options = self.server.options
        token = bearer_token(dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1"))
        if route_path(scope).startswith("/v1/adapters"):
            return admin_refusal(options, token)
        if options.api_key and not (_same(token, options.api_key) or _same(token, options.admin_token)):
            return ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>.",
                            code="invalid_api_key")
        return None

    async def _limit_body(self, scope: dict, receive: Any) -> tuple[Any, ApiError | None]:
        limit = self.server.options.max_body_bytes
        too_big = ApiError(413, f"the request body is over the limit of {limit} bytes (--max-body-bytes).",
                           code="body_too_large")
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                return receive, (too_big if int(length) > limit else None)
            except ValueError:
                return receive, ApiError(400, "Content-Length is not a number.")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive, None
        chunks, size, more = [], 0, True
        while more:  # a body without Content-Length is read here, up to the limit, then handed on
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return receive, too_big
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay, None

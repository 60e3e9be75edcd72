"""Who may talk to the dashboard: every request must name an allowed ``Host`` (the address it serves and the names
given with ``--allow-host``: a web page on another name that resolves to this machine gets 403, whatever it asks),
and every state-changing request must come from the dashboard's own pages: an ``Origin`` equal to the address
asked, and the process's CSRF token (put in every page) in the ``X-CSRF-Token`` header."""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
TOKEN_HEADER = "x-csrf-token"


def split_host(value: str) -> tuple[str, int | None]:
    """(name, port) of a ``Host`` value or an ``--allow-host`` entry: names lower-cased, IPv6 without brackets;
    port None when none is given."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    if port and not port.isdigit():
        raise ValueError(f"bad port in {value!r}")
    return name, int(port) if port else None


class AllowedHosts:
    """``Host`` values the dashboard answers: ``name:port`` entries (that port only) and bare names (any port)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = {split_host(e) for e in entries if e.strip()}

    def allows(self, host: str | None, default_port: int = 80) -> bool:
        if not host:
            return False
        try:
            name, port = split_host(host)
        except ValueError:
            return False
        port = default_port if port is None else port
        return (name, port) in self.entries or (name, None) in self.entries

    def __str__(self) -> str:
        return ", ".join(sorted(f"[{n}]" if ":" in n else n for n, _ in self.entries)) or "none"


def served_hosts(host: str, port: int) -> list[str]:
    """The ``Host`` values of the address ``leantune ui`` binds: the loopback names when it binds loopback or every
    interface, else the address itself; all on ``port``."""
    names = list(LOOPBACK) if host in (*LOOPBACK, "0.0.0.0", "::", "") else [host]
    return [f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names]


def new_token() -> str:
    return secrets.token_urlsafe(32)


class RequestGuard:
    """ASGI middleware over the whole app (pages, static files, the JSON API, the mounted playground)."""

    def __init__(self, app: Any, hosts: AllowedHosts, token: str) -> None:
        self.app, self.hosts, self.token = app, hosts, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await _answer(send, *refusal)
        else:
            await send({"type": "websocket.close", "code": 1008})

    def refusal(self, scope: dict, headers: Headers) -> tuple[int, str] | None:
        """(status, error) when the request is refused; None when it may pass."""
        scheme = scope.get("scheme", "http")
        host = headers.get("host")
        if not self.hosts.allows(host, 443 if scheme in ("https", "wss") else 80):
            return 403, (f"Host {host!r} is not an address of this dashboard (allowed: {self.hosts}); start "
                         "`leantune ui` with --allow-host NAME to reach it by another name.")
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):  # a browser says another site asked
            return 403, "a request from another site is refused"
        if scope["type"] == "http" and scope["method"] in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if not origin:
            return 403, "a request that changes something must name its Origin (send it from the dashboard's page)"
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != str(host).lower():
            return 403, f"cross-origin request from {origin} refused"
        if scope["type"] != "http":  # a websocket from this page's origin
            return None
        if not hmac.compare_digest(headers.get(TOKEN_HEADER, "").encode(), self.token.encode()):
            return 403, "missing or wrong X-CSRF-Token: reload the dashboard's page"
        if scope["path"].startswith("/api/") and not headers.get("content-type", "").startswith("application/json"):
            return 415, "send JSON (Content-Type: application/json)"
        return None


async def _answer(send: Any, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

"""The playground: finished runs picked in the page are served by ``leantune serve``'s own engine and HTTP API
(its public entry point: :func:`leantune.serve.build_server`, :func:`leantune.serve.create_app`), mounted at
``/serve``; the page
talks to it exactly as any OpenAI-compatible client would (streamed chat, ``/v1/classify``, ``/v1/answer``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError

MOUNT = "/serve"


class Playground:
    """The serving engine over the runs picked last (replaced, the old engine drained and stopped, on a new pick);
    an ASGI app that forwards to serve's API, or answers 503 while nothing is served."""

    def __init__(self) -> None:
        self.server: Any = None
        self.api: Any = None
        self.runs: list[str] = []
        self.lock = threading.Lock()

    def serve(self, runs: list[tuple[str, Path]]) -> list[str]:
        """Serve the finished runs ``runs`` ((name, folder) pairs) instead of those served so far; returns the
        served model names."""
        if not runs:
            raise LeantuneError("pick at least one finished run to serve.")
        try:
            from leantune.serve import build_server, create_app
        except ImportError as e:
            raise LeantuneError(f"the playground needs leantune serve ({e})") from None
        named = {served_name(name): str(path) for name, path in runs}
        with self.lock:
            self.close()
            server = build_server(named)
            server.start()
            self.server, self.api, self.runs = server, create_app(server), list(named)
        return self.runs

    def close(self) -> None:
        """Finish the served requests, then stop the engine threads."""
        if self.server is not None:
            self.server.stop()
            self.server = self.api = None
            self.runs = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        api = self.api
        if api is not None:
            await api(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        body = json.dumps({"error": {"message": "nothing is served yet: pick finished runs in the playground and "
                                                "press 'serve'.", "type": "invalid_request_error"}}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def served_name(run_name: str) -> str:
    """The model name a run is served as: its folder path under the runs folder, '/' turned into '-'."""
    return run_name.strip("/").replace("/", "-")

"""``leantune ui``: the dashboard served by uvicorn, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

from leantune.errors import LeantuneError


def serve_ui(runs: str, host: str = "127.0.0.1", port: int = 7860, allow: list[str] | None = None,
             allow_hosts: list[str] | None = None) -> None:
    """Serve the dashboard over ``runs`` until interrupted; it answers requests addressed to ``host:port`` (the
    loopback names when bound to loopback or every interface) and to the names in ``allow_hosts``."""
    try:
        import uvicorn

        from leantune.ui.app import create_app
        from leantune.ui.guard import served_hosts, split_host
    except ImportError as e:
        raise LeantuneError(f"leantune ui needs the [ui] extra ({e.name} is missing): pip install 'leantune[ui]'") \
            from None
    root = Path(runs)
    root.mkdir(parents=True, exist_ok=True)
    for name in allow_hosts or []:
        try:
            split_host(name)
        except ValueError:
            raise LeantuneError(f"--allow-host {name!r}: expected NAME or NAME:PORT") from None
    app = create_app(root, [Path(a) for a in allow or []], served_hosts(host, port) + list(allow_hosts or []))
    if host in ("0.0.0.0", "::", ""):
        print(f"warning: listening on every interface, the dashboard answers only the loopback names and the names "
              f"given with --allow-host (allowed: {', '.join(allow_hosts or []) or 'none'}); a machine that reaches "
              "it by such a name can launch and stop training runs.", file=sys.stderr)
    elif host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the dashboard can launch and stop training runs; every machine that reaches {host}:{port} "
              "may use it (by that address, or a name given with --allow-host).", file=sys.stderr)
    print(f"leantune ui: http://{host}:{port}/  (runs: {root.resolve()})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

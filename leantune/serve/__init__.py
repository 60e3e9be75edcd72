"""``leantune serve``: many adapters on shared base models behind an OpenAI-compatible HTTP API.

- :mod:`~leantune.serve.layers`: per-row adapters on a shared base (segments), each a method's own row op;
- :mod:`~leantune.serve.weights`: adapter folders checked and loaded by their method into per-layer row ops;
- :mod:`~leantune.serve.generation`: continuous batching for causal LMs; :mod:`~leantune.serve.encoder`:
  classification and extractive QA batches;
- :mod:`~leantune.serve.registry`: bases, adapters, LRU of loaded adapters;
- :mod:`~leantune.serve.api`, :mod:`~leantune.serve.gate`, :mod:`~leantune.serve.handlers`,
  :mod:`~leantune.serve.adapter_root`: the HTTP API.

Run folders are read by :mod:`leantune.run.loader`; prompts come from the run's task, decoding from
:mod:`leantune.generate`, as ``leantune generate`` does.

In-process use (a playground, a test): :func:`build_server` loads the runs, ``create_app(server)`` is the FastAPI
app (its lifespan starts and drains the engines; when it is mounted inside another app, whose lifespan Starlette
does not forward, call ``server.start()`` and ``server.stop()`` yourself).
"""

from __future__ import annotations

import os
from typing import Any


def build_server(runs: list[str | os.PathLike] | dict[str, str | os.PathLike], **options: Any) -> Any:
    """A :class:`~leantune.serve.server.Server` for run folders (a list: served under their folder names; a dict:
    name -> run folder); ``options``: :class:`~leantune.serve.server.ServeOptions` fields (max_batch, api_key ...).
    The engines start with ``server.start()`` (or the app's lifespan)."""
    from pathlib import Path

    from leantune.serve.server import ServeOptions, Server

    pairs = ([(str(n), str(p)) for n, p in runs.items()] if isinstance(runs, dict)
             else [(Path(p).resolve().name, str(p)) for p in runs])
    return Server(pairs, ServeOptions(**options))


def create_app(server: Any) -> Any:
    """The FastAPI app of ``server`` (OpenAI-compatible endpoints, /v1/classify, /v1/answer, admin, metrics)."""
    from leantune.serve.api import create_app as make

    return make(server)


__all__ = ["build_server", "create_app"]

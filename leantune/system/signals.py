"""Signals of a process: handlers for the length of a block, and the error a run stopped by a signal ends with."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from leantune.errors import LeantuneError


class TrainingInterrupted(LeantuneError):
    """Training stopped on a signal after writing a checkpoint; the message says how to resume."""


@contextlib.contextmanager
def signal_handlers(handler: Callable[[int, Any], None], signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """Within the block ``handler`` handles ``signals``; the previous handlers come back after it. Off the main
    thread (where Python cannot install handlers) the block runs with the handlers unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

"""What keeps a run safe while it trains: stopping cleanly on SIGINT / SIGTERM, spotting loss spikes."""

from __future__ import annotations

import contextlib
import signal
import statistics
import threading
from collections import deque
from collections.abc import Iterator

from leantune.errors import LeantuneError


class TrainingInterrupted(LeantuneError):
    """Training stopped on a signal after writing a checkpoint; the message says how to resume."""


class StopRequest:
    requested: str | None = None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM only ask the loop to stop: it finishes the current step, writes a
    checkpoint and exits. A second Ctrl-C stops at once (the last checkpoint stays intact)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.requested = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class SpikeDetector:
    """Flags a step loss above ``factor`` x the median of the last ``window`` steps (``factor=None``: off)."""

    def __init__(self, factor: float | None, window: int = 20) -> None:
        self.factor = factor
        self.recent: deque[float] = deque(maxlen=window)
        self.median = 0.0

    def is_spike(self, loss: float) -> bool:
        spike = False
        if self.factor and len(self.recent) >= 5:
            self.median = statistics.median(self.recent)
            spike = self.median > 0 and loss > self.factor * self.median
        self.recent.append(loss)
        return spike

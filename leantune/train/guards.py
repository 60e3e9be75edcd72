"""What keeps a run safe while it trains: stopping cleanly on SIGINT / SIGTERM, spotting loss spikes."""

from __future__ import annotations

import contextlib
import signal
import statistics
from collections import deque
from collections.abc import Iterator

from leantune.system.signals import signal_handlers


class StopRequest:
    requested: str | None = None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM only ask the loop to stop: it finishes the current step, writes a
    checkpoint and exits. A second Ctrl-C stops at once (the last checkpoint stays intact)."""
    stop = StopRequest()

    def handler(signum: int, frame: object) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.requested = signal.Signals(signum).name

    with signal_handlers(handler, (signal.SIGINT, signal.SIGTERM)):
        yield stop


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

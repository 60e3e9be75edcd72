"""A thread that serves one base model from a bounded queue of waiting requests."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class QueueFull(Exception):
    """The waiting queue is at --max-queue (or the server is shutting down)."""


class Worker:
    """Subclasses implement ``_loop``, which takes requests from ``pending`` under ``cond`` and returns once
    ``stopping`` is set and everything waiting or running is done."""

    def __init__(self, max_queue: int, name: str) -> None:
        self.max_queue = max_queue
        self.pending: deque[Any] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Worker:
        self.thread.start()
        return self

    def submit(self, req: Any) -> None:
        with self.cond:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.pending) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} waiting requests, --max-queue)")
            self.pending.append(req)
            self.cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every waiting and running request, then end the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self.pending)

    def _loop(self) -> None:
        raise NotImplementedError

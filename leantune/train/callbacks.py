"""Hooks into a run from Python: a :class:`Callback` sees each logged training row, each evaluation and the end.

Callbacks run on the main process only. One that raises is reported once (a ``RuntimeWarning`` with its error) and
never stops training; its later calls still happen, quietly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any


class Callback:
    """Override the methods you need; each does nothing by default."""

    def on_step(self, row: dict[str, Any]) -> None:
        """A training row as it is logged: ``step``, ``loss`` (mean since the last row), ``lr``, ``tokens``,
        ``tokens_per_s`` and memory."""

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> None:
        """The task's metrics of an evaluation during training (``train.eval_every``) and of the final one."""

    def on_end(self, result: Any) -> None:
        """The run finished: ``result`` is its :class:`~leantune.train.loop.RunResult`."""


class Callbacks:
    """The run's callbacks, each called so that its error cannot end the run."""

    def __init__(self, callbacks: Iterable[Callback] = (), enabled: bool = True) -> None:
        """``enabled=False`` (every process but the first of a multi-process run) calls nothing."""
        self.callbacks = list(callbacks) if enabled else []
        self.failed: set[int] = set()

    def on_step(self, row: dict[str, Any]) -> None:
        self._call("on_step", row)

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> None:
        self._call("on_evaluate", step, metrics)

    def on_end(self, result: Any) -> None:
        self._call("on_end", result)

    def _call(self, hook: str, *args: Any) -> None:
        for i, callback in enumerate(self.callbacks):
            try:
                getattr(callback, hook)(*args)
            except Exception as e:  # a user's hook: report it, keep training
                if i not in self.failed:
                    self.failed.add(i)
                    warnings.warn(f"callback {type(callback).__name__}.{hook} raised {type(e).__name__}: {e}; "
                                  "training goes on (further errors of this callback are not reported)",
                                  RuntimeWarning, stacklevel=2)

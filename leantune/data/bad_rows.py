"""What happens to a bad row: ``on_bad_rows: error`` stops with one line naming the file, line and field;
``skip`` drops it, counts it by reason, and remembers the first place each reason occurred for the report."""

from __future__ import annotations

from collections import Counter
from typing import Any

from leantune.errors import LeantuneError


class BadRows:
    def __init__(self, policy: str = "error") -> None:
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_rows must be error or skip, not {policy!r}")
        self.policy = policy
        self.counts: Counter = Counter()
        self.first: dict[str, str] = {}

    def __call__(self, source: str, reason: str) -> None:
        """Report a bad row at ``source`` (file:line): raise, or count it and return (the caller drops it)."""
        if self.policy == "error":
            hint = "" if "on_bad_rows" in reason else " (set data.on_bad_rows: skip to drop such rows and count them)"
            raise LeantuneError(f"{source}: {reason}{hint}")
        self.counts[reason] += 1
        self.first.setdefault(reason, source)

    def handle(self, error: LeantuneError, source: str, reason: str) -> None:
        """A record-level error raised elsewhere: re-raise it as it is, or count it under ``reason``."""
        if self.policy == "error":
            raise error
        self(source, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> dict[str, Any]:
        """``{reason: {"rows": n, "first": "file:line"}}`` of every skipped row."""
        return {reason: {"rows": n, "first": self.first[reason]} for reason, n in self.counts.most_common()}

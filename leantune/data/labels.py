"""Label vocabularies and stratified splits."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any


def label_sort_key(label: str) -> tuple[int, Any]:
    """Numeric labels in numeric order ("2" before "10"), then text labels alphabetically."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def build_label_map(labels: list[str]) -> list[str]:
    """The sorted distinct labels; a label's id is its index."""
    return sorted(set(labels), key=label_sort_key)


def stratified_split(labels: list[Any], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held_out) with about ``fraction`` of every label held out (at least one when possible)."""
    by_label: dict[Any, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    rng = random.Random(seed)
    train, held = [], []
    for key in sorted(by_label, key=str):
        idx = by_label[key]
        rng.shuffle(idx)
        n = round(len(idx) * fraction)
        if n == 0 and len(idx) > 1:
            n = 1
        held += idx[:n]
        train += idx[n:]
    return sorted(train), sorted(held)

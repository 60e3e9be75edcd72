"""Length-grouped batching and dynamic padding: little compute goes to padding."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                           group: int = 50) -> list[list[int]]:
    """Batches of indices with similar lengths, in a random order.

    Indices are shuffled, cut into mega-buckets of ``group`` batches, sorted by length inside each bucket, then
    cut into batches whose order is shuffled. ``shuffle=False`` sorts everything by length (evaluation).
    """
    idx = list(range(len(lengths)))
    if not shuffle:
        idx.sort(key=lambda i: -lengths[i])
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(idx)
    span = batch_size * group
    batches = []
    for start in range(0, len(idx), span):
        bucket = sorted(idx[start:start + span], key=lambda i: -lengths[i])
        batches += [bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size)]
    rng.shuffle(batches)
    return batches


def pad_batch(features: list[dict[str, Any]], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Stack token lists padded to the longest in the batch; other fields become tensors as they are."""
    longest = max(len(f["input_ids"]) for f in features)
    out: dict[str, list] = {}
    for f in features:
        n = len(f["input_ids"])
        pad = longest - n
        for key, value in f.items():
            if key == "position_ids":  # packed rows: the padding is one more (untrained) sequence
                value = value + list(range(pad))
            elif key in ("input_ids", "attention_mask", "token_type_ids", "labels") and isinstance(value, list):
                fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "labels": -100}[key]
                value = value + [fill] * pad if padding_side == "right" else [fill] * pad + value
            out.setdefault(key, []).append(value)
    return {k: torch.tensor(v) for k, v in out.items()}


def iterate_batches(features: list[dict[str, Any]], batches: list[list[int]], pad_id: int,
                    padding_side: str = "right") -> Iterator[dict[str, torch.Tensor]]:
    for b in batches:
        yield pad_batch([features[i] for i in b], pad_id, padding_side)

"""Sequence packing for causal-LM training: several examples share one row, and attend only within themselves.

Each packed row concatenates whole examples; ``position_ids`` restart at 0 at every example, which is how
transformers (sdpa / eager: a block-diagonal causal mask; flash-attention: the varlen path) keeps attention inside
each example when no ``attention_mask`` is passed. The first token of each example is never a target (nothing
before it in the example predicts it), so the summed loss and its gradients equal those of the unpacked examples.
"""

from __future__ import annotations

import random
from typing import Any


def pack_examples(features: list[dict[str, Any]], max_length: int, seed: int | None = None,
                  window: int = 64) -> list[dict[str, Any]]:
    """Pack tokenised examples (``input_ids``, ``labels``) into rows of at most ``max_length`` tokens.

    Examples are taken in a seeded random order (``seed=None``: as given) and placed first-fit among the last
    ``window`` open rows, so rows fill up without sorting the data by length. An example longer than
    ``max_length`` must have been truncated before.
    """
    order = list(range(len(features)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    rows: list[list[int]] = []
    room: list[int] = []
    open_rows: list[int] = []
    for i in order:
        n = len(features[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens, more than max_length {max_length}; truncate it first")
        slot = next((r for r in open_rows if room[r] >= n), None)
        if slot is None:
            rows.append([])
            room.append(max_length)
            slot = len(rows) - 1
            open_rows.append(slot)
            if len(open_rows) > window:
                open_rows.pop(0)
        rows[slot].append(i)
        room[slot] -= n
        if room[slot] == 0:
            open_rows.remove(slot)
    return [_concat([features[i] for i in row]) for row in rows]


def _concat(examples: list[dict[str, Any]]) -> dict[str, Any]:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for ex in examples:
        ids += ex["input_ids"]
        labels += [-100, *ex["labels"][1:]]
        positions += range(len(ex["input_ids"]))
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "position_ids": positions}

"""Whether a config still describes a saved run: which of its keys changed, and which may change when the run is
resumed (by ``leantune train --resume`` or a compare run again)."""

from __future__ import annotations

RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "train.eval_every", "train.save_every", "train.keep_last",
                     "train.log_every", "task_args.eval_max_examples", "train.early_stopping_patience",
                     "train.num_threads", "train.max_nonfinite_steps", "train.spike_factor"}
"""The config keys a resumed run may change: how long it trains, how often it evaluates, logs and saves."""


def changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dumps (``method_args`` compared whole)."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k != "method_args":
            keys += changed_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys

"""What ``leantune compare`` trains: one run config per method (same task, data, seed, steps and batch size; the
method's own learning rate and settings), and what each method's run folder already holds."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from leantune.config import RunConfig, validate_config
from leantune.errors import LeantuneError
from leantune.methods.registry import METHOD_NAMES, REGISTRY, method_spec
from leantune.run.compat import RESUMABLE_CHANGES, changed_keys
from leantune.run.layout import candidates, has_result
from leantune.run.loader import run_config
from leantune.run.status import run_status

HARMLESS_CHANGES = {"train.num_threads", "train.log_every", "train.save_every", "train.keep_last",
                    "train.max_nonfinite_steps", "train.spike_factor"}
"""Config changes that leave a finished run's result as it is (it is not trained again)."""

RunState = Literal["finished", "interrupted", "stale", "new"]


@dataclass
class MethodPlan:
    """One method of a comparison: its run config (None when the config itself is invalid for the method)."""

    method: str
    run_dir: Path
    cfg: RunConfig | None
    lr: float | None
    error: str | None = None


def parse_methods(text: str) -> list[str]:
    """The comma-separated method names of ``--methods``, checked against the method registry."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise LeantuneError(f"--methods: give method names separated by commas, from: {', '.join(METHOD_NAMES)}")
    for name in names:
        method_spec(name)
    duplicates = sorted({m for m in names if names.count(m) > 1})
    if duplicates:
        raise LeantuneError(f"--methods names {', '.join(duplicates)} more than once")
    return names


def plan_methods(raw: dict[str, Any], methods: list[str], out_dir: Path, source: str) -> list[MethodPlan]:
    """A run config per method from the raw config ``raw`` (its ``compare:`` section validated first); a method the
    config cannot take (e.g. prompt tuning with packing) gets its error instead of a config."""
    compare = validate_config(raw, source).compare
    lrs = compare.lr if compare else {}
    args = compare.method_args if compare else {}
    plans = []
    for method in methods:
        run_dir = out_dir / "runs" / method
        lr = lrs.get(method) or _own_lr(raw, method) or method_spec(method).lr
        method_raw = copy.deepcopy({k: v for k, v in raw.items() if k != "compare"})
        method_raw.update(method=method, method_args=args.get(method, _own_method_args(raw, method)),
                          output_dir=str(run_dir))
        method_raw["train"] = {**_train(raw), "lr": lr}
        try:
            plans.append(MethodPlan(method, run_dir, validate_config(method_raw, f"{source} (method {method})"), lr))
        except LeantuneError as e:
            plans.append(MethodPlan(method, run_dir, None, lr, error=str(e)))
    return plans


def _train(raw: dict[str, Any]) -> dict[str, Any]:
    train = raw.get("train") or {}
    return train if isinstance(train, dict) else {}


def _own_lr(raw: dict[str, Any], method: str) -> float | None:
    """The config's train.lr when the config is written for ``method``."""
    return _train(raw).get("lr") if raw.get("method", "lora") == method else None


def _own_method_args(raw: dict[str, Any], method: str) -> dict[str, Any]:
    """The config's method_args for ``method`` when the config's method shares its settings (lora and dora), less
    the fields that the config's method name fixes."""
    own = raw.get("method", "lora")
    if own not in REGISTRY or REGISTRY[own].config_cls is not REGISTRY[method].config_cls:
        return {}
    fixed = set(REGISTRY[own].preset) | set(REGISTRY[method].preset)
    return {k: v for k, v in (raw.get("method_args") or {}).items() if k not in fixed}


def run_state(plan: MethodPlan) -> RunState:
    """What the method's run folder holds for its config: a finished run of it (nothing to do), an interrupted or
    shorter one with a checkpoint to resume from, something else to replace, or nothing."""
    run_dir, cfg = plan.run_dir, plan.cfg
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "new"
    saved = _saved_config(run_dir)
    if saved is None or cfg is None:
        return "stale"
    changed = set(changed_keys(saved, cfg.model_dump()))
    finished = run_status(run_dir)[0] == "finished" and has_result(run_dir)
    if finished and changed <= HARMLESS_CHANGES:
        return "finished"
    if candidates(run_dir) and changed <= RESUMABLE_CHANGES:
        return "interrupted"
    return "stale"


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        return run_config(run_dir).model_dump()
    except (OSError, LeantuneError, AttributeError, TypeError):
        return None

"""Resuming a run: the newest good checkpoint of its folder, refused when the config changed what it trained."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from leantune.config import RunConfig, validate_config
from leantune.errors import LeantuneError
from leantune.train.checkpoints import Checkpoint, candidates, load_latest_checkpoint
from leantune.train.distributed import Dist

RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "train.eval_every", "train.save_every", "train.keep_last",
                     "train.log_every", "task_args.eval_max_examples", "train.early_stopping_patience",
                     "train.num_threads", "train.max_nonfinite_steps", "train.spike_factor"}


def find_resume_point(run_dir: Path, cfg: RunConfig, dist: Dist | None = None) -> Checkpoint:
    """The newest good checkpoint of the run in ``run_dir`` (corrupt ones are reported and skipped); refuses a
    folder with no checkpoint, or a config that changed what the checkpoint was trained with."""
    dist = dist or Dist()
    saved_cfg = run_dir / "config.yaml"
    if not saved_cfg.is_file() or not candidates(run_dir):
        raise LeantuneError(f"nothing to resume in {run_dir}: no checkpoints/ there (a run writes one every "
                            "train.save_every steps, on SIGINT/SIGTERM and at the end). Run without --resume.")
    saved = validate_config(yaml.safe_load(saved_cfg.read_text()), str(saved_cfg)).model_dump()
    changed = [k for k in changed_keys(saved, cfg.model_dump()) if k not in RESUMABLE_CHANGES]
    if changed:
        raise LeantuneError(f"cannot resume {run_dir}: the config differs from the run's in {changed}; "
                            f"resume with the same settings (only {sorted(RESUMABLE_CHANGES)} may change).")

    def warn(message: str) -> None:
        if dist.main:
            print(message, file=sys.stderr, flush=True)

    checkpoint = load_latest_checkpoint(run_dir, warn=warn, dist=dist)
    if checkpoint is None:
        raise LeantuneError(f"no usable checkpoint in {run_dir / 'checkpoints'}: every one is corrupt. "
                            "Start again with --overwrite.")
    return checkpoint


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

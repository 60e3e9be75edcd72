"""Resuming a run: the newest good checkpoint of its folder, refused when the config changed what it trained."""

from __future__ import annotations

import sys
from pathlib import Path

from leantune.config import RunConfig
from leantune.errors import LeantuneError
from leantune.run.compat import RESUMABLE_CHANGES, changed_keys
from leantune.run.layout import CHECKPOINTS, candidates, is_run_folder
from leantune.run.loader import run_config
from leantune.train.checkpoints import Checkpoint, load_latest_checkpoint
from leantune.train.distributed import Dist


def find_resume_point(run_dir: Path, cfg: RunConfig, dist: Dist | None = None) -> Checkpoint:
    """The newest good checkpoint of the run in ``run_dir`` (corrupt ones are reported and skipped); refuses a
    folder with no checkpoint, or a config that changed what the checkpoint was trained with."""
    dist = dist or Dist()
    if not is_run_folder(run_dir) or not candidates(run_dir):
        raise LeantuneError(f"nothing to resume in {run_dir}: no checkpoints/ there (a run writes one every "
                            "train.save_every steps, on SIGINT/SIGTERM and at the end). Run without --resume.")
    saved_cfg = run_config(run_dir)
    if cfg.train.max_length is None:  # the value the task chose from the data, kept in the run's config
        cfg.train.max_length = saved_cfg.train.max_length
    saved = saved_cfg.model_dump()
    changed = [k for k in changed_keys(saved, cfg.model_dump()) if k not in RESUMABLE_CHANGES]
    if changed:
        raise LeantuneError(f"cannot resume {run_dir}: the config differs from the run's in {changed}; "
                            f"resume with the same settings (only {sorted(RESUMABLE_CHANGES)} may change).")

    def warn(message: str) -> None:
        if dist.main:
            print(message, file=sys.stderr, flush=True)

    checkpoint = load_latest_checkpoint(run_dir, warn=warn, dist=dist)
    if checkpoint is None:
        raise LeantuneError(f"no usable checkpoint in {run_dir / CHECKPOINTS}: every one is corrupt. "
                            "Start again with --overwrite.")
    return checkpoint


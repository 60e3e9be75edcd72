"""``lt.fine_tune``: a whole run from Python, as ``leantune train`` runs it from a YAML file."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from typing import Any

from leantune.config import RunConfig, read_raw_config, set_key, validate_config
from leantune.errors import LeantuneError
from leantune.train.callbacks import Callback
from leantune.train.loop import RunResult
from leantune.train.loop import fine_tune as run_fine_tune


def fine_tune(config: str | os.PathLike | Mapping[str, Any] | RunConfig, *,
              overrides: Mapping[str, Any] | None = None, callbacks: Iterable[Callback] = (),
              overwrite: bool = False, quiet: bool = False, resume: bool = False, **sections: Any) -> RunResult:
    """Fine-tune as ``config`` says (a YAML file's path, a mapping as the YAML file would hold, or a
    :class:`~leantune.config.RunConfig`) and return the finished run.

    Changes to the config: ``sections`` are top-level keys, merged into a section that is a mapping
    (``train={"lr": 1e-4}`` keeps the other train settings; ``output_dir="runs/b"`` replaces); then ``overrides``
    are dotted keys, as ``--set`` takes them (``{"train.lr": 1e-4, "method_args.r": 16}``). ``callbacks``
    (:class:`~leantune.train.callbacks.Callback`) see each logged row, each evaluation and the end; ``overwrite``,
    ``quiet`` and ``resume`` are ``leantune train``'s flags.
    """
    cfg = run_config(config, overrides or {}, sections)
    return run_fine_tune(cfg, overwrite=overwrite, quiet=quiet, resume=resume, callbacks=callbacks)


def run_config(config: str | os.PathLike | Mapping[str, Any] | RunConfig, overrides: Mapping[str, Any],
               sections: Mapping[str, Any]) -> RunConfig:
    """The validated config of :func:`fine_tune`'s arguments."""
    if isinstance(config, RunConfig) and not overrides and not sections:
        return config
    if isinstance(config, RunConfig):
        raw, source = config.model_dump(exclude_unset=True), "fine_tune(config)"
    elif isinstance(config, Mapping):
        raw, source = copy.deepcopy(dict(config)), "fine_tune(config)"
    elif isinstance(config, (str, os.PathLike)):
        raw, source = read_raw_config(config), str(config)
    else:
        raise LeantuneError(f"fine_tune: config is a {type(config).__name__}; give a YAML path, a mapping or a "
                            "RunConfig")
    for key, value in sections.items():
        merge_into(raw, [key], value)
    for key, value in overrides.items():
        set_key(raw, str(key).split("."), value, f"fine_tune(overrides={{{key!r}: ...}})")
    return validate_config(raw, source)


def merge_into(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``keys`` of ``raw`` to ``value``, a mapping merged key by key into a section that is one."""
    node = raw
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    if isinstance(value, Mapping) and isinstance(node, dict):
        for sub, v in value.items():
            merge_into(raw, [*keys, str(sub)], v)
    else:
        set_key(raw, keys, copy.deepcopy(value), f"fine_tune({'.'.join(keys)}=...)")

"""What the dashboard's launches and stops may touch, checked before any process starts or is signalled.

A launch (its config file with its ``--set`` overrides applied, then validated) may set any config key except:

- ``output_dir``: only a folder inside the runs folder (resolved, symlinks followed), not the runs folder itself
  nor its ``.ui`` folder; ``overwrite`` replaces only a run folder that holds no other run;
- ``trust_remote_code`` and ``allow_pickle_weights``: never true (both can run code that came with a model);
- processes (``--nproc``): 1 up to the machine's GPUs when CUDA is available, else its CPU cores.

Those need ``leantune train`` on the command line. A stop signals only a positive pid that the dashboard started
for that run, or whose command line (``/proc/PID/cmdline``) is ``leantune train`` of that run folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from leantune.config import RunConfig, load_config, read_raw_config
from leantune.errors import LeantuneError
from leantune.ui.runs import find_runs

REFUSED_KEYS = ("trust_remote_code", "allow_pickle_weights")


def check_overrides(overrides: list[str]) -> None:
    """Overrides are ``key=value`` strings, never command-line flags."""
    for item in overrides:
        if item.startswith("-"):
            raise LeantuneError(f"override {item!r}: expected key=value, e.g. train.max_steps=100")


def check_launch(cfg: RunConfig, root: Path, nproc: int, overwrite: bool) -> Path:
    """The run folder of the resolved config ``cfg``, when the dashboard may launch it (see the module's list)."""
    for key in REFUSED_KEYS:
        if getattr(cfg, key):
            raise LeantuneError(f"{key}: true is not launched from the dashboard (it lets a model run its own "
                                "code): run `leantune train` on the command line if you trust the model.")
    root = root.resolve()
    try:
        run_dir = Path(cfg.output_dir).resolve()
        run_dir.exists()
    except (OSError, ValueError) as e:  # a NUL character, a name too long
        raise LeantuneError(f"output_dir {cfg.output_dir!r} cannot be used ({e}).") from None
    if run_dir == root or not run_dir.is_relative_to(root) or run_dir.is_relative_to(root / ".ui"):
        raise LeantuneError(f"output_dir {cfg.output_dir} must be a folder inside the runs folder {root} "
                            f"(e.g. output_dir={root / 'my-run'}).")
    if overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        if run_dir not in find_runs(root) or find_runs(run_dir):
            raise LeantuneError(f"output_dir {run_dir} is not a run folder (or holds other runs): overwrite "
                                "replaces one run only.")
    limit = max_processes()
    if not 1 <= nproc <= limit:
        raise LeantuneError(f"processes (--nproc) must be 1 to {limit} on this machine, not {nproc}.")
    return run_dir


def pin_checked(config: Path, overrides: list[str], output_dir: str, run_dir: Path, cwd: Path) -> list[str]:
    """``overrides`` plus what the checks allowed, pinned for the process started in ``cwd`` (the file may change
    before it reads it): its ``output_dir`` (leading to ``run_dir``), and code from models off. Values go as JSON
    strings (valid YAML: no comment or line folding can change them), and the pinned config is read back here."""
    pinned = [*overrides, f"output_dir={json.dumps(output_dir)}", *(f"{key}=false" for key in REFUSED_KEYS)]
    if (cwd / load_config(str(config), pinned).output_dir).resolve() != run_dir:
        raise LeantuneError(f"output_dir {output_dir!r} does not survive the command line; choose a plain name.")
    return pinned


def check_resume(cfg: RunConfig) -> None:
    """A resumed run's config may not let a model run its own code either."""
    for key in REFUSED_KEYS:
        if getattr(cfg, key):
            raise LeantuneError(f"this run's config sets {key}: true; resume it with `leantune train CONFIG "
                                "--resume` on the command line.")


def max_processes() -> int:
    """The most training processes one launch may start: the GPUs when CUDA is available, else the CPU cores."""
    import torch

    if torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return os.cpu_count() or 1


def valid_pid(value: Any) -> int:
    """The pid a status record names, when it is a positive integer (-1 or 0 would signal a process group)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LeantuneError(f"the status record names no valid process (pid {value!r}): nothing stopped.")
    return value


def trains_run(pid: int, run_dir: Path) -> bool:
    """Whether process ``pid`` runs ``leantune train`` whose config (with its ``--set`` overrides, read from the
    process's own folder) has ``run_dir`` as output_dir."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    command = train_command(argv)
    if command is None:
        return False
    try:
        raw = read_raw_config(cwd / command[0], command[1])
    except (LeantuneError, OSError, ValueError):
        return False
    output_dir = raw.get("output_dir", RunConfig.model_fields["output_dir"].default)
    return (cwd / str(output_dir)).resolve() == run_dir.resolve()


def train_command(argv: list[str]) -> tuple[str, list[str]] | None:
    """(config, overrides) of a ``leantune train`` command line (``python -m leantune train ...`` or the
    ``leantune`` script); None for any other command."""
    start = next((i + 1 for i, a in enumerate(argv) if a == "leantune" or a.endswith("/leantune")), None)
    rest = [a for a in argv[start:] if a != "--debug"] if start is not None else []
    if rest[:1] != ["train"]:
        return None
    config, overrides, args = None, [], iter(rest[1:])
    for arg in args:
        if arg == "--set":
            overrides.append(next(args, ""))
        elif arg.startswith("--set="):
            overrides.append(arg.removeprefix("--set="))
        elif arg == "--nproc":
            next(args, None)
        elif not arg.startswith("-") and config is None:
            config = arg
    return (config, overrides) if config else None

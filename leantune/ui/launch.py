"""Starting, stopping and resuming runs from the dashboard: ``leantune train`` in a subprocess exactly as the CLI
would run it, its output kept in ``RUNS/.ui/launches/`` so that its errors show in the page. Only config files
under the allowed folders (the runs folder's parent, ``--allow``, the bundled examples) are accepted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leantune.compare.runner import error_line
from leantune.errors import LeantuneError
from leantune.files import atomic_write_text
from leantune.run.files import read_config
from leantune.run.layout import CONFIG_FILE, candidates
from leantune.run.status import is_running, process_alive, read_status
from leantune.ui.confine import (
    check_launch,
    check_overrides,
    check_resume,
    pin_checked,
    trains_run,
    valid_pid,
)

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


@dataclass
class Launcher:
    """The dashboard's launches: the processes it started (reaped as they end) and their records on disk."""

    root: Path
    allow: list[Path]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.root / ".ui" / "launches"

    # ------------------------------------------------------------------------------------------ checks
    def allowed_roots(self) -> list[Path]:
        roots = [self.root.resolve().parent, *(p.resolve() for p in self.allow)]
        return roots + ([EXAMPLES] if EXAMPLES.is_dir() else [])

    def check_config(self, config: str) -> Path:
        """The config file ``config`` resolved, when it is a file under an allowed folder."""
        try:
            path = Path(config).expanduser().resolve()
            allowed = any(path == r or path.is_relative_to(r) for r in self.allowed_roots())
            exists = allowed and path.is_file()
        except (OSError, RuntimeError, ValueError) as e:  # a NUL character, a name too long, an unknown ~user
            raise LeantuneError(f"config file {config!r} cannot be used ({e}).") from None
        if not allowed:
            raise LeantuneError(f"{config} is not under an allowed folder ({', '.join(map(str, self.allowed_roots()))})"
                                "; start `leantune ui` with --allow PATH to launch it.")
        if not exists:
            raise LeantuneError(f"config file {path} does not exist.")
        return path

    def configs(self) -> list[str]:
        """The YAML configs a launch can pick: the bundled examples and those in the allowed folders' top levels."""
        found = []
        for root in self.allowed_roots():
            if root.is_file():
                found.append(root)
            elif root.is_dir():
                found += sorted(p for p in root.glob("*.y*ml") if p.is_file())
        return [str(p) for p in dict.fromkeys(found)]

    # ------------------------------------------------------------------------------------------ actions
    def train(self, config: str, overrides: list[str], nproc: int = 1, overwrite: bool = False) -> dict[str, Any]:
        """Start ``leantune train CONFIG`` (checked here first, so a bad config is an error in the page; what a
        launch may set: :mod:`leantune.ui.confine`)."""
        from leantune.config import load_config

        path = self.check_config(config)
        check_overrides(overrides)
        cfg = load_config(str(path), overrides)
        run_dir = check_launch(cfg, self.root, nproc, overwrite)
        if is_running(read_status(run_dir)):
            raise LeantuneError(f"output_dir {run_dir} holds a run that is training now: stop it first.")
        if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
            raise LeantuneError(f"output_dir {run_dir} already holds a run: tick 'overwrite' to replace it, or "
                                "resume it from its page.")
        pinned = pin_checked(path, overrides, str(run_dir), run_dir, Path.cwd())
        argv = ["train", str(path), *(x for kv in pinned for x in ("--set", kv)), "--quiet"]
        argv += (["--nproc", str(nproc)] if nproc > 1 else []) + (["--overwrite"] if overwrite else [])
        return self._start(argv, run_dir, Path.cwd())

    def resume(self, run_dir: Path, max_steps: int | None = None) -> dict[str, Any]:
        """Continue the run in ``run_dir`` from its newest checkpoint, from the folder it was started in."""
        from leantune.config import load_config

        if is_running(read_status(run_dir)):
            raise LeantuneError(f"{run_dir.name} is running already.")
        if not candidates(run_dir):
            raise LeantuneError(f"{run_dir.name} has no checkpoint to resume from.")
        output_dir = str(read_config(run_dir).get("output_dir", ""))
        cwd = _start_folder(run_dir, Path(output_dir))
        config = run_dir / CONFIG_FILE
        overrides = [f"train.max_steps={max_steps}"] if max_steps else []
        check_resume(load_config(str(config), overrides))
        pinned = pin_checked(config, overrides, output_dir, run_dir.resolve(), cwd)
        argv = ["train", str(config), "--quiet", "--resume", *(x for kv in pinned for x in ("--set", kv))]
        return self._start(argv, run_dir, cwd)

    def stop(self, run_dir: Path) -> int:
        """Ask the run's training process to stop (SIGTERM: it finishes the step, checkpoints and exits): only a
        process this dashboard started for the run, or one whose command line trains that run folder."""
        record = read_status(run_dir)
        if record.get("status") != "running":
            raise LeantuneError(f"{run_dir.name} is not running.")
        pid = valid_pid(record.get("pid"))
        if not is_running(record):
            raise LeantuneError(f"{run_dir.name} is not running.")
        if not (self.started_for(pid, run_dir) or trains_run(pid, run_dir)):
            raise LeantuneError(f"process {pid} named by {run_dir.name}'s status does not train {run_dir.name}: "
                                "nothing stopped.")
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as e:
            raise LeantuneError(f"could not stop process {pid} of {run_dir.name}: {e.strerror}") from None
        return pid

    def started_for(self, pid: int, run_dir: Path) -> bool:
        """Whether ``pid`` is a live process this dashboard started to train ``run_dir``."""
        for ident, proc in self.processes.items():
            if proc.pid == pid and proc.poll() is None:
                record = _record(self.folder / f"{ident}.json")
                return record is not None and Path(str(record.get("run_dir"))) == run_dir.resolve()
        return False

    def _start(self, argv: list[str], run_dir: Path, cwd: Path) -> dict[str, Any]:
        self.folder.mkdir(parents=True, exist_ok=True)
        ident = time.strftime("%Y%m%d-%H%M%S") + f"-{len(list(self.folder.glob('*.json'))):04d}"
        log = self.folder / f"{ident}.log"
        command = [sys.executable, "-m", "leantune", *argv]
        with log.open("w", encoding="utf-8") as out:
            out.write(f"$ leantune {' '.join(argv)}   (in {cwd})\n")
            out.flush()
            proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.processes[ident] = proc
        record = {"id": ident, "argv": argv, "cwd": str(cwd), "run_dir": str(run_dir), "pid": proc.pid,
                  "log": str(log), "started": time.time(), "returncode": None}
        atomic_write_text(self.folder / f"{ident}.json", json.dumps(record, indent=1) + "\n")
        return record

    # ------------------------------------------------------------------------------------------ reading
    def launches(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest launches: running or their exit code, and for a failed one its error line."""
        self._reap()
        out = []
        for path in sorted(self.folder.glob("*.json"), reverse=True)[:limit] if self.folder.is_dir() else []:
            record = _record(path)
            if record is None:
                continue
            code = record.get("returncode")
            pid = record.get("pid")
            running = code is None and isinstance(pid, int) and pid > 0 and process_alive(pid)
            record["state"] = "running" if running else ("ended" if code is None else f"exit {code}")
            log = self.log_of(record)
            if not running and code not in (None, 0, 130) and log is not None:
                record["error"] = error_line(_read(log), code)
            out.append(record)
        return out

    def log_for(self, run_dir: Path) -> Path | None:
        """The output of the newest launch for ``run_dir``."""
        if not self.folder.is_dir():
            return None
        for path in sorted(self.folder.glob("*.json"), reverse=True):
            record = _record(path)
            if record is not None and Path(str(record.get("run_dir", ""))) == run_dir.resolve():
                return self.log_of(record)
        return None

    def log_of(self, record: dict[str, Any]) -> Path | None:
        """A launch record's log file, when it lies in the launches folder (whatever else the record names)."""
        log = record.get("log")
        if not isinstance(log, str) or not log:
            return None
        path = Path(log).resolve()
        return path if path.is_relative_to(self.folder.resolve()) and path.is_file() else None

    def _reap(self) -> None:
        """Collect the exit codes of the processes this dashboard started."""
        for ident, proc in list(self.processes.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.processes[ident]
            path = self.folder / f"{ident}.json"
            record = _record(path)
            if record is None:
                continue
            record["returncode"] = code
            atomic_write_text(path, json.dumps(record, indent=1) + "\n")

    def close(self) -> None:
        self._reap()


def _start_folder(run_dir: Path, output_dir: Path) -> Path:
    """The folder a run was started from: where its (relative) output_dir leads to ``run_dir``."""
    run_dir = run_dir.resolve()
    if output_dir.is_absolute():
        if output_dir.resolve() != run_dir:
            raise LeantuneError(f"the config of {run_dir} has output_dir {output_dir}, another folder: it was moved; "
                                "resume it with `leantune train CONFIG --resume` and the output_dir set right.")
        return Path.cwd()
    parts = output_dir.parts
    if tuple(run_dir.parts[-len(parts):]) != parts:
        raise LeantuneError(f"the config of {run_dir} has output_dir {output_dir}, which does not end this folder's "
                            "path: it was moved; resume it from the command line with the output_dir set right.")
    return Path(*run_dir.parts[:-len(parts)])


def _record(path: Path) -> dict[str, Any] | None:
    """A launch record (None when it cannot be read or is not a mapping)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""

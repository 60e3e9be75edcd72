"""A run's state: its ``status.json`` (which process trains it, and how that process ended: finished, interrupted,
or failed with its error line and the end of its traceback), and :func:`run_status`, the one decision of whether a
run is running, finished, interrupted or failed, made by reading the folder and checking the process, never by
remembering.

``status.json`` is written atomically by the first process of the run; a process only ever records the end of a
run it started."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from leantune.errors import LeantuneError
from leantune.files import atomic_write_text
from leantune.run.files import error_first_line
from leantune.run.layout import ERROR_FILE, STATUS_FILE, candidates, has_result


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status record ({} when it has none or it cannot be read)."""
    try:
        data = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mark_running(run_dir: Path, **fields: Any) -> None:
    """Record that this process trains the run now (pid, host, command line, start time, and ``fields``)."""
    record = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
              "started": time.time(), **fields}
    atomic_write_text(run_dir / STATUS_FILE, json.dumps(record, indent=1) + "\n")


def update_running(run_dir: Path, **fields: Any) -> None:
    """Add ``fields`` (e.g. the run's total steps) to the record of the run this process trains."""
    record = read_status(run_dir)
    if record.get("pid") == os.getpid():
        atomic_write_text(run_dir / STATUS_FILE, json.dumps({**record, **fields}, indent=1) + "\n")


def mark_ended(run_dir: Path, status: str, error: BaseException | None = None) -> None:
    """Record how the run this process trains ended: ``finished``, ``interrupted`` or ``failed`` (with the error
    line and the last lines of the traceback). Does nothing when this process did not start the run's record
    (e.g. it refused to write into a folder that holds another run)."""
    record = read_status(run_dir)
    if record.get("pid") != os.getpid() or record.get("status") != "running":
        return
    record.update(status=status, ended=time.time())
    if error is not None:
        record["error"] = error_line(error)
        lines = traceback.format_exception(error)
        record["traceback"] = lines[:1] + lines[-11:] if len(lines) > 12 else lines  # the header, then the end
    atomic_write_text(run_dir / STATUS_FILE, json.dumps(record, indent=1) + "\n")


def error_line(error: BaseException) -> str:
    """One line that says what went wrong: leantune's own message, else the exception's type and message."""
    if isinstance(error, LeantuneError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    return f"{type(error).__name__}: {error}"


def is_running(record: dict[str, Any]) -> bool:
    """Whether the process a status record names still trains the run: on this host, alive, and (where /proc
    shows it) still running the same command line, not another program that got the pid since."""
    if record.get("status") != "running" or record.get("host") not in (None, socket.gethostname()):
        return False
    pid = record.get("pid")
    if not process_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return True
    argv = record.get("argv")
    tail = [str(a) for a in argv[1:]] if isinstance(argv, list) else []
    return not tail or cmdline[-len(tail):] == tail


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` is alive on this machine (a zombie, exited but not yet reaped, counts as dead). Only a
    positive int names one process (``kill`` reads 0 and negative numbers as process groups)."""
    if type(pid) is not int or pid <= 0:
        return False
    if sys.platform == "win32":  # there kill(pid, 0) is not a probe: it sends CTRL_C_EVENT
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: kill(0) said it exists


def _windows_process_alive(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited, by the Win32 API (no signal sent)."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists, run by another user
    code = ctypes.c_ulong()
    try:
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def run_status(run_dir: Path, record: dict[str, Any] | None = None) -> tuple[str, str | None]:
    """(status, error line) of a run: running, finished, interrupted or failed. With a status record: its process
    checked when it says running (a process gone without a word leaves the run interrupted when it has a
    checkpoint, else failed); without one (older runs, compare failures): from metrics.json, error.txt and
    checkpoints."""
    record = read_status(run_dir) if record is None else record
    has_checkpoint = bool(candidates(run_dir))
    state = record.get("status")
    if state == "running":
        if is_running(record):
            return "running", None
        why = f"the training process (pid {record.get('pid')}) ended without recording a result (killed?)"
        return ("interrupted", why) if has_checkpoint else ("failed", why)
    if state == "failed" or (state is None and (run_dir / ERROR_FILE).is_file()):
        return "failed", record.get("error") or error_first_line(run_dir) or "failed"
    if state in ("finished", "interrupted"):
        return state, None
    if has_result(run_dir):
        return "finished", None
    if has_checkpoint:
        return "interrupted", None
    return "failed", "the run left no result and no checkpoint"

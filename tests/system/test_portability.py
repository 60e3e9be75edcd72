"""leantune on a system without the Unix-only modules (Windows): it imports and trains, memory readings left out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny_models import save_tiny_bert, sentiment_rows, write_csv

import leantune

UNIX_ONLY = ("resource", "fcntl", "termios", "pwd", "grp", "psutil")
WITHOUT_UNIX_MODULES = f"""
import builtins, runpy, sys
real_import = builtins.__import__

def windows_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {{}}).get("__name__") or ""
    if name.split(".")[0] in {UNIX_ONLY!r} and importer.split(".")[0] == "leantune":
        print(f"blocked {{name}} for {{importer}}", file=sys.stderr)
        raise ImportError(f"No module named {{name!r}}")
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = windows_import
import leantune
sys.argv = ["leantune", *sys.argv[1:]]
runpy.run_module("leantune", run_name="__main__", alter_sys=True)
"""


def test_trains_without_the_unix_only_modules(tmp_path):
    model = save_tiny_bert(tmp_path / "bert", pooling="mean")
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "model": model, "method": "lora", "method_args": {"r": 2},
        "data": {"train": write_csv(tmp_path / "train.csv", sentiment_rows(40)), "eval_fraction": 0.25},
        "train": {"max_steps": 2, "batch_size": 8, "max_length": 16, "log_every": 1, "save_every": 1},
        "output_dir": str(tmp_path / "run")}))
    root = str(Path(leantune.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", WITHOUT_UNIX_MODULES, "train", str(config)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "blocked resource for leantune.system.memory" in proc.stderr  # the lazy import was reached
    assert (tmp_path / "run" / "metrics.json").is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "loss" in row]
    assert len(steps) == 2 and not any("peak_rss_mb" in row for row in steps)


class FakeKernel32:
    """The three Win32 calls the status check makes; process 7 runs, 8 has exited, 9 is another user's."""

    def OpenProcess(self, access, inherit, pid):  # noqa: N802 - the Win32 names
        return {7: 107, 8: 108}.get(pid, 0)

    def GetExitCodeProcess(self, handle, code):  # noqa: N802
        code._obj.value = 259 if handle == 107 else 0
        return 1

    def CloseHandle(self, handle):  # noqa: N802
        return 1


def test_on_windows_a_run_s_process_is_probed_without_a_signal(monkeypatch):
    import ctypes

    from leantune.run import status

    def no_kill(pid, sig):
        raise AssertionError("os.kill on Windows sends CTRL_C_EVENT or terminates the process")

    monkeypatch.setattr(status.sys, "platform", "win32")
    monkeypatch.setattr(status.os, "kill", no_kill)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error=False: FakeKernel32(), raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: 5, raising=False)  # access denied: it exists
    assert status.process_alive(7) and not status.process_alive(8) and status.process_alive(9)

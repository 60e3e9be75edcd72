"""`leantune ui` from the command line: it serves the dashboard (templates and scripts from the package) on
127.0.0.1 and stops on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("fastapi")


def test_leantune_ui_serves_the_dashboard(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "leantune", "ui", "--runs", str(tmp_path / "runs"), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                script = urllib.request.urlopen(f"http://127.0.0.1:{port}/static/runs.js", timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "leantune ui did not answer"
                time.sleep(0.3)
        assert "<h1>Runs</h1>" in page and b"/api/runs" in script
        assert (tmp_path / "runs").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out

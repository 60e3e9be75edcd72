"""``leantune serve`` as a process: a causal LM run and a classification run in one server; Ctrl-C lets the
in-flight stream finish, then the process exits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import httpx

from leantune.cli import main


@pytest.mark.slow
def test_serve_two_runs_and_drain_on_ctrl_c(serve_runs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LEANTUNE_ADMIN_TOKEN": ""}
    cmd = [sys.executable, "-m", "leantune", "serve", str(serve_runs["r8"]), "--name", f"cls={serve_runs['sentiment']}",
           "--port", str(port), "--max-tokens", "64"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.3)
        ids = {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
        assert {"r8", "cls"} <= ids
        assert httpx.post(url + "/v1/classify", json={"model": "cls", "input": "great"}).status_code == 200
        lines: list[str] = []
        started = threading.Event()

        def stream():
            with httpx.stream("POST", url + "/v1/completions", timeout=120,
                              json={"model": "r8", "prompt": "hello", "max_tokens": 64, "temperature": 0,
                                    "stream": True}) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60)
        proc.send_signal(signal.SIGINT)
        reader.join(120)
        assert [line for line in lines if line][-1] == "data: [DONE]"  # the in-flight request finished
        assert proc.wait(120) == 0
        out = proc.stdout.read()
        assert "leantune: stopped" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_a_bad_run_folder_before_listening(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["serve", "--name", "oops"]) == 2
    assert "NAME=RUN_DIR" in capsys.readouterr().err


def test_serve_bounds_connections_and_the_shutdown_wait(serve_runs, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    assert main(["serve", str(serve_runs["r2"]), "--limit-concurrency", "7", "--shutdown-timeout", "5"]) == 0
    assert seen["limit_concurrency"] == 7 and seen["timeout_graceful_shutdown"] == 5
    assert main(["serve", str(serve_runs["r2"]), "--limit-concurrency", "0"]) == 2

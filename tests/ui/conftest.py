"""A runs folder with a finished, a failed and a running tiny run, the dashboard serving it on a free port of
127.0.0.1 (stopped at the end), and a real headless Chromium (Debian's ``chromium``) driven by Playwright."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from tiny_models import save_tiny_bert, sentiment_rows, write_csv

from leantune.config import validate_config
from leantune.train.loop import fine_tune


def tiny_run(tmp: Path, model: str, data: str, name: str, **train) -> dict:
    return {"model": model, "method": "lora", "method_args": {"r": 2, "alpha": 4},
            "data": {"train": data, "eval_fraction": 0.25},
            "train": {"max_steps": 3, "batch_size": 8, "max_length": 24, "log_every": 1, "eval_every": 1,
                      "save_every": 1, "num_threads": 1, "seed": 1, **train},
            "output_dir": str(tmp / "runs" / name)}


@pytest.fixture(scope="session")
def runs_env(tmp_path_factory):
    """tmp/runs/{finished,failed,running}; tmp/quick.yaml (a 3-step run to launch); the running run's process."""
    tmp = tmp_path_factory.mktemp("ui")
    model = save_tiny_bert(tmp / "m", pooling="mean")
    data = write_csv(tmp / "train.csv", sentiment_rows(120))
    fine_tune(validate_config(tiny_run(tmp, model, data, "finished")), quiet=True)
    with pytest.raises(RuntimeError, match="overflow"):  # an lr far too large: the optimizer fails
        fine_tune(validate_config(tiny_run(tmp, model, data, "failed", lr=1e38, eval_every=None)), quiet=True)
    slow = tmp / "slow.yaml"
    slow.write_text(yaml.safe_dump(tiny_run(tmp, model, data, "running", max_steps=100000, eval_every=25,
                                            save_every=25)))
    (tmp / "quick.yaml").write_text(yaml.safe_dump(tiny_run(tmp, model, data, "launched")))
    proc = subprocess.Popen([sys.executable, "-m", "leantune", "train", str(slow), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    yield {"tmp": tmp, "runs": tmp / "runs", "model": model, "data": data, "running": proc}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def generative_runs(runs_env):
    """Two more finished runs in the runs folder: an instruction run on a tiny Llama (sample predictions beside
    references) and an extractive QA run on a tiny BERT."""
    import json

    from tiny_models import save_tiny_bert, save_tiny_llama

    tmp, runs = runs_env["tmp"], runs_env["runs"]
    colors = ["red", "blue", "green"]
    rows = [{"instruction": f"What colour is item {i}?", "output": colors[i % 3]} for i in range(40)]
    (tmp / "inst.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx = "the red house is big . the blue dog is small ."
    squad = {"data": [{"title": f"t{k}", "paragraphs": [{"context": ctx, "qas": [
        {"id": f"{k}", "question": "what is small", "answers": [{"text": "blue dog",
                                                                  "answer_start": ctx.index("blue dog")}]}]}]}
        for k in range(10)]}
    (tmp / "squad.json").write_text(json.dumps(squad))
    llama = save_tiny_llama(tmp / "llama", [r["instruction"] for r in rows] + colors + [ctx])
    bert = save_tiny_bert(tmp / "bert")
    train = {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "max_length": 48, "num_threads": 1}
    fine_tune(validate_config({"model": llama, "task": "instruction", "method": "lora",
                               "task_args": {"eval_max_examples": 4, "max_new_tokens": 4},
                               "data": {"train": str(tmp / "inst.jsonl"), "format": "alpaca"}, "train": train,
                               "output_dir": str(runs / "chat")}), quiet=True)
    fine_tune(validate_config({"model": bert, "task": "extractive_qa", "method": "lora",
                               "data": {"train": str(tmp / "squad.json"), "format": "squad", "eval_fraction": 0.3},
                               "train": train, "output_dir": str(runs / "qa")}), quiet=True)
    return {"chat": runs / "chat", "qa": runs / "qa"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(runs: Path):
    """The dashboard over ``runs`` on 127.0.0.1:<free port> (answering that address only) while in the block; its
    base URL."""
    import uvicorn

    from leantune.ui.app import create_app

    port = free_port()
    app = create_app(runs, hosts=[f"127.0.0.1:{port}"])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "the dashboard did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def server(runs_env):
    """The dashboard over runs_env's runs folder; its base URL."""
    with serving(runs_env["runs"]) as url:
        yield url


@pytest.fixture
def serve():
    """serve(runs) -> the base URL of another dashboard, over ``runs``, for the rest of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda runs: stack.enter_context(serving(runs))


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from the system (never a downloaded one)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"

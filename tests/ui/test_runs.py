"""The dashboard's reading of run folders without a browser: statuses from the files and the process, the
allowed config files, and the folder a run is resumed from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from leantune.errors import LeantuneError
from leantune.run.status import run_status
from leantune.ui.launch import Launcher, _start_folder
from leantune.ui.runs import find_runs, resolve_run


def _run(root: Path, name: str, *, status: dict | None = None, metrics: bool = False, checkpoint: bool = False,
         error: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"task: classification\noutput_dir: {d}\n")
    if status is not None:
        (d / "status.json").write_text(json.dumps(status))
    if metrics:
        (d / "metrics.json").write_text('{"accuracy": 0.9}')
        (d / "adapter").mkdir()
    if checkpoint:
        (d / "checkpoints" / "step-0000005").mkdir(parents=True)
        (d / "checkpoints" / "latest").write_text("step-0000005\n")
    if error is not None:
        (d / "error.txt").write_text(error + "\n\nlog tail\n")
    return d


def test_status_from_files_when_there_is_no_record(tmp_path):
    assert run_status(_run(tmp_path, "a", metrics=True)) == ("finished", None)
    assert run_status(_run(tmp_path, "b", checkpoint=True)) == ("interrupted", None)
    assert run_status(_run(tmp_path, "c", error="prefix needs a decoder")) == ("failed", "prefix needs a decoder")
    assert run_status(_run(tmp_path, "d"))[0] == "failed"


def test_a_running_record_whose_process_is_gone(tmp_path):
    dead = {"status": "running", "pid": 2**22 + 12345, "argv": ["leantune", "train"]}
    status, why = run_status(_run(tmp_path, "a", status=dead, checkpoint=True))
    assert status == "interrupted" and "ended without recording a result" in why
    assert run_status(_run(tmp_path, "b", status=dead))[0] == "failed"
    assert run_status(_run(tmp_path, "c", status={"status": "failed", "error": "boom"})) == ("failed", "boom")


def test_run_folders_are_found_and_names_cannot_leave_the_runs_folder(tmp_path):
    _run(tmp_path / "runs", "x")
    _run(tmp_path / "runs", "cmp/runs/lora", metrics=True)
    (tmp_path / "runs" / "x" / "checkpoints" / "step-1").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "checkpoints" / "step-1" / "config.yaml").write_text("{}")
    root = tmp_path / "runs"
    assert [p.relative_to(root).as_posix() for p in find_runs(root)] == ["cmp/runs/lora", "x"]
    assert resolve_run(root, "cmp/runs/lora") == (root / "cmp/runs/lora").resolve()
    for bad in ("..", "../runs/../..", "x/checkpoints/step-1", "nope"):
        with pytest.raises(KeyError):
            resolve_run(root, bad)


def test_only_configs_under_allowed_folders_are_launched(tmp_path):
    root = tmp_path / "work" / "runs"
    root.mkdir(parents=True)
    ok = tmp_path / "work" / "a.yaml"
    ok.write_text("{}")
    outside = tmp_path / "other" / "b.yaml"
    outside.parent.mkdir()
    outside.write_text("{}")
    launcher = Launcher(root, [])
    assert launcher.check_config(str(ok)) == ok.resolve()
    with pytest.raises(LeantuneError, match="not under an allowed folder"):
        launcher.check_config(str(outside))
    with pytest.raises(LeantuneError, match="not under an allowed folder"):
        launcher.check_config(str(tmp_path / "work" / ".." / "other" / "b.yaml"))
    assert Launcher(root, [outside.parent]).check_config(str(outside)) == outside.resolve()
    assert str(ok.resolve()) in launcher.configs()


def test_a_run_resumes_from_the_folder_it_was_started_in(tmp_path):
    run = tmp_path / "proj" / "runs" / "a"
    assert _start_folder(run, Path("runs/a")) == tmp_path / "proj"
    assert _start_folder(run, run) == Path(os.getcwd())
    with pytest.raises(LeantuneError, match="moved"):
        _start_folder(run, Path("runs/b"))


def test_posts_only_from_the_dashboard_and_bind_to_localhost_by_default(tmp_path):
    from fastapi.testclient import TestClient

    from leantune.cli import build_parser
    from leantune.ui.app import create_app

    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"
    app = create_app(tmp_path / "runs")
    client = TestClient(app, base_url="http://127.0.0.1:7860")
    own = {"origin": "http://127.0.0.1:7860", "x-csrf-token": app.state.csrf_token}
    assert client.get("/api/runs").json() == {"runs": [], "launches": []}
    evil = client.post("/api/launch", json={"config": "x.yaml"}, headers={**own, "origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-origin" in evil.json()["error"]
    form = client.post("/api/launch", content=b'{"config": "x.yaml"}', headers={**own, "content-type": "text/plain"})
    assert form.status_code == 415
    refused = client.post("/api/launch", json={"config": str(tmp_path / "x.yaml")}, headers=own)
    assert refused.status_code == 400 and "does not exist" in refused.json()["error"]
    assert client.get("/api/run/nope").status_code == 404
    assert client.post("/serve/v1/classify", json={"model": "m", "input": "x"}, headers=own).status_code == 503


def test_launch_runs_leantune_train_as_the_command_line_would(tmp_path, monkeypatch):
    import subprocess

    import yaml

    from leantune.ui import confine, launch

    started = []

    class FakeProcess:
        pid = 4242

        def __init__(self, command, **kwargs):
            started.append((command, kwargs))

        def poll(self):
            return 0

    monkeypatch.setattr(launch.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(confine, "max_processes", lambda: 4)  # two processes, on any machine
    root = tmp_path / "runs"
    root.mkdir()
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,b\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": "minilm", "data": {"train": str(data)}, "output_dir": str(root / "r")}))
    record = Launcher(root, []).train(str(config), ["train.max_steps=7"], nproc=2)
    command, kwargs = started[0]
    pinned = ["--set", f"output_dir={json.dumps(str((root / 'r').resolve()))}", "--set", "trust_remote_code=false",
              "--set", "allow_pickle_weights=false"]  # what was checked, whatever the file says later
    assert command[1:] == ["-m", "leantune", "train", str(config), "--set", "train.max_steps=7", *pinned, "--quiet",
                           "--nproc", "2"]
    assert kwargs["start_new_session"] and kwargs["stdin"] == subprocess.DEVNULL
    assert record["run_dir"] == str((root / "r").resolve()) and record["pid"] == 4242
    assert Path(record["log"]).read_text().startswith("$ leantune train")
    launches = Launcher(root, []).launches()
    assert [x["id"] for x in launches] == [record["id"]]

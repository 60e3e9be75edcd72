"""Nobody gets in where they don't belong: the dashboard answers only its own addresses (a DNS-rebinding page gets
403 on every route), changes things only for its own pages (Origin and CSRF token), launches only inside the runs
folder without foreign code, signals only its runs' training processes, and shows only its own launch logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from leantune.errors import LeantuneError
from leantune.ui import confine, launch
from leantune.ui.launch import Launcher

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.routing import Mount  # noqa: E402

from leantune.ui.app import create_app  # noqa: E402
from leantune.ui.guard import AllowedHosts, served_hosts  # noqa: E402

HOST = "127.0.0.1:7860"
OWN = f"http://{HOST}"


def own_headers(app) -> dict[str, str]:
    return {"origin": OWN, "x-csrf-token": app.state.csrf_token}


def example_paths(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in; a mounted app's own routes too."""
    out = []
    for route in app.routes:
        if isinstance(route, Mount):
            inner = {"/static": "/ui.js", "/serve": "/v1/models"}[route.path]
            out += [("GET", route.path + inner), ("POST", route.path + "/v1/chat/completions")]
        else:
            path = route.path.replace("{name:path}", "finished").replace("{key}", "k").replace("{file}", "f")
            out += [(m, path) for m in sorted(route.methods)]
    return out


@pytest.fixture
def app(tmp_path):
    runs = tmp_path / "runs"
    (runs / "finished").mkdir(parents=True)
    (runs / "finished" / "config.yaml").write_text("task: classification\n")
    return create_app(runs, hosts=served_hosts("127.0.0.1", 7860))


def test_a_rebinding_host_gets_403_on_every_route(app):
    paths = example_paths(app)
    assert {"/", "/api/runs", "/api/launch", "/static/ui.js", "/serve/v1/models"} <= {p for _, p in paths}
    evil = TestClient(app, base_url="http://evil.example:7860")
    for method, path in paths:
        headers = {"origin": "http://evil.example:7860", "x-csrf-token": app.state.csrf_token}
        r = evil.request(method, path, headers=headers, json={} if method == "POST" else None)
        assert r.status_code == 403, (method, path, r.status_code)
        assert "--allow-host" in r.json()["error"]
    own = TestClient(app, base_url=OWN)
    assert own.get("/").status_code == 200 and own.get("/static/ui.js").status_code == 200
    assert TestClient(app, base_url="http://localhost:7860").get("/api/runs").status_code == 200
    assert TestClient(app, base_url="http://127.0.0.1:7861").get("/api/runs").status_code == 403


def test_allowed_hosts_and_the_allow_host_option():
    from leantune.cli import build_parser

    args = build_parser().parse_args(["ui", "--allow-host", "box.lan", "--allow-host", "proxy:443"])
    assert args.allow_host == ["box.lan", "proxy:443"]
    hosts = AllowedHosts(served_hosts("127.0.0.1", 7860) + args.allow_host)
    assert hosts.allows("127.0.0.1:7860") and hosts.allows("LOCALHOST:7860") and hosts.allows("[::1]:7860")
    assert hosts.allows("box.lan:9999") and hosts.allows("proxy", default_port=443)
    for bad in (None, "", "evil.example:7860", "127.0.0.1:80", "localhost.:7860", "proxy:444", "x:y:z", "[::1"):
        assert not hosts.allows(bad), bad
    assert served_hosts("10.0.0.5", 80) == ["10.0.0.5:80"]
    assert "localhost:80" in served_hosts("0.0.0.0", 80)


def test_a_state_changing_request_needs_the_origin_and_the_token(app, tmp_path):
    client = TestClient(app, base_url=OWN)
    body = {"config": str(tmp_path / "x.yaml")}
    token = app.state.csrf_token
    assert f'<meta name="csrf-token" content="{token}">' in client.get("/").text
    assert create_app(tmp_path / "runs").state.csrf_token != token  # one per process (per app)
    cases = {"no origin": {"x-csrf-token": token}, "no token": {"origin": OWN},
             "wrong token": {"origin": OWN, "x-csrf-token": token[:-1] + "x"},
             "other port": {"origin": "http://127.0.0.1:9999", "x-csrf-token": token},
             "null origin": {"origin": "null", "x-csrf-token": token}}
    for why, headers in cases.items():
        for path in ("/api/launch", "/api/stop/finished", "/api/playground/serve", "/serve/v1/classify"):
            r = client.post(path, json=body, headers=headers)
            assert r.status_code == 403, (why, path, r.status_code)
    assert client.delete("/api/runs", headers={"x-csrf-token": token}).status_code == 403
    allowed = client.post("/api/launch", json=body, headers=own_headers(app))
    assert allowed.status_code == 400 and "does not exist" in allowed.json()["error"]


def test_a_request_another_site_makes_is_refused_even_a_get(app):
    client = TestClient(app, base_url=OWN)
    assert client.get("/api/runs").status_code == 200
    for site in ("cross-site", "same-site"):  # an <img src> on another site (or another port) writing compare plots
        r = client.get("/api/compare", params={"runs": "finished"}, headers={"sec-fetch-site": site})
        assert r.status_code == 403 and "another site" in r.json()["error"]
    assert client.get("/api/runs", headers={"sec-fetch-site": "same-origin"}).status_code == 200


def test_an_internal_error_says_nothing_of_the_inside(app, monkeypatch):
    from leantune.ui import app as app_module

    def broken(*args):
        raise RuntimeError("secret internals /etc/shadow")

    monkeypatch.setattr(app_module, "list_runs", broken)
    r = TestClient(create_app(app.state.launcher.root), base_url=OWN, raise_server_exceptions=False).get("/api/runs")
    assert r.status_code == 500 and "secret" not in r.text and "RuntimeError" not in r.text


def test_names_no_file_system_takes_are_a_4xx(app, tmp_path):
    client = TestClient(app, base_url=OWN)
    long = "a" * 5000
    for config in (str(tmp_path / long), str(tmp_path / "a\0.yaml"), "~no-such-user/c.yaml"):
        r = client.post("/api/launch", json={"config": config}, headers=own_headers(app))
        assert r.status_code == 400, (config[:40], r.text)
    for path in (f"/api/run/{long}", "/api/run/a%00", f"/compare-files/{long}/f", "/compare-files/a%00/f",
                 f"/api/compare?runs={long}"):
        assert client.get(path).status_code == 404, path
    assert client.post("/api/stop/a%00", json={}, headers=own_headers(app)).status_code == 404


# --------------------------------------------------------------------------------------------- launches
@pytest.fixture
def project(tmp_path, monkeypatch):
    """tmp/work/runs (the runs folder), tmp/work/c.yaml (a valid config), tmp/outside/sentinel/keep.txt; every
    process start recorded instead of made."""
    started: list = []

    class NoProcess:
        def __init__(self, command, **kwargs):
            started.append(command)
            raise AssertionError(f"a process was started: {command}")

    monkeypatch.setattr(launch.subprocess, "Popen", NoProcess)
    work = tmp_path / "work"
    root = work / "runs"
    root.mkdir(parents=True)
    data = work / "d.csv"
    data.write_text("text,label\na,b\n")
    config = work / "c.yaml"
    config.write_text(yaml.safe_dump({"model": "minilm", "data": {"train": str(data)},
                                      "output_dir": str(root / "r")}))
    sentinel = tmp_path / "outside" / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "keep.txt").write_text("keep me")
    return {"root": root, "config": config, "data": data, "sentinel": sentinel, "started": started}


def refused_launches(project) -> dict[str, tuple[str, list[str], dict]]:
    root, sentinel, work = project["root"], project["sentinel"], project["config"].parent
    (root / "link").symlink_to(sentinel)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run")
    own = yaml.safe_load(project["config"].read_text())
    (work / "outside.yaml").write_text(yaml.safe_dump({**own, "output_dir": str(sentinel)}))
    (work / "pickle.yaml").write_text(yaml.safe_dump({**own, "allow_pickle_weights": True}))
    c = str(project["config"])
    return {
        "output_dir outside": (c, [f"output_dir={sentinel}"], {"overwrite": True}),
        "output_dir relative outside": (c, [f"output_dir={os.path.relpath(sentinel)}"], {"overwrite": True}),
        "output_dir in the config": (str(work / "outside.yaml"), [], {"overwrite": True}),
        "output_dir a symlink out": (c, [f"output_dir={root / 'link'}"], {"overwrite": True}),
        "output_dir the runs folder": (c, [f"output_dir={root}"], {"overwrite": True}),
        "output_dir the ui folder": (c, [f"output_dir={root / '.ui' / 'launches'}"], {"overwrite": True}),
        "overwrite a non-run folder": (c, [f"output_dir={root / 'notes'}"], {"overwrite": True}),
        "trust_remote_code": (c, ["trust_remote_code=true", "model=someone/model"], {}),
        "allow_pickle_weights": (c, ["allow_pickle_weights=true"], {}),
        "allow_pickle_weights in the config": (str(work / "pickle.yaml"), [], {}),
        "a flag as an override": (c, ["--overwrite"], {}),
        "huge nproc": (c, [], {"nproc": 10**6}),
        "zero nproc": (c, [], {"nproc": 0}),
        "negative nproc": (c, [], {"nproc": -1}),
    }


def test_launches_outside_the_safe_set_are_refused_before_any_process_starts(project):
    launcher = Launcher(project["root"], [])
    for why, (config, overrides, kwargs) in refused_launches(project).items():
        with pytest.raises(LeantuneError):
            launcher.train(config, overrides, **kwargs)
        assert project["started"] == [], why
    for bad in (["output_dir=" + str(project["root"] / ("a" * 5000))], ["train.lr=["]):
        with pytest.raises(LeantuneError):
            launcher.train(str(project["config"]), bad)
    assert (project["sentinel"] / "keep.txt").read_text() == "keep me"
    assert (project["root"] / "notes" / "todo.txt").is_file()


def test_refused_launches_are_a_400_json_error(project):
    app = create_app(project["root"])
    client = TestClient(app, base_url=OWN)
    for why, (config, overrides, kwargs) in refused_launches(project).items():
        body = {"config": config, "overrides": overrides, **kwargs}
        r = client.post("/api/launch", json=body, headers=own_headers(app))
        assert r.status_code == 400 and r.json()["error"], (why, r.status_code, r.text)
    assert project["started"] == []
    assert (project["sentinel"] / "keep.txt").read_text() == "keep me"
    assert "trust_remote_code" in client.post("/api/launch", headers=own_headers(app), json={
        "config": str(project["config"]), "overrides": ["trust_remote_code=true"]}).json()["error"]
    assert "inside the runs folder" in client.post("/api/launch", headers=own_headers(app), json={
        "config": str(project["config"]), "overrides": [f"output_dir={project['sentinel']}"]}).json()["error"]


def test_what_was_checked_is_what_the_process_reads(project, monkeypatch):
    """A name that YAML would cut (`` #`` starts a comment) or fold (a newline) cannot turn the checked run folder
    into the runs folder itself or another run: the pinned values are quoted and read back."""
    started: list = []

    class Started:
        pid = 4242

        def __init__(self, command, **kwargs):
            started.append(command)

        def poll(self):
            return 0

    monkeypatch.setattr(launch.subprocess, "Popen", Started)
    root = project["root"]
    (root / "keep").mkdir()
    (root / "keep" / "config.yaml").write_text("task: classification\n")
    launcher = Launcher(root, [])
    for name in (" #x", "keep #x", ".ui #x"):
        launcher.train(str(project["config"]), [f"output_dir={json.dumps(str(root / name))}"], overwrite=True)
        argv = started.pop()
        pinned = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        cfg = confine.load_config(str(project["config"]), pinned)
        assert cfg.output_dir == str((root / name).resolve()) and not cfg.trust_remote_code, name
    assert (root / "keep" / "config.yaml").is_file()


def test_the_process_bound_follows_the_machine(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(confine.os, "cpu_count", lambda: 3)
    assert confine.max_processes() == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert confine.max_processes() == 2


def test_a_resume_that_would_run_foreign_code_is_refused(project):
    run = project["root"] / "remote"
    (run / "checkpoints" / "step-0000005").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step-0000005\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "minilm", "data": {"train": str(project["data"])},
                                                     "output_dir": str(run), "trust_remote_code": True}))
    with pytest.raises(LeantuneError, match="trust_remote_code"):
        Launcher(project["root"], []).resume(run.resolve())
    assert project["started"] == []


# --------------------------------------------------------------------------------------------- stops
def running_run(root: Path, name: str, pid, argv: list[str]) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"output_dir: {run}\n")
    (run / "status.json").write_text(json.dumps({"status": "running", "pid": pid, "host": socket.gethostname(),
                                                 "argv": argv, "started": time.time()}))
    return run.resolve()


@pytest.fixture
def signals(monkeypatch):
    """Every signal the dashboard sends, recorded instead of sent (probes, signal 0, still go through)."""
    sent: list[tuple[int, int]] = []
    real = os.kill

    def kill(pid: int, sig: int) -> None:
        if sig == 0:
            return real(pid, 0)
        sent.append((pid, sig))

    monkeypatch.setattr(os, "kill", kill)
    return sent


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_stop_refuses_a_status_naming_a_foreign_process(tmp_path, sleeper, signals):
    root = tmp_path / "runs"
    launcher = Launcher(root, [])
    foreign = running_run(root, "foreign", sleeper.pid, ["sleep", "60"])  # its argv matches the process's own
    everyone = running_run(root, "everyone", -1, [])
    for run in (foreign, everyone, running_run(root, "zero", 0, []), running_run(root, "text", "1", [])):
        with pytest.raises(LeantuneError):
            launcher.stop(run)
    assert signals == [] and sleeper.poll() is None
    app = create_app(root)
    client = TestClient(app, base_url=OWN)
    for name in ("foreign", "everyone"):
        r = client.post(f"/api/stop/{name}", json={}, headers=own_headers(app))
        assert r.status_code == 400 and "nothing stopped" in r.json()["error"]
    assert signals == [] and sleeper.poll() is None


def test_stop_signals_the_training_process_of_that_run(tmp_path):
    """A process whose command line is `leantune train CONFIG` with that run as output_dir (here a sleeping
    stand-in, started in its own folder with a relative config) is stopped; the same process named by another
    run's status is not."""
    root = tmp_path / "runs"
    (tmp_path / "c.yaml").write_text("output_dir: runs/mine\n")
    code = "import time; time.sleep(60)"
    argv = [sys.executable, "-c", code, "leantune", "train", "c.yaml", "--set", "train.lr=1", "--quiet"]
    proc = subprocess.Popen(argv, cwd=tmp_path)
    try:
        mine = running_run(root, "mine", proc.pid, ["-c", *argv[3:]])
        other = running_run(root, "other", proc.pid, ["-c", *argv[3:]])
        launcher = Launcher(root, [])
        with pytest.raises(LeantuneError, match="does not train other"):
            launcher.stop(other)
        assert proc.poll() is None
        assert launcher.stop(mine) == proc.pid
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_stop_signals_a_process_the_dashboard_started_for_that_run(tmp_path, sleeper):
    root = tmp_path / "runs"
    launcher = Launcher(root, [])
    run = running_run(root, "launched", sleeper.pid, ["sleep", "60"])
    launcher.folder.mkdir(parents=True)
    (launcher.folder / "x.json").write_text(json.dumps({"id": "x", "run_dir": str(run), "pid": sleeper.pid}))
    launcher.processes["x"] = sleeper
    assert launcher.stop(run) == sleeper.pid
    assert sleeper.wait(timeout=30) == -signal.SIGTERM


def test_train_command_lines():
    assert confine.train_command(["python", "-m", "leantune", "--debug", "train", "c.yaml", "--set", "a=1",
                                  "--quiet", "--nproc", "2", "--set=b=2"]) == ("c.yaml", ["a=1", "b=2"])
    assert confine.train_command(["/venv/bin/leantune", "train", "c.yaml"]) == ("c.yaml", [])
    for other in (["sleep", "60"], ["leantune", "serve", "x"], ["leantune", "train"], ["train", "c.yaml"]):
        assert confine.train_command(other) is None


# --------------------------------------------------------------------------------------------- launch logs
def test_launch_logs_are_read_only_from_the_launches_folder(tmp_path):
    root = tmp_path / "runs"
    run = root / "failed"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("task: classification\n")
    (run / "status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret line\n")
    launches = root / ".ui" / "launches"
    launches.mkdir(parents=True)
    (launches / "a.json").write_text(json.dumps({"id": "a", "argv": ["train"], "run_dir": str(run.resolve()),
                                                 "pid": 0, "log": str(secret), "returncode": 1}))
    (launches / "b.json").write_text(json.dumps({"id": "b", "argv": ["train"], "run_dir": str(run.resolve()),
                                                 "pid": 0, "log": str(launches / ".." / ".." / ".." / "secret.txt"),
                                                 "returncode": 1}))
    app = create_app(root)
    client = TestClient(app, base_url=OWN)
    page = client.get("/api/run/failed").json()
    assert page["summary"]["status"] == "failed" and "the secret line" not in json.dumps(page)
    assert "the secret line" not in client.get("/api/runs").text
    (launches / "c.json").write_text(json.dumps({"id": "c", "argv": ["train"], "run_dir": str(run.resolve()),
                                                 "pid": 0, "log": str(launches / "c.log"), "returncode": 1}))
    (launches / "c.log").write_text("$ leantune train\nLeantuneError: own log line\n")
    assert "own log line" in json.dumps(client.get("/api/run/failed").json()["log_tail"])

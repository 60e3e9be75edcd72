"""Adapters loaded and unloaded at run time: the admin token, the adapter root, validation, and LRU eviction with
100 adapters on one base."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
import yaml
from conftest import ADMIN, LiveServer, httpx
from safetensors.torch import load_file, save_file
from served_runs import make_run

from leantune.serve.server import ServeOptions, Server

AUTH = {"Authorization": f"Bearer {ADMIN}"}


def test_admin_needs_the_token_and_is_off_without_one(live):
    url = live.url + "/v1/adapters"
    body = {"name": "extra", "path": "extra"}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.delete(url + "/r2").status_code == 401
    token = live.server.options.admin_token
    live.server.options.admin_token = None
    try:
        r = httpx.post(url, json=body, headers=AUTH)
        assert r.status_code == 403 and "--admin-token" in r.json()["error"]["message"]
    finally:
        live.server.options.admin_token = token


def test_load_serve_and_unload_an_adapter(live):
    client = live.client()
    r = httpx.post(live.url + "/v1/adapters", json={"name": "extra", "path": "extra"}, headers=AUTH, timeout=60)
    assert r.status_code == 201, r.text
    models = {m.id: m for m in client.models.list().data}
    assert models["extra"].parent == models["r2"].parent
    out = client.chat.completions.create(model="extra", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                         temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length")
    again = httpx.post(live.url + "/v1/adapters", json={"name": "extra", "path": "extra"}, headers=AUTH)
    assert again.status_code == 409
    assert httpx.delete(live.url + "/v1/adapters/extra", headers=AUTH).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="extra", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert httpx.delete(live.url + "/v1/adapters/extra", headers=AUTH).status_code == 404


@pytest.mark.parametrize("path, reason", [
    ("../outside", "'..' is not allowed"),
    ("escape", "outside --adapter-root"),  # a symlink inside the root that points out of it
    ("/etc", "outside --adapter-root"),
    ("missing", "not a folder"),
])
def test_paths_must_stay_inside_the_adapter_root(live, path, reason):
    r = httpx.post(live.url + "/v1/adapters", json={"name": "x", "path": path}, headers=AUTH)
    assert r.status_code == 400 and reason in r.json()["error"]["message"]
    assert "x" not in [m.id for m in live.client().models.list().data]


def test_bad_adapters_are_refused_with_the_reason(live, serve_runs):
    root = serve_runs["root"]
    llama = str(serve_runs["llama"])
    cases = {}
    broken = make_run(root / "broken-shapes", llama, "lora", {"r": 4}, seed=3)
    weights = broken / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    save_file(tensors, str(weights))
    cases["broken-shapes"] = "has shape"
    nan = make_run(root / "nan", llama, "lora", {"r": 4}, seed=4)
    tensors = load_file(str(nan / "adapter" / "adapter_model.safetensors"))
    tensors[key] = tensors[key] * float("nan")
    save_file(tensors, str(nan / "adapter" / "adapter_model.safetensors"))
    cases["nan"] = "NaN"
    garbage = make_run(root / "garbage", llama, "lora", {"r": 4}, seed=5)
    (garbage / "adapter" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    cases["garbage"] = "not a readable safetensors"
    bitfit = make_run(root / "bitfit", str(serve_runs["bert"]), "bitfit", {}, task="classification",
                      labels=["a", "b"])
    cases["bitfit"] = "BITFIT"
    shutil.copytree(serve_runs["sentiment"], root / "other-base")
    other = yaml.safe_load((root / "other-base" / "config.yaml").read_text())
    other.update(task="extractive_qa", task_args={})
    (root / "other-base" / "config.yaml").write_text(yaml.safe_dump(other))
    cases["other-base"] = "does not have"  # a classification adapter claiming to be a QA run: no such head
    make_run(root / "unserved-base", llama, "lora", {"r": 4}, task="classification", labels=["a", "b"])
    cases["unserved-base"] = "which this server does not serve"
    for name, reason in cases.items():
        r = httpx.post(live.url + "/v1/adapters", json={"name": name, "path": name}, headers=AUTH, timeout=60)
        assert r.status_code == 400 and reason in r.json()["error"]["message"], (name, r.text)
    assert bitfit.exists()
    served = [m.id for m in live.client().models.list().data]
    assert not set(cases) & set(served) and "r2" in served  # nothing half-loaded; still serving


def test_a_hundred_adapters_on_one_base_are_all_servable(serve_runs, tmp_path):
    """Registered through the admin API on a server that keeps 8 in memory; each one answers, in any order."""
    root = tmp_path / "root"
    template = make_run(root / "a000", str(serve_runs["llama"]), "lora", {"r": 4}, seed=0)
    source = load_file(str(template / "adapter" / "adapter_model.safetensors"))
    for i in range(1, 100):
        folder = root / f"a{i:03d}"
        shutil.copytree(template, folder)
        g = torch.Generator().manual_seed(i)
        save_file({k: torch.randn(v.shape, generator=g) * 0.3 for k, v in source.items()},
                  str(folder / "adapter" / "adapter_model.safetensors"))
    options = ServeOptions(max_adapters=8, max_tokens=4, admin_token=ADMIN, adapter_root=str(root))
    live = LiveServer(Server([("a000", str(template))], options))
    try:
        for i in range(1, 100):
            r = httpx.post(live.url + "/v1/adapters", json={"name": f"a{i:03d}", "path": f"a{i:03d}"}, headers=AUTH,
                           timeout=60)
            assert r.status_code == 201, r.text
        assert live.server.registry.loaded_count <= 8
        client = live.client()

        def ask(i):
            out = client.completions.create(model=f"a{i:03d}", prompt="hello", max_tokens=4, temperature=0)
            return out.choices[0].text

        first = [ask(i) for i in range(100)]
        with ThreadPoolExecutor(16) as pool:
            again = list(pool.map(ask, reversed(range(100))))[::-1]
        assert first == again  # evicted adapters come back from their folders unchanged
        assert len(set(first)) > 10  # and they really are 100 different adapters
        assert live.server.registry.loaded_count <= 8
        assert "leantune_adapters_registered 100" in httpx.get(live.url + "/metrics").text
    finally:
        live.stop()

"""Nobody gets in where they don't belong: the admin token under any mount prefix, adapter folders confined to
--adapter-root (links included), bounded request fields, client mistakes as 400 in OpenAI's shape, no internal
text in a 500, and a DELETE that never breaks the requests it races with."""

from __future__ import annotations

import shutil
import threading

import pytest
import yaml
from conftest import ADMIN, httpx
from fastapi import FastAPI
from starlette.testclient import TestClient
from test_batching import paused, wait_until

from leantune.serve import create_app
from leantune.serve.registry import UnknownModel

AUTH = {"Authorization": f"Bearer {ADMIN}"}
MESSAGES = [{"role": "user", "content": "What colour is item 3?"}]
SECRET = "SECRET-5be1"
ALTERNATING = ("{%- for m in messages -%}{%- if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] -%}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{%- endif -%}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endfor -%}"
               "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}")


def _served(live) -> set[str]:
    return {m["id"] for m in httpx.get(live.url + "/v1/models").json()["data"]}


def _is_openai_error(r) -> bool:
    body = r.json()
    return set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("prefix", ["/serve", "/a/b"])
def test_a_mounted_app_still_needs_the_admin_token(live, prefix):
    """As the dashboard's playground mounts it (its engines already running)."""
    parent = FastAPI()
    parent.mount(prefix, create_app(live.server))
    client = TestClient(parent)
    adapters = prefix + "/v1/adapters"
    assert client.delete(adapters + "/r2").status_code == 401
    assert client.delete(adapters + "/r2", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post(adapters, json={"name": "mounted", "path": "extra"}).status_code == 401
    assert "r2" in _served(live) and "mounted" not in _served(live)
    r = client.post(adapters, json={"name": "mounted", "path": "extra"}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert client.delete(adapters + "/mounted", headers=AUTH).status_code == 200
    token = live.server.options.admin_token
    live.server.options.admin_token = None  # the playground's server has no admin token: admin is off
    try:
        assert client.delete(adapters + "/r2", headers=AUTH).status_code == 403
    finally:
        live.server.options.admin_token = token
    assert "r2" in _served(live)
    assert 'endpoint="/v1/adapters/{name}",status="401"' in client.get(prefix + "/metrics").text


def _copy_run(live, serve_runs, source: str, name: str):
    folder = serve_runs["root"] / name
    shutil.copytree(serve_runs[source], folder)
    return folder


def _link_out(path, target) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("source, link", [
    ("extra", "config.yaml"),
    ("extra", "adapter"),
    ("extra", "adapter/adapter_model.safetensors"),
    ("sentiment", "labels.json"),
])
def test_files_of_an_adapter_folder_may_not_lead_outside_the_root(live, serve_runs, tmp_path, source, link):
    outside = {"config.yaml": tmp_path / "secret.txt", "labels.json": tmp_path / "labels.json",
               "adapter": serve_runs["outside"] / "adapter",
               "adapter/adapter_model.safetensors": serve_runs["outside"] / "adapter" / "adapter_model.safetensors"}
    (tmp_path / "secret.txt").write_text(f"{SECRET}: [not, yaml\n")
    (tmp_path / "labels.json").write_text(f'["{SECRET}-a", "{SECRET}-b"]')
    name = f"linked-{source}-{link.replace('/', '-').replace('.', '-')}"
    folder = _copy_run(live, serve_runs, source, name)
    _link_out(folder / link, outside[link])
    r = httpx.post(live.url + "/v1/adapters", json={"name": name, "path": name}, headers=AUTH, timeout=60)
    assert r.status_code == 400, r.text
    assert "outside --adapter-root" in r.json()["error"]["message"] and SECRET not in r.text
    assert name not in _served(live)


def test_a_yaml_error_names_the_place_not_the_text(live, serve_runs):
    folder = _copy_run(live, serve_runs, "extra", "bad-yaml")
    (folder / "config.yaml").write_text(f"model: x\n{SECRET}: [unclosed\n")
    r = httpx.post(live.url + "/v1/adapters", json={"name": "bad-yaml", "path": "bad-yaml"}, headers=AUTH, timeout=60)
    assert r.status_code == 400 and "not valid YAML (line " in r.json()["error"]["message"]
    assert SECRET not in r.text


def test_a_config_value_is_never_echoed_and_an_unserved_base_is_never_looked_up(live, serve_runs, tmp_path):
    folder = _copy_run(live, serve_runs, "extra", "bad-value")
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**raw, "train": {**raw["train"], "lr": SECRET}}))
    r = httpx.post(live.url + "/v1/adapters", json={"name": "bad-value", "path": "bad-value"}, headers=AUTH,
                   timeout=60)
    assert r.status_code == 400 and "'train.lr'" in r.json()["error"]["message"] and SECRET not in r.text
    folder = _copy_run(live, serve_runs, "extra", "sec-elsewhere")
    elsewhere = tmp_path / "elsewhere.gguf"  # would be converted into the cache if it were looked up
    (folder / "config.yaml").write_text(yaml.safe_dump({**raw, "model": str(elsewhere)}))
    r = httpx.post(live.url + "/v1/adapters", json={"name": "sec-elsewhere", "path": "sec-elsewhere"}, headers=AUTH,
                   timeout=60)
    assert r.status_code == 400 and "not served here" in r.json()["error"]["message"]


def test_an_in_process_server_takes_no_keys_from_the_environment(monkeypatch):
    from leantune.serve.server import ServeOptions

    monkeypatch.setenv("LEANTUNE_API_KEY", "k")
    monkeypatch.setenv("LEANTUNE_ADMIN_TOKEN", "t")
    options = ServeOptions()  # the playground's: keys come from `leantune serve`'s command line only
    assert options.api_key is None and options.admin_token is None


@pytest.mark.parametrize("field, value, limit", [
    ("stop", "x" * 10_000, "256 characters"),
    ("stop", ["a", "b", "c", "d", "e"], "at most 4"),
    ("seed", 2**64, "9223372036854775807"),
    ("seed", -(2**63) - 1, "-9223372036854775808"),
])
def test_bounded_fields_are_400_naming_the_limit(live, field, value, limit):
    r = httpx.post(live.url + "/v1/chat/completions", timeout=60,
                   json={"model": "r2", "messages": MESSAGES, "max_tokens": 2, field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and limit in r.json()["error"]["message"]


def test_a_temperature_too_small_for_float32_decodes_greedily(live):
    body = {"model": "r2", "prompt": "hello", "max_tokens": 3, "seed": 1}
    greedy = httpx.post(live.url + "/v1/completions", json={**body, "temperature": 0}, timeout=60)
    tiny = httpx.post(live.url + "/v1/completions", json={**body, "temperature": 1e-300}, timeout=60)
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


def test_a_chat_the_template_refuses_is_400_in_openai_shape(live):
    tokenizer = live.server.registry.adapters["r2"].base.tokenizer
    before = tokenizer.chat_template
    tokenizer.chat_template = ALTERNATING
    try:
        twice = [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]
        r = httpx.post(live.url + "/v1/chat/completions", json={"model": "r2", "messages": twice, "max_tokens": 2},
                       timeout=60)
        assert r.status_code == 400 and _is_openai_error(r), r.text
        error = r.json()["error"]
        assert error["param"] == "messages" and "must alternate" in error["message"]
        assert "Traceback" not in r.text and "jinja" not in r.text.lower()
        ok = httpx.post(live.url + "/v1/chat/completions", json={"model": "r2", "messages": MESSAGES, "max_tokens": 2},
                        timeout=60)
        assert ok.status_code == 200, ok.text
    finally:
        tokenizer.chat_template = before


def test_an_unexpected_failure_is_500_without_internal_text(live, monkeypatch):
    def broken(*args):
        raise RuntimeError(f"{SECRET} at /internal/path")

    monkeypatch.setattr(live.server.metrics, "render", broken)
    r = httpx.get(live.url + "/metrics")
    assert r.status_code == 500 and _is_openai_error(r)
    assert SECRET not in r.text and "RuntimeError" not in r.text and "/internal" not in r.text


def test_prompts_are_tokenised_off_the_event_loop(live):
    """Templates and tokenisation of up to --max-body-bytes of text would stall every other request."""
    seen: list[threading.Thread] = []

    class Watched:
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

        def __call__(self, *args, **kwargs):
            seen.append(threading.current_thread())
            return self.tokenizer(*args, **kwargs)

    bases = [live.server.registry.adapters[name].base for name in ("r2", "sentiment")]
    for base in bases:
        base.tokenizer = Watched(base.tokenizer)
    try:
        assert httpx.post(live.url + "/v1/chat/completions", timeout=60,
                          json={"model": "r2", "messages": MESSAGES, "max_tokens": 2}).status_code == 200
        assert httpx.post(live.url + "/v1/completions", timeout=60,
                          json={"model": "r2", "prompt": "hello", "max_tokens": 2}).status_code == 200
        assert httpx.post(live.url + "/v1/classify", timeout=60,
                          json={"model": "sentiment", "input": "good"}).status_code == 200
    finally:
        for base in bases:
            base.tokenizer = base.tokenizer.tokenizer
    assert len(seen) == 3 and live.thread not in seen  # live.thread runs uvicorn's event loop


def _register(live, name: str) -> None:
    r = httpx.post(live.url + "/v1/adapters", json={"name": name, "path": "extra"}, headers=AUTH, timeout=60)
    assert r.status_code == 201, r.text


def test_delete_while_generating_lets_the_request_finish_then_404(live):
    reg = live.server.registry
    _register(live, "racer")
    loaded = reg.loaded_count
    base = reg.adapters["racer"].base
    result = {}

    def ask():
        result["r"] = httpx.post(live.url + "/v1/completions", timeout=120, json={
            "model": "racer", "prompt": "hello", "max_tokens": 5, "temperature": 0, "ignore_eos": True})

    with paused(base) as resume:
        asker = threading.Thread(target=ask)
        asker.start()
        wait_until(lambda: reg.adapters["racer"].holders == 1)  # acquired, waiting for the model
        assert httpx.delete(live.url + "/v1/adapters/racer", headers=AUTH).status_code == 200
        assert reg.loaded_count == loaded  # its slot is still taken while the request runs
        resume()
        asker.join(120)
    r = result["r"]
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5, r.text
    after = httpx.post(live.url + "/v1/completions", json={"model": "racer", "prompt": "hello", "max_tokens": 2})
    assert after.status_code == 404
    assert "racer" not in reg.adapters and "racer" not in reg.loaded and reg.loaded_count == loaded - 1


def test_a_request_that_waited_past_the_delete_is_404_and_the_adapter_stays_gone(live, monkeypatch):
    """The request found the adapter, then DELETE came before it took the weights."""
    reg = live.server.registry
    _register(live, "late")
    loaded = reg.loaded_count
    acquire = reg.acquire

    def delete_first(adapter, *args):
        if adapter.name == "late":
            assert httpx.delete(live.url + "/v1/adapters/late", headers=AUTH).status_code == 200
        return acquire(adapter, *args)

    monkeypatch.setattr(reg, "acquire", delete_first)
    r = httpx.post(live.url + "/v1/chat/completions", json={"model": "late", "messages": MESSAGES, "max_tokens": 2},
                   timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    assert "late" not in reg.adapters and "late" not in reg.loaded and reg.loaded_count == loaded - 1


def test_an_unloaded_adapter_evicted_before_the_delete_is_not_read_back(live):
    reg = live.server.registry
    _register(live, "evicted")
    adapter = reg.lookup("evicted")
    with reg.cond:  # as the LRU drops an idle adapter
        adapter.weights = None
        del reg.loaded["evicted"]
    loaded = reg.loaded_count
    reg.unregister("evicted")
    with pytest.raises(UnknownModel):
        reg.acquire(adapter)
    assert "evicted" not in reg.loaded and reg.loaded_count == loaded and adapter.weights is None

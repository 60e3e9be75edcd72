"""Shared fixtures: tiny bases, run folders of every servable method, and a live server on a free port."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from served_runs import bert_base, llama_base, make_run  # noqa: E402

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

try:  # the openai client's HTTP library (httpx2 in recent releases)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # noqa: F401

ADMIN = "admin-secret"
GENERATIVE = {  # name -> (method, method_args)
    "r2": ("lora", {"r": 2}),
    "r8": ("lora", {"r": 8}),
    "r16": ("lora", {"r": 16, "use_rslora": True}),
    "dora": ("dora", {"r": 4}),
    "ia3": ("ia3", {}),
    "prompt": ("prompt", {"num_virtual_tokens": 3}),
    "prefix": ("prefix", {"num_virtual_tokens": 3}),
    "bottleneck": ("bottleneck", {"bottleneck_size": 8}),
    "lokr": ("lokr", {"r": 4}),
    "oft": ("oft", {"oft_block_size": 8}),
    "vera": ("vera", {"r": 8}),
}


def one_thread() -> None:
    """Tiny models gain nothing from a second thread, and the server's threads share the cores with the test's."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    one_thread()
    yield


class LiveServer:
    """A uvicorn server for ``server`` on a free localhost port, in a daemon thread; ``stop`` ends it."""

    def __init__(self, server) -> None:
        import uvicorn

        from leantune.serve import create_app

        self.server = server
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(create_app(server), host="127.0.0.1", port=self.port, log_level="warning")
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.uvicorn.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "unused"):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory) -> dict[str, Path]:
    one_thread()
    tmp = tmp_path_factory.mktemp("serve")
    llama = llama_base(tmp / "llama")
    bert = bert_base(tmp / "bert")
    runs = {name: make_run(tmp / "runs" / name, llama, m, a, seed=i) for i, (name, (m, a)) in enumerate(GENERATIVE.items())}
    runs["sentiment"] = make_run(tmp / "runs" / "sentiment", bert, "lora", {"r": 4}, task="classification",
                                 labels=["neg", "pos"])
    runs["topics"] = make_run(tmp / "runs" / "topics", bert, "ia3", {}, task="classification",
                              labels=["food", "film", "room"], seed=5)
    runs["qa"] = make_run(tmp / "runs" / "qa", bert, "lora", {"r": 4}, task="extractive_qa", seed=6)
    root = tmp / "adapter-root"
    root.mkdir()
    runs["extra"] = make_run(root / "extra", llama, "lora", {"r": 32}, seed=9)
    runs["outside"] = make_run(tmp / "outside", llama, "lora", {"r": 4}, seed=10)
    (root / "escape").symlink_to(runs["outside"])
    runs["root"] = root
    runs["llama"], runs["bert"] = Path(llama), Path(bert)
    return runs


@pytest.fixture(scope="session")
def live(serve_runs):
    from leantune.serve import build_server

    names = [*GENERATIVE, "sentiment", "topics", "qa"]
    server = LiveServer(build_server({n: serve_runs[n] for n in names}, max_batch=16, max_prompt_tokens=200,
                                     max_tokens=40, max_body_bytes=20_000, admin_token=ADMIN,
                                     adapter_root=str(serve_runs["root"])))
    yield server
    server.stop()

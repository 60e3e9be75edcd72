"""Many adapters in one batch: outputs identical to each request alone; a full queue; a client that leaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from conftest import GENERATIVE, LiveServer, httpx, one_thread

from leantune.detokenize import complete_text
from leantune.generate import eos_ids, generate, generate_ids
from leantune.run.loader import load_run
from leantune.serve.server import ServeOptions, Server

PROMPTS = ["What colour is item 3?", "hello world", "What colour is item 42? the a is"]


def _base(live):
    return next(b for b in live.server.registry.bases.values() if b.kind == "generate")


@contextmanager
def paused(base) -> Iterator[Callable[[], None]]:
    """Hold the base model (its engine waits before the next forward pass) until ``resume()`` or the block ends."""
    base.lock.acquire()
    held = [True]

    def resume() -> None:
        if held[0]:
            held[0] = False
            base.lock.release()

    try:
        yield resume
    finally:
        resume()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def references(serve_runs):
    """Greedy tokens of every (adapter or base, prompt) through ``leantune generate``'s decoding, one at a time."""
    one_thread()
    refs = {}
    for name in [*GENERATIVE, "base"]:
        _, task, model = load_run(serve_runs["r2" if name == "base" else name])
        if name == "base":
            import leantune as lt

            lt.delete_adapter(model, "default")
        for prompt in PROMPTS:
            ids = task.tokenizer(task.prompt_text([{"role": "user", "content": prompt}]),
                                 add_special_tokens=False)["input_ids"]
            tokens = generate_ids(model, [ids], task.pad_id, eos_ids(model, task.tokenizer), 10)[0]
            refs[(name, prompt)] = complete_text(task.tokenizer, tokens)  # as `leantune generate` decodes
        if name == "dora":  # a seeded sampled request, as `leantune generate --temperature` runs it alone
            refs[("dora", "sampled")] = generate(model, task.tokenizer, [task.prompt_text(
                [{"role": "user", "content": PROMPTS[0]}])], 10, temperature=0.9, top_p=0.9, seed=7)[0]
    return refs


def test_concurrent_mixed_adapters_match_each_request_alone(live, references):
    """LoRA r2/r8/r16 (rsLoRA), DoRA, IA3, prompt, prefix, bottleneck and the base, all in one busy batch."""
    base = _base(live)
    client = live.client()
    names = [*GENERATIVE, base.name]
    jobs = [(n, p) for p in PROMPTS for n in names]
    steps_before = live.server.metrics.steps[base.name]
    rows_before = live.server.metrics.step_rows[base.name]

    def ask(job):
        name, prompt = job
        if prompt == "sampled":
            out = client.chat.completions.create(model=name, messages=[{"role": "user", "content": PROMPTS[0]}],
                                                 max_tokens=10, temperature=0.9, top_p=0.9, seed=7)
        else:
            out = client.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}],
                                                 max_tokens=10, temperature=0)
        return out.choices[0].message.content

    jobs.append(("dora", "sampled"))
    with ThreadPoolExecutor(len(jobs)) as pool:
        with paused(base) as resume:  # every request arrives before the first forward pass: one busy batch
            futures = [pool.submit(ask, job) for job in jobs]
            wait_until(lambda: base.engine.queue_depth + base.engine.batch_size == len(jobs))
            resume()
            results = [f.result() for f in futures]
    for (name, prompt), got in zip(jobs, results, strict=True):
        key = ("base" if name == base.name else name, prompt)
        assert got.strip() == references[key].strip() if prompt == "sampled" else got == references[key], (key, got, references[key])
    steps = live.server.metrics.steps[base.name] - steps_before
    rows = live.server.metrics.step_rows[base.name] - rows_before
    assert rows / steps > 4  # the requests really were batched together


def test_a_full_queue_is_429_with_retry_after(serve_runs):
    options = ServeOptions(max_batch=1, max_queue=1, max_tokens=8)
    live = LiveServer(Server([("r2", str(serve_runs["r2"]))], options))
    try:
        base = _base(live)
        url = live.url + "/v1/completions"
        body = {"model": "r2", "prompt": "hello", "max_tokens": 8, "temperature": 0}
        with ThreadPoolExecutor(2) as pool, paused(base) as resume:
            first = pool.submit(httpx.post, url, json=body, timeout=60)
            wait_until(lambda: base.engine.batch_size == 1)  # taken, then blocked on the model
            second = pool.submit(httpx.post, url, json=body, timeout=60)
            wait_until(lambda: base.engine.queue_depth == 1)
            third = httpx.post(url, json=body, timeout=60)
            assert third.status_code == 429 and third.headers["retry-after"] == "1"
            assert "--max-queue" in third.json()["error"]["message"]
            resume()
            assert first.result().status_code == 200 and second.result().status_code == 200
    finally:
        live.stop()


def test_a_client_that_disconnects_mid_stream_frees_its_row(live):
    base = _base(live)
    seen = []
    submit = base.engine.submit

    def spy(req):
        seen.append(req)
        submit(req)

    base.engine.submit = spy
    try:
        with httpx.stream("POST", live.url + "/v1/completions", timeout=60,
                          json={"model": "r8", "prompt": "hello", "max_tokens": 40, "temperature": 0,
                                "stream": True}) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            base.lock.acquire()  # pause decoding while the client leaves
        try:
            wait_until(seen[0].cancelled.is_set, timeout=10)
        finally:
            base.lock.release()
        wait_until(lambda: base.engine.batch_size == 0, timeout=10)
        assert len(seen[0].tokens) < 40
    finally:
        base.engine.submit = submit
    ok = live.client().completions.create(model="r8", prompt="hello", max_tokens=3, temperature=0)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_many_threads_of_mixed_traffic_never_break_the_server(live):
    client = live.client()

    def one(i):
        name = [*GENERATIVE][i % len(GENERATIVE)]
        if i % 5 == 0:
            r = httpx.post(live.url + "/v1/classify", json={"model": "sentiment", "input": ["good", "bad"]})
            return r.status_code
        stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": f"item {i}"}],
                                                max_tokens=1 + i % 6, temperature=0.5 * (i % 2), seed=i,
                                                stream=bool(i % 3))
        if i % 3:
            return 200 if list(stream) else 500
        return 200

    with ThreadPoolExecutor(12) as pool:
        assert set(pool.map(one, range(36))) == {200}
    assert threading.active_count() < 200

"""The HTTP API through the real ``openai`` client: models, chat, completions, streaming, errors, task endpoints."""

from __future__ import annotations

import json

import openai
import pytest
import torch
from conftest import GENERATIVE, httpx

from leantune.detokenize import complete_text
from leantune.generate import eos_ids, generate_ids
from leantune.run.loader import load_run

MESSAGES = [{"role": "user", "content": "What colour is item 3?"}]


@pytest.fixture(scope="module")
def loaded(serve_runs):
    """Each run loaded by leantune itself (the oracle), once."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_run(serve_runs[name])
        return cache[name]

    return get


def alone(loaded, name, messages=MESSAGES, max_new_tokens=8):
    """The tokens and text ``leantune generate`` produces for this prompt alone (greedy)."""
    _, task, model = loaded(name)
    ids = task.tokenizer(task.prompt_text(messages), add_special_tokens=False)["input_ids"]
    tokens = generate_ids(model, [ids], task.pad_id, eos_ids(model, task.tokenizer), max_new_tokens)[0]
    return tokens, complete_text(task.tokenizer, tokens)  # no trailing half character, as generate decodes


def test_models_lists_bases_and_adapters_with_their_parent(live):
    models = {m.id: m for m in live.client().models.list().data}
    assert set(GENERATIVE) | {"sentiment", "topics", "qa"} <= set(models)
    llama_base = models["r2"].parent
    assert llama_base in models and models[llama_base].parent is None
    assert {models[n].parent for n in GENERATIVE} == {llama_base}  # one shared base
    assert models["sentiment"].parent != llama_base and models["qa"].parent != models["sentiment"].parent
    adapters = live.server.registry.adapters  # the classification and QA bases share one BERT backbone
    assert adapters["sentiment"].base.model.bert is adapters["qa"].base.model.bert


def test_chat_completion_and_stream_agree_with_generate(live, loaded):
    client = live.client()
    tokens, text = alone(loaded, "dora")
    out = client.chat.completions.create(model="dora", messages=MESSAGES, max_tokens=8, temperature=0)
    assert out.choices[0].message.content == text
    assert out.usage.completion_tokens == len(tokens)
    assert out.choices[0].finish_reason == ("length" if len(tokens) == 8 else "stop")
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="dora", messages=MESSAGES, max_tokens=8, temperature=0,
                                                stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == text and finish == out.choices[0].finish_reason


def test_completion_of_a_raw_prompt(live, loaded):
    _, task, model = loaded("r8")
    prompt = "What colour is item 5?"
    ids = task.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ref = generate_ids(model, [ids], task.pad_id, eos_ids(model, task.tokenizer), 6)[0]
    out = live.client().completions.create(model="r8", prompt=prompt, max_tokens=6, temperature=0)
    assert out.choices[0].text == complete_text(task.tokenizer, ref)
    assert out.usage.prompt_tokens == len(ids)


def test_stop_strings_cut_the_text(live, loaded):
    _, text = alone(loaded, "r16", max_new_tokens=12)
    stop = text[3:5]
    assume = stop and stop.strip()
    if not assume:
        pytest.skip("the reference text is too short to pick a stop string from")
    out = live.client().chat.completions.create(model="r16", messages=MESSAGES, max_tokens=12, temperature=0,
                                                stop=[stop])
    assert out.choices[0].message.content == text[:text.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_unknown_model_is_404_naming_the_models(live):
    with pytest.raises(openai.NotFoundError) as e:
        live.client().chat.completions.create(model="nope", messages=MESSAGES, max_tokens=2)
    assert "nope" in str(e.value) and "r2" in str(e.value) and "dora" in str(e.value)
    assert e.value.body["code"] == "model_not_found"


def test_wrong_endpoint_for_the_task(live):
    with pytest.raises(openai.BadRequestError, match="/v1/classify"):
        live.client().chat.completions.create(model="sentiment", messages=MESSAGES, max_tokens=2)


def test_classify_matches_the_run_and_accepts_lists(live, loaded):
    texts = ["the film was great", "the food was awful and boring"]
    for name in ("sentiment", "topics"):
        r = httpx.post(live.url + "/v1/classify", json={"model": name, "input": texts}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        _, task, model = loaded(name)
        enc = task.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits, -1)
        assert body["labels"] == task.labels
        for row, p in zip(body["data"], probs, strict=True):
            assert list(row["probabilities"]) == task.labels
            torch.testing.assert_close(torch.tensor(list(row["probabilities"].values())), p, atol=1e-5, rtol=1e-4)
            assert row["label"] == task.labels[int(p.argmax())]
    one = httpx.post(live.url + "/v1/classify", json={"model": "sentiment", "input": "good"}, timeout=60).json()
    assert len(one["data"]) == 1


def test_answer_returns_a_span_of_the_context(live, loaded, tmp_path):
    context = "the red house is big . the blue dog is small . the green cat is old . the film was good ."
    r = httpx.post(live.url + "/v1/answer", json={"model": "qa", "question": "what is old", "context": context},
                   timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == context[body["start"]:body["end"]] and 0 <= body["score"] <= 1
    _, task, model = loaded("qa")
    records = [{"question": "what is old", "context": context}]
    expected = task.answers(model, records, task.featurize(records, train=False), torch.device("cpu"))
    assert body["answer"] == expected[0]


@pytest.mark.parametrize("payload, field", [
    ({"model": "r2", "messages": "hi"}, "messages"),
    ({"model": "r2"}, "messages"),
    ({"model": "r2", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"model": "r2", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
    ({"model": "r2", "messages": MESSAGES, "n": 2}, "n"),
    ({"model": "r2", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
])
def test_bad_fields_are_400_naming_the_field(live, payload, field):
    r = httpx.post(live.url + "/v1/chat/completions", json=payload, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]


def test_malformed_json_and_limits(live):
    url = live.url + "/v1/chat/completions"
    r = httpx.post(url, content=b'{"model": "r2", "messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "r2", "messages": MESSAGES, "max_tokens": 41})
    assert r.status_code == 400 and "--max-tokens" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "r2", "messages": [{"role": "user", "content": "item " * 300}]})
    assert r.status_code == 400 and "--max-prompt-tokens" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "r2", "messages": [{"role": "user", "content": "x" * 30_000}]})
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]
    r = httpx.post(live.url + "/v1/completions", json={"model": "r2", "prompt": [1, 10**9]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(live.url + "/v1/classify", json={"model": "sentiment", "input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert httpx.get(live.url + "/health").json()["status"] == "ok"  # still serving


def test_health_and_metrics(live):
    assert httpx.get(live.url + "/health").status_code == 200
    text = httpx.get(live.url + "/metrics").text
    for name in ("leantune_requests_total", "leantune_prompt_tokens_total", "leantune_completion_tokens_total",
                 "leantune_request_latency_seconds_bucket", "leantune_queue_depth", "leantune_batch_size",
                 "leantune_adapters_loaded"):
        assert name in text
    assert 'endpoint="/v1/chat/completions",status="200"' in text


def test_api_key_guards_every_endpoint(live):
    live.server.options.api_key = "k1"
    try:
        assert httpx.get(live.url + "/v1/models").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            live.client("wrong").models.list()
        assert live.client("k1").models.list().data
    finally:
        live.server.options.api_key = None


def test_sse_lines_are_well_formed(live):
    with httpx.stream("POST", live.url + "/v1/completions", timeout=60,
                      json={"model": "ia3", "prompt": "hello", "max_tokens": 4, "temperature": 0, "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert payloads[-1]["usage"]["completion_tokens"] <= 4
    assert any(p["choices"] and p["choices"][0]["finish_reason"] for p in payloads)

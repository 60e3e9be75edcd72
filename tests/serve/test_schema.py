"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis): generated requests, valid and invalid, to every
endpoint of a small server; never a 5xx, and every answer as the schema documents it (status, content type,
body)."""

from __future__ import annotations

import pytest
from conftest import ADMIN

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from leantune.serve import build_server, create_app  # noqa: E402

KEY = "fuzz-key"
SERVED = ("r2", "prompt", "sentiment", "qa")
OPERATIONS = [("GET", "/health"), ("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
              ("POST", "/v1/completions"), ("POST", "/v1/classify"), ("POST", "/v1/answer"),
              ("POST", "/v1/adapters"), ("DELETE", "/v1/adapters/{name}")]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 20}
BODIES = {"ChatRequest": "generate", "CompletionRequest": "generate", "ClassifyRequest": "classify",
          "AnswerRequest": "answer"}


@pytest.fixture(scope="module")
def schema(serve_runs):
    """The schema of a server of a causal LM (two adapters), a classifier and an extractive QA run, with the
    request bodies' ``model`` narrowed to the names the endpoint serves and one unknown name, so that requests
    reach the models."""
    server = build_server({n: serve_runs[n] for n in SERVED}, max_tokens=4, default_max_tokens=4,
                          max_prompt_tokens=200, max_body_bytes=50_000, api_key=KEY, admin_token=ADMIN,
                          adapter_root=str(serve_runs["root"]))
    app = create_app(server)
    document = app.openapi()
    reg = server.registry
    for name, kind in BODIES.items():
        served = [n for n, m in [*reg.bases.items(), *reg.adapters.items()]
                  if m.run.kind == kind and (kind == "generate" or n in reg.adapters)]
        document["components"]["schemas"][name]["properties"]["model"]["enum"] = [*served, "unknown"]

    async def http_only(scope, receive, send):  # the engines run from server.start(), not a lifespan
        if scope["type"] == "http":
            await app(scope, receive, send)

    loaded = schemathesis.openapi.from_dict(document)
    loaded.app = http_only
    server.start()
    yield loaded
    server.stop()


def test_every_endpoint_is_fuzzed(schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert found == set(OPERATIONS)


CASES = [(method, path, mode) for method, path in OPERATIONS for mode in EXAMPLES
         if mode is GenerationMode.POSITIVE or method == "POST"]  # the others have nothing to make invalid


@pytest.mark.parametrize("method, path, mode", CASES)
def test_generated_requests_get_documented_answers_and_never_a_5xx(schema, method, path, mode):
    operation = schema[path][method]
    headers = {"Authorization": f"Bearer {ADMIN if path.startswith('/v1/adapters') else KEY}"}
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        response = case.call(headers=headers, timeout=60)
        case.validate_response(response, checks=checks, headers=headers)

    fuzz()

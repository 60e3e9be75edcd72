"""The dashboard's JSON API under schemathesis: generated requests (valid and invalid, from the API's own OpenAPI
schema, sent from an allowed address with the page's Origin and CSRF token) never get a 5xx answer. No launch
starts a process: the runs folder is empty and process starts are recorded instead."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from fastapi.openapi.utils import get_openapi  # noqa: E402
from fastapi.routing import APIRoute  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from leantune.ui import launch  # noqa: E402
from leantune.ui.app import create_app  # noqa: E402

HOST = "127.0.0.1:7860"


def test_no_request_to_the_json_api_gets_a_5xx(tmp_path, monkeypatch):
    started: list = []
    monkeypatch.setattr(launch.subprocess, "Popen", lambda command, **kwargs: started.append(command))
    app = create_app(tmp_path / "empty" / "runs", hosts=[HOST])
    api = [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")]
    spec = get_openapi(title="leantune ui", version="1", routes=api)
    operations = [result.ok() for result in schemathesis.openapi.from_dict(spec).get_all_operations()]
    assert len(operations) == len(api) >= 8
    headers = {"host": HOST, "origin": f"http://{HOST}", "x-csrf-token": app.state.csrf_token}
    failures, statuses = [], set()
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=30, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                response = case.call(app=app, base_url=f"http://{HOST}", headers=headers)
                statuses.add(response.status_code)
                if response.status_code >= 500:
                    failures.append(f"{case.operation.label}: {response.status_code} {response.text[:300]}")

            try:
                check()
            except Unsatisfiable:  # no invalid request exists for an operation without parameters
                assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
    assert not failures, "\n".join(failures)
    assert {200, 400, 404, 422} <= statuses, statuses  # the requests reached the API (not refused at the door)
    assert started == []

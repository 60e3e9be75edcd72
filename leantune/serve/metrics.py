"""Prometheus text-format metrics: requests by endpoint and status, tokens, latency, queue depth, batch size,
adapters loaded."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for k, v in labels.items())
    return "{" + body + "}"


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (endpoint, status)
        self.prompt_tokens: Counter = Counter()  # model
        self.completion_tokens: Counter = Counter()  # model
        self.latency_buckets: Counter = Counter()  # (endpoint, le)
        self.latency_sum: Counter = Counter()
        self.latency_count: Counter = Counter()
        self.steps: Counter = Counter()  # base
        self.step_rows: Counter = Counter()  # base

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, str(status))] += 1
            self.latency_sum[endpoint] += seconds
            self.latency_count[endpoint] += 1
            for le in LATENCY_BUCKETS:
                if seconds <= le:
                    self.latency_buckets[(endpoint, le)] += 1

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        with self.lock:
            self.prompt_tokens[model] += prompt
            self.completion_tokens[model] += completion

    def step(self, base: str) -> Callable[[int], None]:
        """A callback for an engine: one forward pass over ``rows`` rows."""

        def record(rows: int) -> None:
            with self.lock:
                self.steps[base] += 1
                self.step_rows[base] += rows

        return record

    def render(self, gauges: dict[str, list[tuple[dict[str, str], float]]]) -> str:
        """The text exposition; ``gauges`` maps a metric name to (labels, value) samples read at scrape time."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        with self.lock:
            family("leantune_requests_total", "counter", "HTTP requests by endpoint and status code.")
            for (endpoint, status), n in sorted(self.requests.items()):
                out.append(f"leantune_requests_total{_labels(endpoint=endpoint, status=status)} {n}")
            family("leantune_prompt_tokens_total", "counter", "Prompt tokens read, by model.")
            for model, n in sorted(self.prompt_tokens.items()):
                out.append(f"leantune_prompt_tokens_total{_labels(model=model)} {n}")
            family("leantune_completion_tokens_total", "counter", "Tokens generated, by model.")
            for model, n in sorted(self.completion_tokens.items()):
                out.append(f"leantune_completion_tokens_total{_labels(model=model)} {n}")
            family("leantune_request_latency_seconds", "histogram", "Request latency, by endpoint.")
            for endpoint in sorted(self.latency_count):
                for le in LATENCY_BUCKETS:
                    n = self.latency_buckets[(endpoint, le)]
                    out.append(f"leantune_request_latency_seconds_bucket{_labels(endpoint=endpoint, le=str(le))} {n}")
                count = self.latency_count[endpoint]
                out.append(f"leantune_request_latency_seconds_bucket{_labels(endpoint=endpoint, le='+Inf')} {count}")
                out.append(f"leantune_request_latency_seconds_sum{_labels(endpoint=endpoint)} "
                           f"{self.latency_sum[endpoint]:.6f}")
                out.append(f"leantune_request_latency_seconds_count{_labels(endpoint=endpoint)} {count}")
            family("leantune_forward_steps_total", "counter", "Batched forward passes, by base model.")
            for base, n in sorted(self.steps.items()):
                out.append(f"leantune_forward_steps_total{_labels(base=base)} {n}")
            family("leantune_forward_rows_total", "counter", "Rows over all forward passes (rows / steps = mean "
                   "batch size), by base model.")
            for base, n in sorted(self.step_rows.items()):
                out.append(f"leantune_forward_rows_total{_labels(base=base)} {n}")
        for name, samples in gauges.items():
            family(name, "gauge", name.removeprefix("leantune_").replace("_", " ") + ".")
            for labels, value in samples:
                out.append(f"{name}{_labels(**labels)} {value:g}")
        return "\n".join(out) + "\n"

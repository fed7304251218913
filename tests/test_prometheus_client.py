"""The Prometheus reader: one attempt, short timeouts, and a dead Prometheus is not asked again at once."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from disagg.prometheus import PrometheusMetrics


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Prometheus)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_a_hung_prometheus_costs_one_timeout_then_fails_fast(silent_port: int) -> None:
    now = [100.0]
    metrics = PrometheusMetrics(f"http://127.0.0.1:{silent_port}", timeout=(0.2, 0.3), clock=lambda: now[0])
    started = time.monotonic()
    value, why = metrics.scalar("up")
    first = time.monotonic() - started
    assert value is None
    assert why is not None
    assert "unreachable" in why
    assert first < 2.0, f"one attempt, no retries: took {first:.2f}s"
    started = time.monotonic()
    for _ in range(20):  # twenty models' passes in the same moment
        assert metrics.scalar("up") == (None, why)
    assert time.monotonic() - started < 0.1
    now[0] += 11  # after the retry window it is asked again
    started = time.monotonic()
    assert metrics.scalar("up")[0] is None
    assert time.monotonic() - started >= 0.2


def test_answers_sum_the_vector_and_empty_is_no_data() -> None:
    answers: list[dict[str, Any]] = [
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "2"]}, {"value": [1, "3"]}]}},
        {"status": "success", "data": {"resultType": "vector", "result": []}},
        {"status": "error", "error": "parse error"},
    ]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(answers.pop(0)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        metrics = PrometheusMetrics(f"http://127.0.0.1:{server.server_address[1]}")
        assert metrics.scalar("a") == (5.0, None)
        assert metrics.scalar("b") == (None, None)
        value, why = metrics.scalar("c")
        assert value is None
        assert why is not None
        assert "parse error" in why
    finally:
        server.shutdown()
        server.server_close()

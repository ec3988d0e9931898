"""The Prometheus source against the real binary: values, chunked ranges, errors, auth, retries.

Bearer auth and failure injection use a small reverse proxy on a real socket in front of the real
Prometheus (the way a token-protected Prometheus is usually deployed); the proxy forwards bytes,
it never invents an answer.
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from watchdog import config, errors, model
from watchdog.sources import prometheus
from watchdog_lab import openmetrics
from watchdog_lab import prometheus as sim_prometheus

pytestmark = pytest.mark.integration

BASE = (int(time.time()) // 3600) * 3600 - 10 * 3600  # older than the head block
SPAN = 4 * 3600


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sim_prometheus.RunningPrometheus]:
    workdir = tmp_path_factory.mktemp("source")
    series = [
        openmetrics.Series(
            "demo_value",
            (("job", "a"),),
            tuple((float(BASE + i), float(i)) for i in range(0, SPAN, 15)),
        ),
        openmetrics.Series(
            "demo_value", (("job", "b"),), tuple((float(BASE + i), 1.0) for i in range(0, SPAN, 15))
        ),
    ]
    data = sim_prometheus.load_history(series, workdir)
    with sim_prometheus.running_prometheus(data) as running:
        yield running


def source_for(url: str, **overrides: object) -> prometheus.PrometheusSource:
    settings = config.PrometheusSettings.model_validate(
        {"url": url, "timeout": 5, "retries": 2, **overrides}
    )
    return prometheus.PrometheusSource(settings)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_instant_query_values_and_labels(server: sim_prometheus.RunningPrometheus) -> None:
    source = source_for(server.url)
    result = await source.instant('demo_value{job="a"}', BASE + 150)
    assert result.ok
    assert result.points == (model.Point((("job", "a"),), 150.0),)
    empty = await source.instant('demo_value{job="zzz"}', BASE + 150)
    assert empty.ok and empty.points == ()
    assert source.requests == 2
    source.close()


async def test_range_queries_are_chunked_under_the_point_limit(
    server: sim_prometheus.RunningPrometheus,
) -> None:
    source = source_for(server.url)
    start, end, step = BASE + 0.0, BASE + SPAN - 15.0, 1.0  # 14,385 points: two chunks
    result = await source.range('demo_value{job="a"}', start, end, step)
    assert result.error is None
    (series,) = result.series
    assert len(series.values) == int(end - start) + 1
    assert series.values[start] == 0.0
    assert series.values[start + 20] == 15.0  # the sample at +15 s, seen through lookback
    assert series.values[end] == float(SPAN - 15)
    assert source.requests == 2
    source.close()


async def test_promql_error_is_reported_at_once_not_retried(
    server: sim_prometheus.RunningPrometheus,
) -> None:
    source = source_for(server.url, retries=3)
    result = await source.instant("rate(demo_value[5m]", BASE + 600)
    assert not result.ok
    assert result.error is not None and "HTTP 400" in result.error and "bad_data" in result.error
    assert source.requests == 1
    source.close()


async def test_unreachable_prometheus_is_data_with_bounded_retries() -> None:
    port = closed_port()
    source = source_for(f"http://127.0.0.1:{port}", retries=3)
    started = time.monotonic()
    result = await source.instant("up", time.time())
    assert result.error is not None and f"127.0.0.1:{port} is unreachable" in result.error
    assert source.requests == 3
    assert time.monotonic() - started < 10  # jittered backoff is capped
    source.close()


@dataclass
class Proxy:
    """Forwards to Prometheus; requires a bearer token; can fail the first N requests with 503."""

    upstream: str
    token: str
    fail_first: int = 0
    delay: float = 0.0
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def proxy(server: sim_prometheus.RunningPrometheus) -> Iterator[Proxy]:
    state = Proxy(upstream=server.url, token="s3cret-token")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.seen_headers.append(dict(self.headers))
            time.sleep(state.delay)
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                self.send_response(401)
                self.end_headers()
                return
            if state.fail_first > 0:
                state.fail_first -= 1
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b'{"status":"error","errorType":"unavailable","error":"busy"}')
                return
            try:
                with urllib.request.urlopen(state.upstream + self.path, timeout=10) as answer:
                    body, status = answer.read(), answer.status
            except urllib.error.HTTPError as exc:
                body, status = exc.read(), exc.code
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


async def test_bearer_token_from_file(proxy: Proxy, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(proxy.token + "\n")
    source = source_for(proxy.url, bearer_token_file=str(token_file))
    result = await source.instant('demo_value{job="b"}', BASE + 60)
    assert result.ok and result.points[0].value == 1.0
    assert proxy.seen_headers[-1]["Authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in repr(
        prometheus.read_credentials(config.PrometheusSettings(bearer_token_file=token_file))
    )
    source.close()


async def test_bearer_token_from_environment(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_TEST_TOKEN", proxy.token)
    source = source_for(proxy.url, bearer_token_env="WATCHDOG_TEST_TOKEN")
    assert (await source.instant("vector(1)", BASE)).ok
    source.close()


async def test_wrong_token_is_a_final_error(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_TEST_TOKEN", "wrong")
    source = source_for(proxy.url, bearer_token_env="WATCHDOG_TEST_TOKEN", retries=3)
    result = await source.instant("vector(1)", BASE)
    assert result.error is not None and "HTTP 401" in result.error
    assert source.requests == 1
    source.close()


def test_missing_token_variable_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_TEST_TOKEN", raising=False)
    with pytest.raises(errors.ConfigError, match=r"\$WATCHDOG_TEST_TOKEN is not set"):
        source_for("http://127.0.0.1:1", bearer_token_env="WATCHDOG_TEST_TOKEN")


async def test_5xx_is_retried_then_succeeds(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_TEST_TOKEN", proxy.token)
    proxy.fail_first = 2
    source = source_for(proxy.url, bearer_token_env="WATCHDOG_TEST_TOKEN", retries=3)
    result = await source.instant('demo_value{job="b"}', BASE + 60)
    assert result.ok
    assert source.requests == 3
    source.close()


async def test_5xx_beyond_the_retry_budget_is_an_error(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_TEST_TOKEN", proxy.token)
    proxy.fail_first = 5
    source = source_for(proxy.url, bearer_token_env="WATCHDOG_TEST_TOKEN", retries=2)
    result = await source.instant("vector(1)", BASE)
    assert result.error is not None and "HTTP 503" in result.error and "busy" in result.error
    assert source.requests == 2
    source.close()


async def test_queries_run_off_the_event_loop(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_TEST_TOKEN", proxy.token)
    proxy.delay = 0.5
    source = source_for(proxy.url, bearer_token_env="WATCHDOG_TEST_TOKEN")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    results = await asyncio.gather(*(source.instant("vector(1)", BASE) for _ in range(4)))
    task.cancel()
    assert all(r.ok for r in results)
    assert ticks >= 20  # ~50 expected in 0.5 s; a blocking call would allow one
    source.close()

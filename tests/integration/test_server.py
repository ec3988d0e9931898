"""The one HTTP listener on a real socket: metrics, health, readiness, the token-guarded API,
and JSON 4xx answers for whatever else arrives."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import structlog

from watchdog import config, errors, server, telemetry

pytestmark = pytest.mark.integration

TOKEN = "op-token-5f3a"
Start = Callable[..., Awaitable[str]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Serve on a free loopback port; the base URL."""
    running: list[server.Server] = []

    async def serve(
        *, token: str | None = TOKEN, ready: str | Exception | None = None, **listen: Any
    ) -> str:
        async def status() -> dict[str, Any]:
            return {"mode": "observe", "targets": [{"target": "lavalink", "armed": True}]}

        async def readiness() -> str | None:
            if isinstance(ready, Exception):
                raise ready
            return ready

        settings = config.ListenSettings(port=0, **listen)
        bound = await server.serve(
            settings, telemetry.Recorder(), token=token, status=status, readiness=readiness
        )
        running.append(bound)
        return f"http://127.0.0.1:{bound.port}"

    yield serve
    for bound in running:
        await bound.close()


async def test_metrics_and_health_need_no_token(start: Start) -> None:
    url = await start()
    async with httpx.AsyncClient() as client:
        metrics = await client.get(f"{url}/metrics")
        health = await client.get(f"{url}/healthz")
        ready = await client.get(f"{url}/readyz")
    assert metrics.status_code == 200 and "rollback_watchdog_build_info" in metrics.text
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert (health.status_code, health.text) == (200, "ok\n")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


async def test_not_ready_says_why_with_503(start: Start) -> None:
    url = await start(ready="the journal does not answer")
    async with httpx.AsyncClient() as client:
        ready = await client.get(f"{url}/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "problem": "the journal does not answer"}


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN],
)
async def test_the_api_wants_the_bearer_token(start: Start, authorization: str | None) -> None:
    url = await start()
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{url}/api/v1/status", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert answer.json() == {
        "error": "Unauthorized",
        "message": "a valid bearer token is required",
    }


async def test_the_right_token_gets_the_status(start: Start) -> None:
    url = await start()
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"{url}/api/v1/status", headers={"Authorization": f"bearer  {TOKEN}"}
        )
    assert answer.status_code == 200
    assert answer.json()["targets"] == [{"target": "lavalink", "armed": True}]


async def test_without_a_configured_token_the_api_is_off(start: Start) -> None:
    url = await start(token=None)
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{url}/api/v1/status", headers={"Authorization": "Bearer x"})
        metrics = await client.get(f"{url}/metrics")
    assert answer.status_code == 403
    assert "listen.token_file" in answer.json()["message"]
    assert metrics.status_code == 200  # the rest still serves


async def test_unknown_routes_and_methods_are_json_4xx(start: Start) -> None:
    url = await start()
    async with httpx.AsyncClient() as client:
        closed = await client.get(f"{url}/nope")  # closed by default: the token first
        missing = await client.get(f"{url}/nope", headers={"Authorization": f"Bearer {TOKEN}"})
        wrong_method = await client.post(f"{url}/metrics", content=b"x")
    assert closed.status_code == 401
    assert missing.status_code == 404 and missing.json()["error"] == "Not Found"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "GET, HEAD"
    assert "POST is not allowed here" in wrong_method.json()["message"]


async def test_a_presented_token_never_reaches_the_log(start: Start) -> None:
    stream = io.StringIO()
    telemetry.configure_logging(stream=stream)
    try:
        url = await start()
        async with httpx.AsyncClient() as client:
            await client.get(f"{url}/api/v1/status", headers={"Authorization": "Bearer guess-123"})
            await client.get(f"{url}/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        structlog.reset_defaults()
    logged = stream.getvalue()
    assert "unauthorized request" in logged  # the refusal is logged ...
    assert "guess-123" not in logged and TOKEN not in logged  # ... without any token


async def test_a_taken_port_is_bad_input(start: Start) -> None:
    url = await start()
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(errors.InputError, match=f"cannot listen on 127.0.0.1:{port}"):
        await server.serve(
            config.ListenSettings(port=port),
            telemetry.Recorder(),
            token=None,
            status=_unused,
            readiness=_unused_readiness,
        )


async def _unused() -> dict[str, Any]:
    raise AssertionError("not called")


async def _unused_readiness() -> str | None:
    raise AssertionError("not called")


async def test_a_token_that_is_not_utf8_is_refused_not_a_crash(start: Start) -> None:
    url = await start()
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"{url}/api/v1/status", headers={"Authorization": b"Bearer \xff\xfe"}
        )
    assert answer.status_code == 401


async def test_a_body_over_the_limit_is_413_on_any_route(start: Start) -> None:
    url = await start(body_limit=4096)
    async with httpx.AsyncClient() as client:
        big = await client.request("GET", f"{url}/healthz", content=b"x" * 5000)
        small = await client.request("GET", f"{url}/healthz", content=b"x" * 100)
    assert big.status_code == 413 and "over 4096 bytes" in big.json()["message"]
    assert small.status_code == 200


async def test_readiness_that_cannot_be_checked_is_not_ready(start: Start) -> None:
    url = await start(ready=RuntimeError("journal locked"))
    async with httpx.AsyncClient() as client:
        ready = await client.get(f"{url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["problem"] == "readiness could not be checked: RuntimeError"

"""The one HTTP listener on a real socket: metrics, health, readiness, the token-guarded API,
and JSON 4xx answers for whatever else arrives."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdog import config, credentials, errors, logs, server, telemetry

pytestmark = pytest.mark.integration

TOKEN = "op-token-5f3a"
Start = Callable[..., Awaitable[str]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Serve on a free loopback port; the base URL."""
    running: list[server.Server] = []

    async def serve(
        *,
        token: str | None = TOKEN,
        ready: str | Exception | None = None,
        every: float | None = None,
        **listen: Any,
    ) -> str:
        async def status() -> dict[str, Any]:
            return {"mode": "observe", "targets": [{"target": "lavalink", "armed": True}]}

        async def readiness() -> str | None:
            if isinstance(ready, Exception):
                raise ready
            return ready

        settings = config.ListenSettings(port=0, **listen)
        operators = [credentials.Identity("operator", token)] if token else []
        if every is not None:
            server.REFUSALS_EVERY = every
        bound = await server.serve(
            settings, telemetry.Recorder(), operators=operators, status=status, readiness=readiness
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
    assert "listen.operators or listen.token_file" in answer.json()["message"]
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
    logs.configure(stream=stream)
    try:
        url = await start()
        async with httpx.AsyncClient() as client:
            await client.get(f"{url}/api/v1/status", headers={"Authorization": "Bearer guess-123"})
            await client.get(f"{url}/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        logs.reset()
    logged = stream.getvalue()
    assert "requests refused" in logged  # the refusal is logged ...
    assert "missing or wrong bearer token" in logged
    assert "guess-123" not in logged and TOKEN not in logged  # ... without any token


async def test_a_taken_port_is_bad_input(start: Start) -> None:
    url = await start()
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(errors.InputError, match=f"cannot listen on 127.0.0.1:{port}"):
        await server.serve(
            config.ListenSettings(port=port),
            telemetry.Recorder(),
            operators=[],
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


def refused(url: str) -> dict[tuple[str, str], float]:
    """rollback_watchdog_http_refused_total by (route, code)."""
    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "rollback_watchdog_http_refused_total":
                found[(sample.labels["route"], sample.labels["code"])] = sample.value
    return found


async def raw(url: str, request: bytes) -> bytes:
    """Send bytes as they are (no client would send them) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    return answer


@pytest.mark.parametrize("byte", [b"\x01", b"\x00", b"\x7f", b"\r"])
async def test_a_control_byte_after_the_token_keeps_the_log_json_and_tokenless(
    start: Start, byte: bytes
) -> None:
    # aiohttp's own parser refuses the header and used to log a plain-text traceback quoting
    # it, token and all
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        url = await start()
        line = b"Authorization: Bearer " + TOKEN.encode() + byte
        answer = await raw(url, b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
        await asyncio.sleep(0.1)
        counted = await asyncio.to_thread(refused, url)
    finally:
        logs.reset()
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    assert TOKEN.encode() not in answer  # aiohttp's own answer quoted the line back
    assert answer.endswith(b"the request could not be parsed (nothing of it is repeated here)")
    logged = stream.getvalue()
    assert TOKEN not in logged and "Traceback" not in logged
    lines = [json.loads(line) for line in logged.splitlines()]  # every line is JSON
    assert [line["event"] for line in lines] == ["requests refused"]
    assert "aiohttp could not parse it" in lines[0]["what"]
    assert counted[("(unparsed request)", "400")] == 1


async def test_refused_requests_are_counted_not_logged_one_by_one(start: Start) -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        url = await start(every=1.0)
        began = time.monotonic()
        async with httpx.AsyncClient() as client:
            for index in range(300):
                await client.get(
                    f"{url}/api/v1/status", headers={"Authorization": f"Bearer x{index}"}
                )
                await client.post(f"{url}/api/v1/rollback")  # no token either
                method = ("PROPFIND", "MKCOL", "LOCK", "SEARCH", f"M{index}")[index % 5]
                await client.request(method, f"{url}/api/v1/status")  # counted as OTHER
            took = time.monotonic() - began
            await asyncio.sleep(1.2)  # one more flush
            await client.get(f"{url}/api/v1/status")
        counted = await asyncio.to_thread(refused, url)
    finally:
        server.REFUSALS_EVERY = 60.0
        logs.reset()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(line["event"] == "requests refused" for line in lines)
    intervals = math.ceil(took) + 2
    assert len(lines) <= 3 * 2 * intervals, (len(lines), took)  # 900 requests: a few lines
    assert any("OTHER (no route) 401" in (line.get("what") or "") for line in lines)
    key = "GET /api/v1/status 401: missing or wrong bearer token"
    first = sum(1 for line in lines if line.get("what") == key)
    summed = sum(line.get("counts", {}).get(key, 0) for line in lines)
    assert first + summed >= 300  # all of the flushed ones, none lost in between
    assert counted[("/api/v1/status", "401")] == 301
    assert counted[("(no route)", "401")] == 240  # WebDAV methods: no route of ours
    assert counted[("(unparsed request)", "400")] == 60  # no method at all to aiohttp
    assert counted[("/api/v1/rollback", "401")] == 300


async def test_a_library_s_log_line_goes_through_the_same_pipeline_redacted(
    start: Start,
) -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    logs.redact(TOKEN)
    try:
        logging.getLogger("some.library").warning("retrying with Authorization: Bearer %s", TOKEN)
        logging.getLogger("some.library").error("token=%s rejected", "a1b2c3d4")
        try:
            int(f"bad header {TOKEN!r}")
        except ValueError:
            logging.getLogger("other.library").exception("request failed")
    finally:
        logs.reset()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["some.library", "some.library", "other.library"]
    assert lines[0]["event"] == "retrying with Authorization: Bearer [REDACTED]"
    assert lines[1]["event"] == "token=[REDACTED] rejected"
    assert "ValueError: invalid literal for int() with base 10:" in lines[2]["exception"]
    assert "bad header '[REDACTED]'" in lines[2]["exception"]
    assert TOKEN not in stream.getvalue()


async def test_each_operator_s_token_names_them_and_only_them(start: Start) -> None:
    seen: list[str] = []

    class Orders:
        async def rollback(self, order: Any) -> Any:
            from watchdog import approval

            seen.append(order.by)
            return approval.Answer(True, "rollback started", None, 7)

    settings = config.ListenSettings(port=0)
    bob = "sha256:" + hashlib.sha256(b"b-token-2").hexdigest()  # the daemon keeps a digest
    operators = [credentials.Identity("alice", "a-token-1"), credentials.Identity("bob", bob)]

    async def status() -> dict[str, Any]:
        return {}

    async def readiness() -> str | None:
        return None

    bound = await server.serve(
        settings,
        telemetry.Recorder(),
        operators=operators,
        status=status,
        readiness=readiness,
        orders=Orders(),  # type: ignore[arg-type]
    )
    url = f"http://127.0.0.1:{bound.port}"
    try:
        async with httpx.AsyncClient() as client:
            as_bob = await client.post(
                f"{url}/api/v1/rollback",
                json={"reason": "drill"},
                headers={"Authorization": "Bearer b-token-2"},
            )
            claims = await client.post(
                f"{url}/api/v1/rollback",
                json={"reason": "drill", "by": "alice"},
                headers={"Authorization": "Bearer b-token-2"},
            )
            nobody = await client.post(
                f"{url}/api/v1/rollback",
                json={"reason": "drill"},
                headers={"Authorization": "Bearer c-token-3"},
            )
    finally:
        await bound.close()
    assert as_bob.status_code == 202 and seen == ["bob"] and as_bob.json()["by"] == "bob"
    assert claims.status_code == 400
    assert claims.json()["message"] == "by: the token names who you are; leave by out"
    assert nobody.status_code == 401 and seen == ["bob"]

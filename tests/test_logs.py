"""The log pipeline's redaction and the tally that keeps floods out of the log."""

from __future__ import annotations

import io
import json
import logging
import warnings
from typing import Any

import pytest
import structlog

from watchdog import logs


@pytest.fixture
def stream() -> Any:
    out = io.StringIO()
    logs.configure(stream=out)
    yield out
    logs.reset()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer [REDACTED]"),
        ("b'Authorization: Bearer tok\\x01'", "b'Authorization: Bearer [REDACTED]'"),
        ("authorization=Basic dXNlcjpwdw==", "authorization=Basic [REDACTED]"),
        (
            "headers {'Authorization': 'Bearer zz9'}",
            "headers {'Authorization': 'Bearer [REDACTED]'}",
        ),
        (  # a bare value (Lavalink's password) is no scheme, and the next header stays
            "Authorization: SECRETHEX\r\nContent-Type: application/json",
            "Authorization: [REDACTED]\r\nContent-Type: application/json",
        ),
        ("sent Bearer abc123 to x", "sent Bearer [REDACTED] to x"),
        ("sent bearer abc123 to x", "sent bearer [REDACTED] to x"),
        ("Bearer abc\x1fSECRET", "Bearer [REDACTED]"),  # a control byte inside: all of it
        ("posting with xoxb-1234-5678-abcdef", "posting with [REDACTED]"),
        ("app xapp-1-A0-99-ff", "app [REDACTED]"),
        ("password=hunter2&user=x", "password=[REDACTED]&user=x"),
        ('{"token": "s3cr3t!"}', '{"token": "[REDACTED]"}'),
        # ordinary words are no credentials
        ("a valid bearer token is required", "a valid bearer token is required"),
        ("Bearer token required", "Bearer token required"),
        ("Basic auth failed", "Basic auth failed"),
        ("token: configure listen.operators", "token: configure listen.operators"),
        ("have the same token: each needs their own", "have the same token: each needs their own"),
    ],
)
def test_credential_shaped_text_is_redacted(text: str, expected: str) -> None:
    assert logs.Redactor().scrub(text) == expected


def test_known_secrets_are_redacted_anywhere_even_nested(stream: io.StringIO) -> None:
    logs.redact("op-t0ken-abc", "lavalink"[:5])  # too short to redact safely: ignored
    log = structlog.get_logger("watchdog.test")
    log.warning("oops: lavalink", detail={"sent": ["x op-t0ken-abc y"]}, raw=b"op-t0ken-abc")
    [line] = lines(stream)
    assert line["detail"] == {"sent": ["x [REDACTED] y"]}
    assert line["raw"] == "b'[REDACTED]'"
    assert line["event"] == "oops: lavalink"  # "laval" was too short to be taken for a secret
    assert "op-t0ken-abc" not in stream.getvalue()


def test_libraries_and_warnings_come_out_as_json_lines(stream: io.StringIO) -> None:
    logging.getLogger("aiohttp.server").error("Error handling request: Bearer leaked-1")
    logging.getLogger("httpx").info("HTTP Request: GET / 200")  # a library's chatter: not shown
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    found = lines(stream)
    assert [(f["logger"], f["level"]) for f in found] == [
        ("aiohttp.server", "error"),
        ("py.warnings", "warning"),
    ]
    assert found[0]["event"] == "Error handling request: Bearer [REDACTED]"


def test_the_tally_logs_the_first_then_counts() -> None:
    logged: list[tuple[str, dict[str, Any]]] = []
    now = [0.0]
    tally = logs.Tally(
        "refused",
        log=lambda event, **kw: logged.append((event, kw)),
        every=60,
        clock=lambda: now[0],
    )
    for _ in range(1000):
        tally.add("POST /x 401")
    tally.add("GET /y 404")
    assert [kw["what"] for _, kw in logged] == ["POST /x 401", "GET /y 404"]
    now[0] = 61.0
    tally.add("POST /x 401")  # the interval is over: this one flushes the counts
    assert logged[-1] == ("refused", {"counts": {"POST /x 401": 1000}, "seconds": 61.0})
    tally.flush()  # nothing counted since: nothing logged
    assert len(logged) == 3
    tally.add("POST /x 401")  # a new interval: the first is logged at once again
    assert logged[-1][1]["what"] == "POST /x 401"

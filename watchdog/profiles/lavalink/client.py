"""Talk to a Lavalink node as a bot's client library does: one call per endpoint, errors as data.

Both the synthetic probes (every ``probe_interval``, against the guarded service) and the
runbook's verification (once, against the fallback) need the same questions answered: does
``/version`` give a version (Java: plain text; the Rust server: JSON), are ``/v4/info`` and
``/v4/stats`` Lavalink's objects, does ``/v4/loadtracks`` find tracks for a source, does a
WebSocket session get its ``ready`` op. Each call returns a ``model.ProbeResult`` and never
raises for anything the service does: a refused connection, a 5xx or a wrong body is the answer.
A 401/403 is different: Lavalink refused *our* password, which says nothing about its health,
so the result is marked inconclusive (a probe exports no data for it; a verification fails).
REST goes through the caller's ``httpx.AsyncClient`` (tests inject a transport), the WebSocket
through aiohttp's client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx

from watchdog import __version__, model

FOUND_LOAD_TYPES = frozenset({"track", "playlist", "search"})
"""A load that found something; ``empty`` for a search means the source is missing."""
LOAD_TYPES = FOUND_LOAD_TYPES | {"empty", "error"}
"""Every ``loadType`` Lavalink v4 answers; anything else is not counted by name."""
REFUSED = frozenset({401, 403})
"""Lavalink's answers to a missing or wrong password: our configuration, not its health."""


@dataclass(frozen=True, slots=True)
class Service:
    """Where a Lavalink node listens and its password (sent as ``Authorization``)."""

    url: str
    password: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.password}


async def version(client: httpx.AsyncClient, service: Service) -> model.ProbeResult:
    """``GET /version``: Lavalink's plain-text version, or the Rust server's JSON object."""
    started = time.monotonic()
    try:
        answer = await client.get(f"{service.url}/version", headers=service.headers)
    except httpx.HTTPError as exc:
        return _failed("version", exc, started)
    seconds = time.monotonic() - started
    if answer.status_code in REFUSED:
        return refused("version", answer.status_code, seconds)
    if answer.status_code != 200:
        return model.ProbeResult("version", False, f"HTTP {answer.status_code}", seconds)
    text = answer.text.strip()
    if text.startswith("{"):  # the Rust server answers JSON
        try:
            found = str(json.loads(text).get("version", ""))
        except (ValueError, AttributeError):
            found = ""
    else:
        found = text
    if not found or not found[0].isdigit():
        return model.ProbeResult("version", False, f"not a version: {text[:80]!r}", seconds)
    return model.ProbeResult("version", True, f"version {found}", seconds)


async def info(client: httpx.AsyncClient, service: Service) -> model.ProbeResult:
    """``GET /v4/info``: a version and a list of source managers."""
    return await _document(client, service, "info", "/v4/info", _judge_info)


async def stats(client: httpx.AsyncClient, service: Service) -> model.ProbeResult:
    """``GET /v4/stats``: players, uptime, memory and CPU load in range."""
    return await _document(client, service, "stats", "/v4/stats", _judge_stats)


async def load_tracks(
    client: httpx.AsyncClient, service: Service, source: str, identifier: str
) -> model.ProbeResult:
    """``GET /v4/loadtracks?identifier=``: ok when the load found something."""
    started = time.monotonic()
    try:
        answer = await client.get(
            f"{service.url}/v4/loadtracks",
            params={"identifier": identifier},
            headers=service.headers,
        )
    except httpx.HTTPError as exc:
        failed = _failed("loadtracks", exc, started)
        return model.ProbeResult(
            "loadtracks", False, f"{identifier}: {failed.detail}", failed.seconds, source=source
        )
    seconds = time.monotonic() - started
    if answer.status_code in REFUSED:
        return refused("loadtracks", answer.status_code, seconds, source=source)
    try:
        body = answer.json()
    except ValueError:
        body = None
    load_type = body.get("loadType") if isinstance(body, dict) else None
    if answer.status_code != 200 or not isinstance(load_type, str):
        return model.ProbeResult(
            "loadtracks",
            False,
            f"{identifier}: HTTP {answer.status_code}, not a load result",
            seconds,
            source=source,
        )
    if load_type not in FOUND_LOAD_TYPES:
        message = ""
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict) and "message" in data:
            message = f": {data.get('message')} ({data.get('severity')})"
        return model.ProbeResult(
            "loadtracks",
            False,
            f"{identifier}: loadType {load_type}{message}",
            seconds,
            source=source,
            load_type=load_type if load_type in LOAD_TYPES else "",
        )
    return model.ProbeResult(
        "loadtracks",
        True,
        f"{identifier}: loadType {load_type}",
        seconds,
        source=source,
        load_type=load_type,
    )


async def websocket(service: Service, *, within: float) -> model.ProbeResult:
    """Open a session on ``/v4/websocket`` (as a bot: ``User-Id``, ``Client-Name``) and wait for
    the ``ready`` op; the session is closed again at once."""
    parts = urlsplit(service.url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    url = f"{scheme}://{parts.netloc}/v4/websocket"
    headers = {
        "Authorization": service.password,
        "User-Id": "1",
        "Client-Name": f"rollback-watchdog/{__version__}",
    }
    started = time.monotonic()
    try:
        async with (
            asyncio.timeout(within),
            aiohttp.ClientSession() as session,
            session.ws_connect(url, headers=headers) as socket,
        ):
            message = await socket.receive_json()
    except TimeoutError:
        return model.ProbeResult(
            "websocket", False, f"no ready op within {within:g}s", time.monotonic() - started
        )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status in REFUSED:
            return refused("websocket", exc.status, time.monotonic() - started)
        return model.ProbeResult(
            "websocket", False, f"handshake refused: HTTP {exc.status}", time.monotonic() - started
        )
    except (aiohttp.ClientError, ValueError, TypeError) as exc:
        return model.ProbeResult(
            "websocket", False, f"{type(exc).__name__}: {exc}", time.monotonic() - started
        )
    seconds = time.monotonic() - started
    if not isinstance(message, dict) or message.get("op") != "ready":
        return model.ProbeResult(
            "websocket", False, f"first message was not ready: {str(message)[:80]}", seconds
        )
    return model.ProbeResult(
        "websocket", True, f"ready, session {message.get('sessionId')}", seconds
    )


def refused(probe: str, status: int, seconds: float, *, source: str = "") -> model.ProbeResult:
    """The service refused the password: a failure for a verification, no data for a probe."""
    return model.ProbeResult(
        probe,
        False,
        f"HTTP {status}: the service refused the configured password",
        seconds,
        source=source,
        conclusive=False,
    )


def _failed(probe: str, exc: httpx.HTTPError, started: float) -> model.ProbeResult:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return model.ProbeResult(probe, False, detail, time.monotonic() - started)


async def _document(
    client: httpx.AsyncClient,
    service: Service,
    probe: str,
    path: str,
    judge: Callable[[Any], str | None],
) -> model.ProbeResult:
    started = time.monotonic()
    try:
        answer = await client.get(f"{service.url}{path}", headers=service.headers)
    except httpx.HTTPError as exc:
        failed = _failed(probe, exc, started)
        return model.ProbeResult(probe, False, f"{path}: {failed.detail}", failed.seconds)
    seconds = time.monotonic() - started
    if answer.status_code in REFUSED:
        return refused(probe, answer.status_code, seconds)
    if answer.status_code != 200:
        return model.ProbeResult(probe, False, f"{path}: HTTP {answer.status_code}", seconds)
    try:
        body = answer.json()
    except ValueError:
        return model.ProbeResult(probe, False, f"{path}: not JSON", seconds)
    problem = judge(body)
    return model.ProbeResult(probe, problem is None, problem or f"{path} sane", seconds)


def _judge_info(body: Any) -> str | None:
    try:
        semver = body["version"]["semver"]
        sources = body["sourceManagers"]
    except (KeyError, TypeError):
        return "/v4/info: not Lavalink's info object"
    if not isinstance(sources, list):
        return "/v4/info: sourceManagers is not a list"
    return None if semver else "/v4/info: empty version"


def _judge_stats(body: Any) -> str | None:
    try:
        fine = (
            isinstance(body["players"], int)
            and body["players"] >= 0
            and body["uptime"] >= 0
            and body["memory"]["used"] >= 0
            and 0 <= body["cpu"]["lavalinkLoad"] <= 1
        )
    except (KeyError, TypeError):
        return "/v4/stats: not Lavalink's stats object"
    return None if fine else "/v4/stats: values out of range"

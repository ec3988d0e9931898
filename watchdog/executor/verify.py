"""Is the fallback really serving? The runbook's verification list, checked from outside.

After the switch the operators check: ``/version``, ``/v4/info`` and ``/v4/stats`` answer (with
``Authorization``), track loading works for the major sources, a WebSocket session opens, port
2333 is bound by the new process, memory < 2 GiB, CPU < 50 %, basic endpoints < 500 ms. Each of
those is one ``Check`` here, so the run's journal shows which passed and why one failed. REST
goes through httpx, the WebSocket through aiohttp's client; the process facts come from
``/proc`` (the port's socket inode among the process tree's file descriptors).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx

from watchdog import __version__, config

PROC = Path("/proc")
_FOUND = ("track", "playlist", "search")


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the verification list."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Service:
    """Where and how to reach the service."""

    url: str
    password: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.password}


async def wait_for_version(
    client: httpx.AsyncClient, service: Service, *, within: float, poll: float
) -> Check:
    """Poll ``/version`` until it answers as Lavalink does (Java text or Rust JSON)."""
    started = time.monotonic()
    last = "no answer yet"
    while True:
        check = await _version(client, service)
        if check.ok:
            return Check("version", True, check.detail, time.monotonic() - started)
        last = check.detail
        if time.monotonic() - started >= within:
            return Check(
                "version",
                False,
                f"no valid /version within {within:g}s: {last}",
                time.monotonic() - started,
            )
        await asyncio.sleep(poll)


async def _version(client: httpx.AsyncClient, service: Service) -> Check:
    try:
        answer = await client.get(f"{service.url}/version", headers=service.headers)
    except httpx.HTTPError as exc:
        return Check("version", False, f"{type(exc).__name__}: {exc}")
    if answer.status_code != 200:
        return Check("version", False, f"HTTP {answer.status_code}")
    text = answer.text.strip()
    if text.startswith("{"):  # the Rust server answers JSON
        try:
            version = str(json.loads(text).get("version", ""))
        except ValueError:
            version = ""
    else:
        version = text
    if not version or not version[0].isdigit():
        return Check("version", False, f"not a version: {text[:80]!r}")
    return Check("version", True, f"version {version}")


async def endpoints(
    client: httpx.AsyncClient, service: Service, settings: config.VerifySettings
) -> list[Check]:
    """``/v4/info`` and ``/v4/stats`` sane, and track loading per configured source."""
    checks: list[Check] = []
    for name, path, judge in (("info", "/v4/info", _info), ("stats", "/v4/stats", _stats)):
        started = time.monotonic()
        try:
            answer = await client.get(f"{service.url}{path}", headers=service.headers)
        except httpx.HTTPError as exc:
            checks.append(Check(name, False, f"{path}: {type(exc).__name__}: {exc}"))
            continue
        seconds = time.monotonic() - started
        if answer.status_code != 200:
            checks.append(Check(name, False, f"{path}: HTTP {answer.status_code}", seconds))
            continue
        problem = judge(answer)
        checks.append(Check(name, problem is None, problem or f"{path} sane", seconds))
    for source, identifier in settings.identifiers.items():
        checks.append(await _load(client, service, source, identifier))
    return checks


async def latency(
    client: httpx.AsyncClient, service: Service, settings: config.VerifySettings
) -> Check:
    """Each basic endpoint (``/version``, ``/v4/info``, ``/v4/stats``) under ``max_latency``."""
    timings: dict[str, float] = {}
    for name, path in (("version", "/version"), ("info", "/v4/info"), ("stats", "/v4/stats")):
        started = time.monotonic()
        try:
            answer = await client.get(f"{service.url}{path}", headers=service.headers)
        except httpx.HTTPError as exc:
            return Check("latency", False, f"{path}: {type(exc).__name__}: {exc}")
        if answer.status_code != 200:
            return Check("latency", False, f"{path}: HTTP {answer.status_code}")
        timings[name] = time.monotonic() - started
    slow = [n for n, t in timings.items() if t >= settings.max_latency]
    detail = ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in timings.items())
    return Check("latency", not slow, f"{detail} (limit {settings.max_latency * 1000:.0f} ms)")


def _info(answer: httpx.Response) -> str | None:
    try:
        body = answer.json()
        semver = body["version"]["semver"]
        sources = body["sourceManagers"]
    except (ValueError, KeyError, TypeError):
        return "/v4/info: not Lavalink's info object"
    if not isinstance(sources, list):
        return "/v4/info: sourceManagers is not a list"
    return None if semver else "/v4/info: empty version"


def _stats(answer: httpx.Response) -> str | None:
    try:
        body = answer.json()
        fine = (
            isinstance(body["players"], int)
            and body["players"] >= 0
            and body["uptime"] >= 0
            and body["memory"]["used"] >= 0
            and 0 <= body["cpu"]["lavalinkLoad"] <= 1
        )
    except (ValueError, KeyError, TypeError):
        return "/v4/stats: not Lavalink's stats object"
    return None if fine else "/v4/stats: values out of range"


async def _load(client: httpx.AsyncClient, service: Service, source: str, identifier: str) -> Check:
    name = f"loadtracks:{source}"
    started = time.monotonic()
    try:
        answer = await client.get(
            f"{service.url}/v4/loadtracks",
            params={"identifier": identifier},
            headers=service.headers,
        )
        body = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Check(name, False, f"{identifier}: {type(exc).__name__}: {exc}")
    seconds = time.monotonic() - started
    load_type = body.get("loadType") if isinstance(body, dict) else None
    # `empty` for a search means no source took it: the source is missing, not working
    if answer.status_code != 200 or load_type not in _FOUND:
        message = ""
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            message = f": {body['data'].get('message')} ({body['data'].get('severity')})"
        return Check(name, False, f"{identifier}: loadType {load_type}{message}", seconds)
    return Check(name, True, f"{identifier}: loadType {load_type}", seconds)


async def websocket(service: Service, *, within: float) -> Check:
    """Open a session on ``/v4/websocket`` and wait for the ``ready`` op."""
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
        return Check("websocket", False, f"no ready op within {within:g}s")
    except (aiohttp.ClientError, ValueError, TypeError) as exc:
        return Check("websocket", False, f"{type(exc).__name__}: {exc}")
    seconds = time.monotonic() - started
    if not isinstance(message, dict) or message.get("op") != "ready":
        return Check("websocket", False, f"first message was not ready: {str(message)[:80]}")
    return Check("websocket", True, f"ready, session {message.get('sessionId')}", seconds)


def port_bound(pid: int, port: int) -> Check:
    """The service's port is bound by the process (or one of its children), from ``/proc``."""
    if pid <= 0 or not (PROC / str(pid)).exists():
        return Check("port", False, f"no main process (MainPID {pid})")
    listening = _listeners(port)
    bound = [p for p in [pid, *_descendants(pid)] if listening & _socket_inodes(p)]
    if not bound:
        return Check("port", False, f"port {port} not bound by PID {pid}")
    return Check("port", True, f"port {port} bound by PID {bound[0]}")


def memory(pid: int, settings: config.VerifySettings) -> Check:
    """Resident memory of the process tree under ``max_memory_bytes``."""
    rss = sum(_rss_bytes(p) for p in [pid, *_descendants(pid)])
    return Check(
        "memory",
        0 < rss < settings.max_memory_bytes,
        f"RSS {rss / 1024**2:.0f} MiB (limit {settings.max_memory_bytes / 1024**2:.0f} MiB)",
    )


async def cpu(pid: int, settings: config.VerifySettings) -> Check:
    """CPU of the process tree over ``cpu_sample`` seconds, as a fraction of one core."""
    tree = [pid, *_descendants(pid)]
    before, started = sum(_cpu_seconds(p) for p in tree), time.monotonic()
    await asyncio.sleep(settings.cpu_sample)
    used = sum(_cpu_seconds(p) for p in tree) - before
    share = used / (time.monotonic() - started)
    return Check(
        "cpu", share < settings.max_cpu, f"{share:.0%} of a core (limit {settings.max_cpu:.0%})"
    )


def port_of(url: str, settings: config.VerifySettings) -> int:
    if settings.port is not None:
        return settings.port
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        for task in _listdir(PROC / str(current) / "task"):
            try:
                children = (PROC / str(current) / "task" / task / "children").read_text()
            except OSError:
                continue
            for child in children.split():
                found.append(int(child))
                pending.append(int(child))
    return found


def _listdir(path: Path) -> Iterable[str]:
    try:
        return os.listdir(path)
    except OSError:
        return ()


def _listeners(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (TCP, IPv4 and IPv6)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in _listdir(PROC / str(pid) / "fd"):
        try:
            target = os.readlink(PROC / str(pid) / "fd" / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _rss_bytes(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def summary(checks: Iterable[Check]) -> dict[str, Any]:
    """The checks as journal data."""
    return {
        c.name: {"ok": c.ok, "detail": c.detail, "seconds": round(c.seconds, 3)} for c in checks
    }

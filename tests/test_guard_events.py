"""A guard following Docker's event stream: a container's death makes it read the units at
once, and a stream that keeps breaking is followed again less and less often and said once.

The engine is a stand-in on a real Unix socket (an event stream cannot be broken on demand on
a real engine); the client, the link and the guard are the daemon's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from watchdog import config, journal, model, pipeline, sources, telemetry
from watchdog.runtime.guard import Guard
from watchdog.runtime.link import ManagerLink
from watchdog.sources import systemd_watch

RECORD = {
    "Id": "rust",
    "Image": "sha256:x",
    "RestartCount": 0,
    "State": {"Running": True, "Status": "running", "Pid": 1},
    "HostConfig": {"RestartPolicy": {"Name": "always"}},
}


class Engine:
    """Answers ``/version`` and the two containers; ``/events`` breaks (500) or streams one
    death of the primary and then stays open, as told."""

    def __init__(self, *, stream: bool) -> None:
        self.stream = stream
        self.asked: list[tuple[float, str]] = []  # (loop time, path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.split("/", 2)[-1] if request.path.startswith("/v1.") else request.path
        path = path.lstrip("/")
        self.asked.append((asyncio.get_running_loop().time(), path))
        if path == "version":
            return web.json_response({"ApiVersion": "1.41", "Version": "stand-in"})
        if path in ("containers/rust/json", "containers/java/json"):
            return web.json_response({**RECORD, "Id": path.split("/")[1]})
        if path == "events" and self.stream:
            response = web.StreamResponse()
            await response.prepare(request)
            died = {"Type": "container", "Action": "die", "Actor": {"Attributes": {"name": "rust"}}}
            await response.write(json.dumps(died).encode() + b"\n")
            await asyncio.sleep(3600)  # open until the guard lets go (the handler is cancelled)
            return response
        return web.json_response({"message": "broken"}, status=500)

    def calls(self, path: str) -> list[float]:
        return [at for at, asked in self.asked if asked == path]


@pytest.fixture
async def socket(tmp_path: Path) -> AsyncIterator[tuple[Path, list[Engine]]]:
    engines: list[Engine] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        return await engines[0].handle(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    await web.UnixSite(runner, str(tmp_path / "docker.sock")).start()
    yield tmp_path / "docker.sock", engines
    await runner.cleanup()


async def guarded(tmp_path: Path, path: Path) -> tuple[Guard, ManagerLink]:
    settings = config.Settings.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "docker": {"url": f"unix://{path}"},
            "targets": [
                {
                    "name": "lavalink",
                    "executor": "docker",
                    "primary": {"unit": "rust", "job": "lavalink-rust"},
                    "fallback": {"unit": "java", "job": "lavalink-java"},
                    "rules": ["rules.yml"],
                    "watch": {"interval": "1h"},  # only the events can cause a reading
                }
            ],
        }
    )
    settings_of = settings.targets[0]
    store = journal.Journal.open(tmp_path / "state")
    target = pipeline.Target(
        settings=settings_of,
        rules=[],
        policy=model.Policy(),
        mode=model.Mode.OBSERVE,
        source=sources.NoSource(),
        store=store,
        recorder=telemetry.Recorder(),
    )
    target.watch = systemd_watch.SystemdWatch(settings_of)
    link = ManagerLink(settings, "docker")
    assert await link.connect()
    guard = Guard(target, link, settings, set(), lambda: 1000.0, target.recorder)
    return guard, link


@contextlib.contextmanager
def captured() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every log entry, whatever level an earlier test configured (``capture_logs`` keeps
    the level filter in place)."""
    before = structlog.get_config()
    capture = structlog.testing.LogCapture()
    structlog.configure(
        processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**before)


async def follow_for(guard: Guard, seconds: float) -> None:
    stop = asyncio.Event()
    following = asyncio.create_task(guard.follow_changes(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(following, timeout=5)


async def test_a_death_on_the_stream_reads_the_units_at_once(
    tmp_path: Path, socket: tuple[Path, list[Engine]]
) -> None:
    path, engines = socket
    engines.append(Engine(stream=True))
    guard, link = await guarded(tmp_path, path)
    try:
        with captured() as logs:
            await follow_for(guard, 1.0)
    finally:
        await link.aclose()
        guard.target.store.close()
    engine = engines[0]
    assert len(engine.calls("events")) == 1  # one stream, held open
    # the death was read at once: both containers, though the watch reads only hourly
    assert engine.calls("containers/rust/json") and engine.calls("containers/java/json")
    assert guard.target.watch is not None and guard.target.watch.observe(1000.0).ok
    assert any(e["event"] == "Docker event" and e["unit"] == "rust" for e in logs), logs


async def test_a_stream_that_keeps_breaking_is_followed_less_often_and_said_once(
    tmp_path: Path, socket: tuple[Path, list[Engine]]
) -> None:
    path, engines = socket
    engines.append(Engine(stream=False))
    guard, link = await guarded(tmp_path, path)
    try:
        with captured() as logs:
            await follow_for(guard, 3.6)
        # the stream's failures are not the runbook's connection: it stays up
        assert link.connection() is not None
    finally:
        await link.aclose()
        guard.target.store.close()
    tries = engines[0].calls("events")
    gaps = [round(later - earlier, 1) for earlier, later in itertools.pairwise(tries)]
    assert len(tries) == 3, gaps  # at about 0, 1 and 3 s: 1 s, then 2 s between
    assert gaps[0] < gaps[1], gaps
    lost = [e for e in logs if e["event"] == "Docker events lost; following again"]
    assert len(lost) == 1, logs  # one outage, said once
    assert "Docker said 500" in lost[0]["error"]

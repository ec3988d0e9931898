"""The Lavalink profile: the Discord audio server, Rust rewrite as primary, Java as fallback.

What the runbook asks of Lavalink in particular: ``/version``, ``/v4/info`` and ``/v4/stats``
answer with the ``Authorization`` password, track loading works for the major sources, a
WebSocket session opens; the fallback needs Java 17+. The calls themselves are ``client``'s,
shared by the probes and the verification so both judge an answer the same way. Its config
defaults (port 2333, ``java -version``, ``application.yml``, the search identifiers) are
``defaults.yml`` beside this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from watchdog import config, model
from watchdog.profiles import base
from watchdog.profiles.lavalink import client, runtime

NAME = "lavalink"


class Lavalink:
    """A Lavalink v4 node."""

    name = NAME

    def bind(self, target: config.TargetSettings, secret: str) -> LavalinkService:
        return LavalinkService(target, client.Service(target.runbook.url, secret))

    def users(self, snapshot: Mapping[str, Any]) -> str | None:
        stats = snapshot.get("/v4/stats")
        if isinstance(stats, dict) and isinstance(stats.get("players"), int):
            playing = stats.get("playingPlayers")
            also = f" ({playing} playing)" if isinstance(playing, int) else ""
            return f"{stats['players']} players connected to the primary at the snapshot{also}"
        return f"unknown (the primary's /v4/stats at the snapshot: {stats})"


class LavalinkService:
    """One target's Lavalink node, asked as a bot's client library would."""

    def __init__(self, target: config.TargetSettings, service: client.Service) -> None:
        self.target = target
        self.service = service

    def probes(self) -> list[base.Probe]:
        service, settings = self.service, self.target.probes
        chosen = [
            base.Probe("version", lambda http: client.version(http, service)),
            base.Probe("info", lambda http: client.info(http, service)),
            base.Probe("stats", lambda http: client.stats(http, service)),
        ]
        if settings.websocket:
            within = settings.timeout
            chosen.append(
                base.Probe("websocket", lambda _: client.websocket(service, within=within))
            )
        for source, identifier in self.target.probe_identifiers.items():
            chosen.append(
                base.Probe("loadtracks", _loader(service, source, identifier), source, True)
            )
        return chosen

    async def preflight(self) -> base.Preflight:
        runbook = self.target.runbook
        if not runbook.java_command:
            return base.Preflight()
        major, detail = await runtime.java_major(runbook.java_command)
        if major is None:
            return base.Preflight(problems=(detail,))
        if major < runbook.min_java:
            return base.Preflight(
                problems=(f"Java {major} found, {runbook.min_java}+ needed ({detail})",)
            )
        return base.Preflight(notes=(f"Java {major}",))

    def preflight_plan(self) -> list[str]:
        runbook = self.target.runbook
        if not runbook.java_command:
            return []
        return [f"`{' '.join(runbook.java_command)}` reports >= {runbook.min_java}"]

    async def snapshot(self, http: httpx.AsyncClient) -> base.Snapshot:
        facts: dict[str, Any] = {}
        for path in ("/v4/info", "/v4/stats"):
            try:
                answer = await http.get(
                    f"{self.service.url}{path}", headers=self.service.headers, timeout=3.0
                )
                facts[path] = answer.json() if answer.status_code == 200 else answer.status_code
            except (httpx.HTTPError, ValueError) as exc:
                facts[path] = f"unreachable: {type(exc).__name__}"  # a dead primary is expected
        return base.Snapshot(facts, f"/v4/info: {_short(facts['/v4/info'])}")

    async def ready(self, http: httpx.AsyncClient) -> model.ProbeResult:
        return await client.version(http, self.service)

    async def checks(self, http: httpx.AsyncClient) -> list[model.ProbeResult]:
        verify = self.target.runbook.verify
        found = [await client.info(http, self.service), await client.stats(http, self.service)]
        for source, identifier in verify.identifiers.items():
            found.append(await client.load_tracks(http, self.service, source, identifier))
        if verify.websocket:
            found.append(await client.websocket(self.service, within=10.0))
        return found

    async def timed(self, http: httpx.AsyncClient) -> list[model.ProbeResult]:
        return [
            await client.version(http, self.service),
            await client.info(http, self.service),
            await client.stats(http, self.service),
        ]

    def verify_plan(self) -> list[str]:
        verify = self.target.runbook.verify
        checks = [f"/version within {verify.timeout:g}s", "/v4/info", "/v4/stats"]
        checks += [f"loadtracks {i}" for i in verify.identifiers.values()]
        if verify.websocket:
            checks.append("WebSocket ready")
        return checks


def _loader(service: client.Service, source: str, identifier: str) -> base.ProbeCall:
    # a function, not a lambda in the loop: each probe keeps its own source and identifier
    return lambda http: client.load_tracks(http, service, source, identifier)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return f"version {value.get('version', {}).get('semver', '?')}"
    return str(value)

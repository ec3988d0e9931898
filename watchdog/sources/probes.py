"""The watchdog's synthetic probes: what a bot sees of the service, measured every interval.

Lavalink exports no request latency and no per-source failure counts, so the watchdog asks the
service itself, as a bot's library would -- ``/version``, ``/v4/info``, ``/v4/stats``, a
WebSocket session, and one ``loadtracks`` per configured source -- and exports what it saw for
Prometheus to scrape (the rules read ``rollback_watchdog_probe_*``). One round runs its probes
concurrently, at most ``concurrency`` at a time, each bounded by ``timeout``: a slow or hung
service yields failed probes with their elapsed time, it never stalls the round or the loop.
A probe that says nothing about the service -- Lavalink refused our password, or the probe
itself broke -- is inconclusive: it exports no data rather than a failure. ``loadtracks`` runs
less often (``loadtracks_interval``): each one is a real search on YouTube or SoundCloud.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx

from watchdog import config, model
from watchdog.sources import lavalink

Probe = tuple[str, str, Callable[[], Awaitable[model.ProbeResult]]]
"""(probe name, source, the call): the source is empty except for loadtracks."""


class Prober:
    """Probes one target's service; ``round`` runs every probe once."""

    def __init__(
        self,
        target: config.TargetSettings,
        *,
        password: str,
        transport: httpx.AsyncBaseTransport | None = None,  # tests inject one
    ) -> None:
        self.target = target.name
        self.settings = target.probes
        self._identifiers = target.probe_identifiers
        self._service = lavalink.Service(target.runbook.url, password)
        timeout = self.settings.timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=self.settings.concurrency),
            transport=transport,
            follow_redirects=False,
        )
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._loaded_at: float | None = None  # monotonic time of the last loadtracks round

    def probes(self, *, with_loads: bool = True) -> list[Probe]:
        client, service = self._client, self._service
        chosen: list[Probe] = [
            ("version", "", lambda: lavalink.version(client, service)),
            ("info", "", lambda: lavalink.info(client, service)),
            ("stats", "", lambda: lavalink.stats(client, service)),
        ]
        if self.settings.websocket:
            within = self.settings.timeout
            chosen.append(("websocket", "", lambda: lavalink.websocket(service, within=within)))
        if with_loads:
            for source, identifier in self._identifiers.items():
                chosen.append(("loadtracks", source, _loader(client, service, source, identifier)))
        return chosen

    async def round(self) -> list[model.ProbeResult]:
        """Every probe once, concurrently and bounded; results in probe order. ``loadtracks``
        only every ``loadtracks_interval`` (searches reach YouTube and SoundCloud for real)."""
        now = time.monotonic()
        due = (
            self._loaded_at is None
            or now - self._loaded_at >= self.settings.loadtracks_interval - 0.5
        )
        if due:
            self._loaded_at = now
        chosen = self.probes(with_loads=due)
        return list(await asyncio.gather(*(self._bounded(p) for p in chosen)))

    async def _bounded(self, probe: Probe) -> model.ProbeResult:
        name, source, call = probe
        async with self._slots:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.settings.timeout):
                    return await call()
            except TimeoutError:
                return model.ProbeResult(
                    name,
                    False,
                    f"no answer within {self.settings.timeout:g}s",
                    time.monotonic() - started,
                    source=source,
                )
            except Exception as exc:
                return model.ProbeResult(
                    name,
                    False,
                    f"the probe itself failed: {type(exc).__name__}: {exc}",
                    time.monotonic() - started,
                    source=source,
                    conclusive=False,
                )

    async def aclose(self) -> None:
        await self._client.aclose()


def _loader(
    client: httpx.AsyncClient, service: lavalink.Service, source: str, identifier: str
) -> Callable[[], Awaitable[model.ProbeResult]]:
    # a function, not a lambda in the loop: each probe keeps its own source and identifier
    return lambda: lavalink.load_tracks(client, service, source, identifier)


def health(results: Sequence[model.ProbeResult]) -> tuple[bool, str] | None:
    """A round in one word: healthy (every conclusive probe passed), or not (which failed);
    None when no probe said anything about the service (no data is neither)."""
    said = [r for r in results if r.conclusive]
    if not said:
        return None
    failing = [f"{r.probe}:{r.source}" if r.source else r.probe for r in said if not r.ok]
    if failing:
        return False, "failing: " + ", ".join(failing)
    return True, "all passed"

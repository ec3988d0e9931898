"""The watchdog's synthetic probes: what a user sees of the service, measured every interval.

Services rarely export their request latency or per-source failures, so the watchdog asks the
service itself, with its profile's questions (Lavalink: ``/version``, ``/v4/info``,
``/v4/stats``, a WebSocket session, a ``loadtracks`` per source; an HTTP service: its health
endpoint), and exports what it saw for Prometheus to scrape (the rules read
``rollback_watchdog_probe_*``). One round runs its probes concurrently, at most ``concurrency``
at a time, each bounded by ``timeout``: a slow or hung service yields failed probes with their
elapsed time, it never stalls the round or the loop. A probe that says nothing about the
service -- it refused our secret, or the probe itself broke -- is inconclusive: it exports no
data rather than a failure. A profile's periodic probes (Lavalink's searches, real requests to
YouTube or SoundCloud) run less often (``loadtracks_interval``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx

from watchdog import config, model, profiles
from watchdog.profiles import base


class Prober:
    """Probes one target's service; ``round`` runs every probe once."""

    def __init__(
        self,
        target: config.TargetSettings,
        *,
        service: base.Service,
        transport: httpx.AsyncBaseTransport | None = None,  # tests inject one
    ) -> None:
        self.target = target.name
        self.settings = target.probes
        self._service = service
        timeout = self.settings.timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=self.settings.concurrency),
            transport=transport,
            follow_redirects=False,
        )
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._loaded_at: float | None = None  # monotonic time of the last loadtracks round

    @classmethod
    def for_profile(
        cls,
        target: config.TargetSettings,
        *,
        secret: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Prober:
        """The prober of ``target`` with its profile's questions and the service's secret."""
        service = profiles.get(target.profile).bind(target, secret)
        return cls(target, service=service, transport=transport)

    def probes(self, *, with_loads: bool = True) -> list[base.Probe]:
        """The profile's probes; its periodic ones only ``with_loads``."""
        return [p for p in self._service.probes() if with_loads or not p.periodic]

    async def round(self) -> list[model.ProbeResult]:
        """Every probe once, concurrently and bounded; results in probe order. Periodic probes
        only every ``loadtracks_interval`` (Lavalink's searches reach YouTube for real)."""
        now = time.monotonic()
        due = (
            self._loaded_at is None
            or now - self._loaded_at >= self.settings.loadtracks_interval - 0.5
        )
        if due:
            self._loaded_at = now
        chosen = self.probes(with_loads=due)
        return list(await asyncio.gather(*(self._bounded(p) for p in chosen)))

    async def _bounded(self, probe: base.Probe) -> model.ProbeResult:
        name, source = probe.name, probe.source
        async with self._slots:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.settings.timeout):
                    return await probe.call(self._client)
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

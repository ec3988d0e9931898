"""What a profile is: the part of a guarded service the core does not know.

The core runs the same flow for every service -- probes, preflight, backup, snapshot, the
switch, verification, the watch after it, the report. What differs is how to ask the service
whether it is well: Lavalink answers ``/version`` and ``/v4/stats`` and needs Java, an HTTP
service answers a health endpoint. A ``Profile`` names a kind of service, owns its config
defaults (``defaults.yml`` beside its module, read by ``config``) and, bound to one target and
its secret, gives a ``Service``: the probes, the extra preflight checks, the state snapshot, the
readiness and verification checks, the timed basic endpoints, and the words for a dry run. The
process facts (port, memory, CPU from ``/proc``) and the systemd switch stay in the core.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from watchdog import config, model

ProbeCall = Callable[[httpx.AsyncClient], Awaitable[model.ProbeResult]]


@dataclass(frozen=True, slots=True)
class Probe:
    """One synthetic probe: its name, the source it asks about (often none) and the call."""

    name: str
    call: ProbeCall
    source: str = ""
    periodic: bool = False  # True: runs every ``probes.loadtracks_interval``, not every round


@dataclass(frozen=True, slots=True)
class Preflight:
    """What a profile found before anything is stopped: problems refuse the run."""

    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The primary's state as the profile reads it at the snapshot step (best effort)."""

    facts: Mapping[str, Any] = field(default_factory=dict)  # journaled as they are
    summary: str = ""  # one line for the step's detail


class Service(Protocol):
    """One target's service as its profile knows how to ask it."""

    def probes(self) -> list[Probe]:
        """The synthetic probes of one round (periodic ones marked)."""
        ...

    async def preflight(self) -> Preflight:
        """What the fallback needs beyond its unit (e.g. a runtime of the right version)."""
        ...

    def preflight_plan(self) -> list[str]:
        """The profile's preflight checks in words, for ``rollback --dry-run``."""
        ...

    async def snapshot(self, client: httpx.AsyncClient) -> Snapshot:
        """The primary's own view of its state, for the journal and the report."""
        ...

    async def ready(self, client: httpx.AsyncClient) -> model.ProbeResult:
        """One readiness question; verification asks it until it passes or time runs out."""
        ...

    async def checks(self, client: httpx.AsyncClient) -> list[model.ProbeResult]:
        """The functional verification list, asked once the service is ready."""
        ...

    async def timed(self, client: httpx.AsyncClient) -> list[model.ProbeResult]:
        """The basic endpoints whose answer time must stay under ``verify.max_latency``."""
        ...

    def verify_plan(self) -> list[str]:
        """The profile's verification checks in words, for ``rollback --dry-run``."""
        ...


class Profile(Protocol):
    """A kind of service: its name, its service for a target, and its report fields."""

    name: str

    def bind(self, target: config.TargetSettings, secret: str) -> Service:
        """This profile's questions for one target, with the target's service secret."""
        ...

    def users(self, snapshot: Mapping[str, Any]) -> str | None:
        """Who was affected, from the snapshot's facts; None when the profile cannot tell."""
        ...

"""The connections to the service managers (systemd; the Docker Engine for ``executor:
docker`` targets): made at start, watched, made again when they drop; a run interrupted by a
lost connection is reconciled once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from watchdog import (
    config,
    model,
    pipeline,
)
from watchdog.errors import ManagerError
from watchdog.executor import runbook, units

log = structlog.get_logger("watchdog.runtime")


SILENT_READS = 3  # unanswered watch reads in a row before the connection is made again
RECONNECT_EVERY = 30.0  # seconds between attempts to reach a lost manager

Executor = str  # a target's ``executor``: systemd or docker


def managers(settings: config.Settings) -> list[Executor]:
    """The managers the targets need, each once, systemd first."""
    return sorted({t.executor for t in settings.targets}, key=lambda e: e != "systemd")


class ManagerLink:
    """The daemon's one connection to a service manager (systemd, or the Docker Engine):
    made at start, made again whenever it is lost.

    Without it the watchdog still evaluates (the crash-loop signal then reads ``error``), but
    cannot act: auto mode journals "no executor is connected" and asks again every tick until
    the link is back.
    """

    def __init__(self, settings: config.Settings, executor: Executor = "systemd") -> None:
        self._settings = settings
        self.executor = executor
        self.name = config.manager_name(executor)
        self._client: units.Units | None = None
        self._complained = False
        self._unanswered = 0  # reads in a row that the manager did not answer at all

    def connection(self) -> units.Units | None:
        """The connection, if it is up (a dropped one is closed and forgotten here)."""
        if self._client is not None and not self._client.connected:
            log.error(f"{self.name} connection lost; reconnecting")
            self._drop()
        return self._client

    def answered(self, *, at_all: bool) -> None:
        """What the watch saw: a manager that stays connected but never answers is as good as
        gone, so after ``SILENT_READS`` silent reads it is dropped and made again."""
        self._unanswered = 0 if at_all else self._unanswered + 1
        if self._unanswered >= SILENT_READS and self._client is not None:
            log.error(f"{self.name} stopped answering; reconnecting", silent_reads=self._unanswered)
            self._drop()

    def _drop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None
        self._unanswered = 0

    async def connect(self) -> bool:
        """One bounded attempt (the client tries a silent bus a few times itself)."""
        settings = self._settings
        mine = [t for t in settings.targets if t.executor == self.executor] or settings.targets
        job_timeout = max(t.runbook.job_timeout for t in mine)
        try:
            self._client = await units.connect_for(settings, mine[0], call_timeout=job_timeout)
        except ManagerError as exc:
            if not self._complained:  # once per outage, not every attempt
                self._complained = True
                if settings.mode is model.Mode.AUTO:
                    log.error(f"{self.name} unreachable: rollbacks cannot run", error=str(exc))  # noqa: TRY400
                else:
                    log.warning(f"{self.name} unreachable", error=str(exc))
            return False
        self._complained = False
        where = settings.docker.url if self.executor == "docker" else settings.systemd.bus
        log.info(f"connected to {self.name}", at=where)
        return True

    async def keep(self, stop: asyncio.Event) -> None:
        """Reconnect whenever the connection is gone, until stopped."""
        while not stop.is_set():
            if self.connection() is None:
                await self.connect()
            await _pause(stop, RECONNECT_EVERY if self._client is None else 1.0)

    async def aclose(self) -> None:
        """At shutdown: release the connection, waiting for an async client to close."""
        client, self._client = self._client, None
        closing = getattr(client, "aclose", None)
        if closing is not None:
            with contextlib.suppress(Exception):
                await closing()
        elif client is not None:
            with contextlib.suppress(Exception):
                client.close()


async def _reconcile(
    target: pipeline.Target,
    systemd: units.Units,
    settings: config.Settings,
    clock: Callable[[], float],
    halt: asyncio.Event,
) -> runbook.Outcome | None:
    """Finish or close a run a crash left unfinished, then re-read what it changed."""
    log.info("reconciling", target=target.name)
    outcome = await runbook.reconcile(
        target.settings, target.store, systemd, settings.state_dir, clock=clock, halt=halt
    )
    if outcome is not None:
        log.warning(
            "reconciled",
            target=target.name,
            run=outcome.run_id,
            status=outcome.status,
            detail=outcome.detail,
        )
        target.state = await asyncio.to_thread(target.store.target_state, target.name)
    return outcome


def _longest_step(settings: config.Settings) -> float:
    """How long a run can take to reach its next safe point: the stop/start pair (two systemd
    jobs) or the verification, plus some slack -- what ``TimeoutStopSec=`` must allow."""
    return max(
        max(2 * t.runbook.job_timeout, t.runbook.verify.timeout + t.runbook.verify.settle) + 15
        for t in settings.targets
    )


async def _pause(stop: asyncio.Event, seconds: float, *, wake: asyncio.Event | None = None) -> None:
    """Sleep up to ``seconds``, or less if stopped (or woken)."""
    events = [stop] if wake is None else [stop, wake]
    waiting = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiting, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

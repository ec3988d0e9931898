"""The daemon's own health: systemd's watchdog pings and STATUS, readiness and liveness, and the
housekeeping of the journal (is it still ours? prune by age).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from watchdog import (
    config,
    journal,
    sdnotify,
    telemetry,
    timefmt,
)
from watchdog.runtime.guard import Guard
from watchdog.runtime.intake import Intake
from watchdog.runtime.link import _pause
from watchdog.runtime.reload import Live

log = structlog.get_logger("watchdog.runtime")


async def _heartbeat(
    supervisor: sdnotify.SystemdNotifier,
    store: journal.Journal,
    guards: list[Guard],
    live: Live,
    stop: asyncio.Event,
) -> None:
    """Tell systemd: READY once every loop has ticked, then STATUS with the verdicts, and
    WATCHDOG=1 only while the journal answers and every loop makes progress -- a wedged
    daemon stops pinging and ``WatchdogSec=`` restarts it."""
    if not supervisor.enabled:
        return
    # WatchdogSec/3 (the interval given is half of it): a late ping still lands in time
    every = supervisor.watchdog_interval * 2 / 3 if supervisor.watchdog_interval else 5.0
    announced = False
    while not stop.is_set():
        settings = live.settings
        dead = await _liveness(store, guards, settings)
        problem = dead if dead is not None else await asyncio.to_thread(store.intact)
        status = f"mode {settings.mode.value}; " + ", ".join(
            f"{g.target.name}: {g.verdict}" for g in guards
        )
        if problem is None:
            if not announced:
                announced = supervisor.ready(status)
            else:
                supervisor.status(status)
        elif announced or not problem.startswith("starting"):
            supervisor.status(f"{status}; not healthy: {problem}")
        if dead is None and announced and supervisor.watchdog_interval is not None:
            supervisor.alive()
        await _pause(stop, every)


HOUSEKEEPING_EVERY = 60.0  # seconds between checks of the journal file, and tally flushes


PRUNE_EVERY = 86400.0  # seconds between two prunings of the journal


async def _housekeeping(
    store: journal.Journal,
    recorder: telemetry.Recorder,
    intake: Intake,
    live: Live,
    clock: Callable[[], float],
    stop: asyncio.Event,
) -> None:
    """Every minute: is the journal file still ours (a metric; the journal logs the loss once),
    and what was counted of alerts not taken. Once a day, from the start: prune what is older
    than ``journal.retention`` (verdict changes and alerts; never incidents, runs, approvals)."""
    pruned_at: float | None = None
    while not stop.is_set():
        try:
            lost = await asyncio.to_thread(store.intact)
            recorder.journal_intact.set(0 if lost else 1)
            intake.flush()
            now = time.monotonic()
            if lost is None and (pruned_at is None or now - pruned_at >= PRUNE_EVERY):
                pruned_at = now
                before = clock() - live.settings.journal.retention
                pruned = await asyncio.to_thread(store.prune, before)
                if any(pruned.values()):
                    log.info("journal pruned", older_than=timefmt.format_instant(before), **pruned)
        except Exception:  # housekeeping outlives any one bad round
            log.exception("journal housekeeping failed")
        await _pause(stop, HOUSEKEEPING_EVERY)


async def _readiness(
    store: journal.Journal, guards: list[Guard], settings: config.Settings
) -> str | None:
    """Ready: alive (``_liveness``) and the journal file still the one opened at start."""
    problem = await _liveness(store, guards, settings)
    if problem is not None:
        return problem
    return await asyncio.to_thread(store.intact)


async def _liveness(
    store: journal.Journal, guards: list[Guard], settings: config.Settings
) -> str | None:
    """Alive: the journal answers and every evaluation loop ticked within three intervals
    (plus the tick's own budget). A journal file deleted under the daemon is not ready, but
    alive: systemd must not kill it in the middle of a run it can no longer resume."""
    if not guards:
        return "starting"
    if not await asyncio.to_thread(store.healthy):
        return "the journal does not answer"
    allowed = 3 * settings.interval + config.source_budget(settings)
    for guard in guards:
        since = guard.since_last_tick()
        if since is None:
            return f"starting: {guard.target.name} has not been evaluated yet"
        if since > allowed:
            return f"the evaluation loop of {guard.target.name} has not ticked for {allowed:g}s"
    return None

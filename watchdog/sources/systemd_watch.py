"""The systemd watch: both units' restarts and active state, read over D-Bus every interval.

systemd knows first when the primary crash-loops: ``NRestarts`` counts every automatic restart,
even one too fast for any scrape to see. The watch exports both units' ``NRestarts`` and active
state (``rollback_watchdog_unit_*``, which the rules read through Prometheus) and also turns a
crash loop straight into a critical signal of its own (``UnitCrashLoop``, origin ``systemd``):
it needs no Prometheus, so the watchdog still rolls a crash-looping service back while
Prometheus is down. Restarts are counted as the shipped rule counts them: the newest
``NRestarts`` minus the smallest seen within the window, so a manual restart, which resets the
counter to 0, never reads as restarts. No reading (systemd unreachable, or the last reading
too old) is ``error``: unknown, never evidence.

The D-Bus client is the executor's; the watch sees it only through ``UnitReader``. A target
with ``executor: docker`` is watched the same way through the Docker Engine: a container's
``RestartCount`` is its ``NRestarts`` (Docker's restart policy restarting it; a manual start
resets it to 0, as systemd's does), and the engine's ``die`` events make the runtime read it
the moment a container dies rather than at the next reading.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from watchdog import config, model, timefmt

CRASH_LOOP_SIGNAL = "UnitCrashLoop"
STALE_AFTER_INTERVALS = 3  # readings older than this many intervals are not evidence


class UnitReader(Protocol):
    """What the watch needs of a systemd client."""

    async def status(self, name: str) -> model.UnitStatus: ...


@dataclass(frozen=True, slots=True)
class Reading:
    """One unit at one instant: its status, or why it could not be read."""

    unit: str
    at: float
    status: model.UnitStatus | None = None
    error: str | None = None


def crash_loop_rule(target: config.TargetSettings) -> model.Rule:
    """The built-in critical signal the watch evaluates for the primary unit."""
    settings = target.watch
    window = timefmt.format_duration(settings.crash_loop_window)
    unit = target.primary.unit
    docker = target.executor == "docker"
    manager, counter, seen = (
        ("Docker", "RestartCount", "the Docker Engine")
        if docker
        else ("systemd", "NRestarts", "D-Bus")
    )
    return model.Rule(
        name=CRASH_LOOP_SIGNAL,
        expr=f"{counter}({unit}) - min over {window} >= {settings.crash_loop_restarts} ({seen})",
        severity=model.Severity.CRITICAL,
        category=model.Category.INSTABILITY,
        summary=f"{manager} restarted {unit} repeatedly (seen on {seen})",
        description=(
            f"{manager} reports the primary restarting again and again: a crash loop. Read "
            f"directly from {manager}, so it holds while Prometheus is down. Runbook critical "
            'reason "Service Instability: frequent crashes".'
        ),
        threshold=f">= {settings.crash_loop_restarts} restarts in {window}",
        file=f"(built in: {manager} watch)",
        origin=model.Origin.DOCKER if docker else model.Origin.SYSTEMD,
    )


class SystemdWatch:
    """Reads both units of a target and remembers the primary's restarts over the window."""

    def __init__(self, target: config.TargetSettings, *, timeout: float | None = None) -> None:
        self.settings = target.watch
        self.primary = target.primary.unit
        self.units = (target.primary.unit, target.fallback.unit)
        self.rule = crash_loop_rule(target)
        self.manager = config.manager_name(target.executor)
        # a read may take one interval (at least 2 s: a busy systemd is slow, not gone)
        self.timeout = timeout if timeout is not None else max(2.0, self.settings.interval)
        self._restarts: deque[tuple[float, int]] = deque()  # (at, NRestarts) of the primary
        self._last: Reading | None = None  # the primary's newest reading
        self._good: dict[str, Reading] = {}  # each unit's newest reading with a status

    async def sample(self, reader: UnitReader | None, clock: Callable[[], float]) -> list[Reading]:
        """Read both units at once; remember the primary's restarts. Each reading is stamped
        when its answer came, so a slow answer is not taken for a stale one."""
        readings = list(
            await asyncio.gather(*(self._read(reader, unit, clock) for unit in self.units))
        )
        for reading in readings:
            if reading.status is not None:
                self._good[reading.unit] = reading
        primary = readings[0]
        self._last = primary
        if primary.status is not None:
            self._restarts.append((primary.at, primary.status.n_restarts))
        horizon = primary.at - self.settings.crash_loop_window
        while self._restarts and self._restarts[0][0] < horizon:
            self._restarts.popleft()
        return readings

    async def _read(
        self, reader: UnitReader | None, unit: str, clock: Callable[[], float]
    ) -> Reading:
        if reader is None:
            return Reading(unit, clock(), error=f"{self.manager} is not connected")
        try:
            async with asyncio.timeout(self.timeout):
                status = await reader.status(unit)
        except TimeoutError:
            return Reading(
                unit, clock(), error=f"no answer from {self.manager} within {self.timeout:g}s"
            )
        except Exception as exc:  # any failure to read is "unknown", and reported
            return Reading(unit, clock(), error=f"{type(exc).__name__}: {exc}")
        return Reading(unit, clock(), status=status)

    @property
    def unanswered(self) -> bool:
        """True when systemd gave no answer at all (a timeout) to the last read."""
        last = self._last
        return last is not None and last.error is not None and last.error.startswith("no answer")

    def restarts(self, since: float | None = None) -> int:
        """Automatic restarts of the primary within the window (and since ``since``: after a
        re-arm only the restarts after it count), as the rule counts them."""
        counts = [count for at, count in self._restarts if since is None or at >= since]
        if not counts:
            return 0
        return counts[-1] - min(counts)

    def observe(self, now: float, *, since: float | None = None) -> model.QueryResult:
        """The crash-loop signal's input at ``now``: one series while it holds, none otherwise.
        ``since``: count only restarts seen from then on (the target's last re-arm)."""
        last = self._last
        if last is None:
            return model.QueryResult(error=f"{self.manager} watch: no reading yet")
        if last.status is None:
            return model.QueryResult(error=f"{self.manager} watch: {last.error}")
        if self._stale(last, now):
            return model.QueryResult(
                error=f"{self.manager} watch: last reading {now - last.at:.0f}s old"
            )
        restarts = self.restarts(since)
        if restarts < self.settings.crash_loop_restarts:
            return model.QueryResult()
        labels = model.labels_of({"unit": self.primary})
        return model.QueryResult(points=(model.Point(labels, float(restarts)),))

    def _stale(self, reading: Reading, now: float) -> bool:
        return now - reading.at > STALE_AFTER_INTERVALS * self.settings.interval + self.timeout

    def latest(self, now: float) -> dict[str, model.UnitStatus | None]:
        """Each unit's newest status, None once it is stale: one failed read keeps the last
        answer (a flapping series would resolve alerts), a silence past staleness drops it."""
        known = {unit: self._good.get(unit) for unit in self.units}
        return {
            unit: None if reading is None or self._stale(reading, now) else reading.status
            for unit, reading in known.items()
        }

    def activated_at(self) -> float | None:
        """When the primary last became active, as systemd says (None if unknown or inactive)."""
        last = self._last
        if last is None or last.status is None or not last.status.active:
            return None
        return last.status.active_enter_timestamp

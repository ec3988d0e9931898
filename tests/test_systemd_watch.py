"""The systemd watch: restarts counted as the shipped rule counts them, unknown is never
evidence, and a crash loop seen on D-Bus rolls back while Prometheus is down.

The unit reader here is a scripted stand-in for the D-Bus client (the real client against a
real systemd is exercised in tests/integration/test_runbook_systemd.py).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from watchdog import config, decision, evaluation, model, telemetry
from watchdog.pipeline import with_systemd
from watchdog.sources import systemd_watch

PRIMARY, FALLBACK = "lavalink-rust.service", "lavalink-java.service"


def target(**watch: object) -> config.TargetSettings:
    return config.TargetSettings.model_validate(
        {
            "name": "lavalink",
            "primary": {"unit": PRIMARY, "job": "lavalink-rust"},
            "fallback": {"unit": FALLBACK, "job": "lavalink-java"},
            "rules": ["rules.yml"],
            "watch": watch,
        }
    )


def status(
    unit: str, restarts: int, *, active: str = "active", since: float = 0.0
) -> model.UnitStatus:
    return model.UnitStatus(
        name=unit,
        load_state="loaded",
        active_state=active,
        sub_state="running" if active == "active" else "dead",
        unit_file_state="enabled",
        main_pid=100,
        n_restarts=restarts,
        active_enter_timestamp=since or None,
    )


def clock(at: float) -> Callable[[], float]:
    """A clock stopped at ``at``."""
    return lambda: at


@dataclass
class Scripted:
    """Answers each unit's status from a script; raises what it is told to."""

    restarts: dict[str, int] = field(default_factory=lambda: {PRIMARY: 0, FALLBACK: 0})
    failure: Exception | None = None
    asked: list[str] = field(default_factory=list)

    async def status(self, name: str) -> model.UnitStatus:
        self.asked.append(name)
        if self.failure is not None:
            raise self.failure
        return status(name, self.restarts[name], since=500.0)


async def test_restarts_in_the_window_fire_and_a_manual_reset_does_not_count() -> None:
    watch = systemd_watch.SystemdWatch(target(crash_loop_restarts=3, crash_loop_window="15m"))
    reader = Scripted()
    for at, count in ((1000, 4), (1005, 5), (1010, 6)):
        reader.restarts[PRIMARY] = count
        await watch.sample(reader, clock(at))
    assert watch.restarts() == 2
    assert watch.observe(1010).points == ()  # 2 < 3: ok, not firing
    reader.restarts[PRIMARY] = 7
    await watch.sample(reader, clock(1015))
    (point,) = watch.observe(1015).points
    assert point.value == 3 and dict(point.labels) == {"unit": PRIMARY}
    # an operator's restart sets NRestarts to 0: never counted as restarts
    reader.restarts[PRIMARY] = 0
    await watch.sample(reader, clock(1020))
    assert watch.restarts() == 0


async def test_old_restarts_leave_the_window() -> None:
    watch = systemd_watch.SystemdWatch(
        target(crash_loop_restarts=3, crash_loop_window="60s", interval="5s")
    )
    reader = Scripted()
    for at, count in ((1000, 0), (1010, 3)):
        reader.restarts[PRIMARY] = count
        await watch.sample(reader, clock(at))
    assert watch.observe(1010).points  # 3 restarts within 60 s
    await watch.sample(reader, clock(1065))  # the reading of 0 at 1000 is now outside
    assert watch.restarts() == 0
    assert watch.observe(1065).points == ()


async def test_after_a_rearm_only_the_restarts_after_it_count() -> None:
    watch = systemd_watch.SystemdWatch(target(crash_loop_restarts=3, crash_loop_window="15m"))
    reader = Scripted()
    for at, count in ((1000, 0), (1005, 2), (1010, 4)):  # a crash loop, then a rollback
        reader.restarts[PRIMARY] = count
        await watch.sample(reader, clock(at))
    assert watch.observe(1010).points  # 4 in the window
    for at, count in ((1020, 4), (1030, 5)):  # re-armed at 1015: one restart since
        reader.restarts[PRIMARY] = count
        await watch.sample(reader, clock(at))
    assert watch.observe(1030).points  # without the re-arm: 5 in the window
    assert watch.observe(1030, since=1015).points == ()  # after it: only 1
    for at, count in ((1035, 6), (1040, 7)):
        reader.restarts[PRIMARY] = count
        await watch.sample(reader, clock(at))
    (point,) = watch.observe(1040, since=1015).points  # a new crash loop: 3 since the re-arm
    assert point.value == 3


@pytest.mark.parametrize(
    ("reader", "now", "error"),
    [
        (None, 1000.0, "systemd is not connected"),
        (Scripted(failure=RuntimeError("bus gone")), 1000.0, "RuntimeError: bus gone"),
        (Scripted(), 1100.0, "last reading 100s old"),  # stale: 3 intervals + the timeout
    ],
)
async def test_no_reading_is_an_error_never_evidence(
    reader: Scripted | None, now: float, error: str
) -> None:
    watch = systemd_watch.SystemdWatch(target(interval="5s"), timeout=2.0)
    await watch.sample(reader, clock(1000.0))
    observed = watch.observe(now)
    assert not observed.ok and error in (observed.error or "")


async def test_a_hung_bus_is_bounded() -> None:
    class Hung:
        async def status(self, name: str) -> model.UnitStatus:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    watch = systemd_watch.SystemdWatch(target(), timeout=0.05)
    readings = await watch.sample(Hung(), clock(1000.0))
    assert [r.error for r in readings] == ["no answer from systemd within 0.05s"] * 2


async def test_the_crash_loop_rolls_back_while_prometheus_is_down() -> None:
    settings = target(crash_loop_restarts=3)
    watch = systemd_watch.SystemdWatch(settings)
    reader = Scripted()
    scraped = model.Rule(
        "LavalinkDown", "up == 0", model.Severity.CRITICAL, model.Category.INSTABILITY
    )
    down = model.QueryResult(error="connection refused")
    memory = model.EMPTY_MEMORY
    state = model.TargetState()
    verdicts = []
    for at, count in ((1000, 0), (1005, 1), (1010, 2), (1015, 3)):
        reader.restarts[PRIMARY] = count
        await watch.sample(reader, clock(at))
        observation = model.Observation(
            at=at, results={scraped.name: down}, presence=down, activation_failed=True
        )
        observation = with_systemd(observation, watch, at)
        evaluated, memory = evaluation.evaluate(
            "lavalink", [scraped, watch.rule], observation, memory
        )
        made, state = decision.decide(evaluated, model.Policy(warmup=0), state)
        verdicts.append(made.verdict)
        states = {s.rule.name: s.state for s in evaluated.signals}
        assert states["LavalinkDown"] is model.SignalState.ERROR
    assert verdicts[:3] == [model.Verdict.INCONCLUSIVE] * 3
    assert verdicts[3] is model.Verdict.ROLLBACK
    assert "UnitCrashLoop" in made.reason and ">= 3 restarts in 15m" in made.reason


async def test_systemd_says_when_the_primary_started_if_prometheus_cannot() -> None:
    watch = systemd_watch.SystemdWatch(target())
    await watch.sample(Scripted(), clock(1000.0))
    blind = model.Observation(
        at=1000.0, results={}, presence=model.QueryResult(), activation_failed=True
    )
    seen = with_systemd(blind, watch, 1000.0)
    assert (seen.activated_at, seen.activation_failed) == (500.0, False)
    known = model.Observation(
        at=1000.0, results={}, presence=model.QueryResult(), activated_at=700.0
    )
    assert with_systemd(known, watch, 1000.0).activated_at == 700.0  # Prometheus's is kept


async def test_unit_metrics_keep_one_missed_read_and_vanish_when_stale() -> None:
    recorder = telemetry.Recorder()
    watch = systemd_watch.SystemdWatch(target(interval="5s"), timeout=2.0)
    reader = Scripted(restarts={PRIMARY: 4, FALLBACK: 0})

    async def read(at: float) -> None:
        readings = await watch.sample(reader, clock(at))
        failed = sum(1 for r in readings if r.status is None)
        recorder.record_units("lavalink", watch.latest(at), failed_reads=failed)

    await read(1000.0)
    value = recorder.registry.get_sample_value
    assert value("rollback_watchdog_unit_restarts", {"unit": PRIMARY}) == 4
    assert value("rollback_watchdog_unit_active", {"unit": FALLBACK}) == 1
    reader.failure = OSError("socket closed")
    await read(1005.0)  # one missed read: the last answer stands (no flapping series)
    assert value("rollback_watchdog_unit_restarts", {"unit": PRIMARY}) == 4
    await read(1020.0)  # 20 s without an answer (> 3 intervals + timeout): no data
    assert value("rollback_watchdog_unit_restarts", {"unit": PRIMARY}) is None
    assert value("rollback_watchdog_unit_active", {"unit": FALLBACK}) is None
    errors = value(
        "rollback_watchdog_source_errors_total", {"target": "lavalink", "source": "systemd"}
    )
    assert errors == 4  # two units, two failed reads each


def test_the_built_in_rule_is_critical_instability_from_systemd() -> None:
    rule = systemd_watch.crash_loop_rule(target(crash_loop_restarts=5, crash_loop_window="10m"))
    assert (rule.severity, rule.category, rule.origin) == (
        model.Severity.CRITICAL,
        model.Category.INSTABILITY,
        model.Origin.SYSTEMD,
    )
    assert rule.threshold == ">= 5 restarts in 10m"
    assert not math.isnan(rule.weight)

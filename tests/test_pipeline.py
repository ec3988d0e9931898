"""One tick, with an injected Prometheus client: hung sources, a failing journal, re-arming."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import rule
from watchdog import config, gate, journal, model, pipeline, sources, telemetry
from watchdog.sources import prometheus

DOWN = rule("Down")  # expr "down_metric > 1"
TARGET = config.TargetSettings(
    name="lavalink",
    primary=config.UnitSettings(unit="lavalink-rust.service", job="lavalink-rust"),
    fallback=config.UnitSettings(unit="lavalink-java.service", job="lavalink-java"),
    rules=[Path("unused.yml")],
)


class Client:
    """Stands in for PrometheusConnect: answers instant queries from a table."""

    def __init__(self, answers: dict[str, float | None], *, delay: float = 0.0) -> None:
        self.answers = answers
        self.delay = delay

    def custom_query(
        self, query: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        time.sleep(self.delay)
        value = self.answers.get(query)
        return (
            []
            if value is None
            else [{"metric": {"job": "lavalink-rust"}, "value": [0, str(value)]}]
        )


class Clock:
    """The injected clock: 10 000 s until a test moves it."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def make_target(
    tmp_path: Path,
    client: Client,
    *,
    mode: model.Mode = model.Mode.AUTO,
    clock: Clock | None = None,
    rules: list[model.Rule] | None = None,
) -> pipeline.Target:
    settings = config.PrometheusSettings(timeout=1, retries=1)
    source = prometheus.PrometheusSource(
        settings, credentials=prometheus.Credentials({}, None), connect=lambda **_: client
    )
    store = journal.Journal.open(tmp_path)
    return pipeline.Target(
        settings=TARGET,
        rules=rules or [DOWN],
        policy=model.Policy(),
        mode=mode,
        source=source,
        store=store,
        recorder=telemetry.Recorder(),
        state=store.target_state("lavalink"),
        clock=clock or Clock(),
    )


HEALTHY = {'up{job="lavalink-rust"}': 1.0, DOWN.expr: None}
BROKEN = {'up{job="lavalink-rust"}': 1.0, DOWN.expr: 5.0}


async def test_a_hung_prometheus_makes_the_tick_inconclusive_in_time(tmp_path: Path) -> None:
    target = make_target(tmp_path, Client(BROKEN, delay=2.0))
    started = time.monotonic()
    made = await target.tick(budget=0.3)
    assert time.monotonic() - started < 1.5
    assert made.verdict is model.Verdict.INCONCLUSIVE
    assert made.action is model.Action.NONE
    assert "did not answer within 0.3s" in made.reason


async def test_a_failed_journal_write_does_not_lose_the_decision(tmp_path: Path) -> None:
    target = make_target(tmp_path, Client(BROKEN))
    target.store.close()  # every write now fails
    with pytest.raises(sqlite3.ProgrammingError):
        await target.tick(budget=5)
    assert target.state == model.TargetState()  # nothing was remembered as done
    target.store = journal.Journal.open(tmp_path)
    made = await target.tick(budget=5)
    assert made.action is model.Action.ROLLBACK
    assert [d.action for d in target.store.decisions()] == ["rollback"]


async def test_rearming_reaches_a_running_loop_and_starts_afresh(tmp_path: Path) -> None:
    clock = Clock()
    target = make_target(tmp_path, Client(BROKEN), clock=clock)
    target.launch = Launcher()
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK
    assert (await target.tick(budget=5)).action is model.Action.NONE  # one action per incident
    target.store.set_armed("lavalink", False, at=10_001, by="executor", note="rolled back")
    clock.now = 10_001.5
    disarmed = await target.tick(budget=5)
    assert disarmed.action is model.Action.NONE and disarmed.reason.startswith("disarmed")
    target.store.set_armed("lavalink", True, at=10_002, by="alice", note="fixed and redeployed")
    clock.now = 10_003
    again = await target.tick(budget=5)  # Down has no `for`: seen again after the re-arm
    assert again.action is model.Action.ROLLBACK  # a new incident, no cooldown from the old
    incidents = target.store.incidents()
    assert [i.status for i in incidents] == ["open", "closed"]


async def test_after_a_rearm_a_rule_s_for_must_elapse_again(tmp_path: Path) -> None:
    # Down for 60 s, true since before the incident: a re-arm must not act on the old `for`
    slow = rule("Down", for_=60.0)
    clock = Clock()
    target = make_target(tmp_path, Client(BROKEN), clock=clock, rules=[slow])
    target.launch = launcher = Launcher()
    assert (await target.tick(budget=5)).action is model.Action.NONE  # pending
    clock.now = 10_060
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK
    target.store.set_armed("lavalink", False, at=10_070, by="rollback", note="rolled back")
    target.store.set_armed("lavalink", True, at=10_100, by="alice", note="re-armed")
    for now in (10_101, 10_130, 10_159):  # still true, but its `for` began before the re-arm
        clock.now = now
        made = await target.tick(budget=5)
        assert made.action is model.Action.NONE, made
        assert "re-armed at 1970-01-01T02:48:20Z: evidence from before ignored (Down)" in (
            made.reason
        )
    clock.now = 10_160  # held for a whole `for` after the re-arm: new evidence
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK
    assert len(launcher.launched) == 2


async def test_a_healthy_tick_holds(tmp_path: Path) -> None:
    target = make_target(tmp_path, Client(HEALTHY))
    made = await target.tick(budget=5)
    assert made.verdict is model.Verdict.HOLD
    assert (
        target.recorder.registry.get_sample_value(
            "rollback_watchdog_verdict", {"target": "lavalink", "verdict": "hold"}
        )
        == 1.0
    )


async def test_a_matrix_answer_is_an_error_not_a_crash(tmp_path: Path) -> None:
    class Matrix(Client):
        def custom_query(
            self, query: str, params: dict[str, Any] | None = None, timeout: float | None = None
        ) -> list[dict[str, Any]]:
            return [{"metric": {}, "values": [[0, "1"]]}]

    target = make_target(tmp_path, Matrix({}))
    made = await target.tick(budget=5)
    assert made.verdict is model.Verdict.INCONCLUSIVE
    assert "must return an instant vector" in made.reason


class Launcher:
    """Records launches; ``blocked_by`` and ``fails_with`` play a missing or lost executor."""

    def __init__(self) -> None:
        self.blocked_by: str | None = None
        self.fails_with: str | None = None
        self.launched: list[int | None] = []
        self.running = False  # a launched run is still going

    def blocked(self) -> str | None:
        return self.blocked_by

    def in_flight(self) -> bool:
        return bool(self.launched) and self.running

    def __call__(self, order: gate.Order) -> model.Launched:
        if self.fails_with is not None:
            return model.Launched(model.Launch.REFUSED, self.fails_with)
        self.launched.append(order.incident)
        return model.Launched(model.Launch.STARTED)


def acted(store: journal.Journal) -> str | None:
    row = store._db.execute("SELECT acted FROM incidents ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else row["acted"]


async def test_a_rollback_that_cannot_start_is_asked_again_until_it_can(tmp_path: Path) -> None:
    target = make_target(tmp_path, Client(BROKEN))
    launcher = Launcher()
    target.launch = launcher
    launcher.blocked_by = "no executor is connected"
    first = await target.tick(budget=5)
    assert first.action is model.Action.ROLLBACK and launcher.launched == []
    assert acted(target.store) is None  # not marked as done: no run was started
    second = await target.tick(budget=5)
    assert second.action is model.Action.ROLLBACK  # asked again, still journaled each time
    outcomes = [d.outcome for d in target.store.decisions()]
    assert all("no executor is connected" in o for o in outcomes) and len(outcomes) == 2
    launcher.blocked_by = None
    third = await target.tick(budget=5)
    assert third.action is model.Action.ROLLBACK and len(launcher.launched) == 1
    assert acted(target.store) == "rollback"
    assert (await target.tick(budget=5)).action is model.Action.NONE  # once started: once


async def test_an_executor_lost_between_decision_and_launch_is_not_taken_for_a_run(
    tmp_path: Path,
) -> None:
    target = make_target(tmp_path, Client(BROKEN))
    launcher = Launcher()
    target.launch = launcher
    launcher.fails_with = "no executor is connected"
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK
    assert acted(target.store) is None and target.state.incident is not None
    assert target.state.incident.acted is None
    launcher.fails_with = None
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK
    assert len(launcher.launched) == 1


async def test_without_a_launcher_auto_mode_records_it_could_not_act(tmp_path: Path) -> None:
    target = make_target(tmp_path, Client(BROKEN))
    made = await target.tick(budget=5)
    assert made.action is model.Action.ROLLBACK
    (decision,) = target.store.decisions()
    assert decision.outcome.startswith("would roll back (auto mode, but no executor")


async def test_a_new_incident_while_a_run_is_in_flight_is_journaled_as_joining_it(
    tmp_path: Path,
) -> None:
    clock = Clock()
    target = make_target(tmp_path, Client(BROKEN), clock=clock)
    launcher = Launcher()
    target.launch = launcher
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK
    launcher.running = True
    target.store.set_armed("lavalink", True, at=10_001, by="test", note="new incident")
    clock.now = 10_002
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK
    outcomes = [d.outcome for d in target.store.decisions()]
    assert sorted(outcomes) == sorted([pipeline.STARTED, pipeline.JOINED])


async def test_without_a_metrics_source_no_rule_is_asked_and_nothing_acts(
    tmp_path: Path,
) -> None:
    """``prometheus.enabled: false``: the no-op source answers no rule, so the rules files are
    not evaluated -- the broken service Prometheus would show is not seen, nothing is
    inconclusive, nothing acts (the systemd watch and Alertmanager's alerts still would)."""
    target = make_target(tmp_path, Client(BROKEN))
    target.source = sources.build(config.PrometheusSettings(enabled=False))
    target.launch = launcher = Launcher()
    decided = await target.tick(budget=5)
    assert decided.verdict is model.Verdict.HOLD and launcher.launched == []
    last = target.store.last_evaluation("lavalink")  # the first verdict, journaled: no signal
    assert last is not None and last.reason == "all 0 signals quiet" and last.firing == ()


async def test_a_run_ending_outside_the_loop_reaches_the_loop_guard(tmp_path: Path) -> None:
    clock = Clock()
    target = make_target(tmp_path, Client(HEALTHY), clock=clock)
    target.launch = Launcher()
    assert (await target.tick(budget=5)).action is model.Action.NONE
    # an operator's rollback ran meanwhile, and its fallback failed: the primary was restored
    run = target.store.open_run(
        "lavalink",
        incident_id=None,
        trigger=model.Trigger.MANUAL,
        initiated_by="alice",
        reason="manual",
        at=10_005,
    )
    target.store.finish_run(run, model.RunStatus.RESTORED, "fallback failed", at=10_060)
    target.source = make_target(tmp_path / "other", Client(BROKEN)).source
    clock.now = 10_100
    made = await target.tick(budget=5)
    assert made.verdict is model.Verdict.ROLLBACK
    assert made.action is model.Action.PROPOSE  # never back to a fallback that just failed
    assert "loop guard: the fallback failed at" in made.reason
    assert target.launch.launched == []


async def test_the_release_commit_is_journaled_and_reset_by_a_new_activation(
    tmp_path: Path,
) -> None:
    clock = Clock()
    clock.now = 150_000.0
    activation = 'max(process_start_time_seconds{job="lavalink-rust"})'
    answers: dict[str, float | None] = {**HEALTHY, activation: 100_000.0}
    target = make_target(tmp_path, Client(answers), clock=clock)
    target.policy = model.Policy(commit_after=86_400.0)
    await target.tick(budget=5)
    assert target.store.arming("lavalink").committed_at is None  # 50 000 s: not yet a day
    clock.now = 186_400.0 + 1
    await target.tick(budget=5)
    arming = target.store.arming("lavalink")
    assert (arming.committed_at, arming.committed_release) == (
        186_401.0,
        "started 1970-01-02T03:46:40Z",  # no primary.binary: the activation stands in
    )
    answers[activation] = 186_500.0  # a deploy
    clock.now = 186_600.0
    await target.tick(budget=5)
    assert target.store.arming("lavalink").committed_at is None


class Ranges:
    """Range answers from a table (query -> value at every step): the comparison's seam."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.asked: list[tuple[str, float, float]] = []

    async def range(
        self, query: str, start: float, end: float, step: float
    ) -> prometheus.RangeResult:
        self.asked.append((query, start, end))
        value = next((v for key, v in self.values.items() if key in query), None)
        if value is None:
            return prometheus.RangeResult()
        points = {start + i * step: value for i in range(int((end - start) // step) + 1)}
        return prometheus.RangeResult(series=(prometheus.RangeSeries((), points),))


async def test_the_fallbacks_baseline_is_journaled_once_and_compared(tmp_path: Path) -> None:
    from watchdog.sources import baseline

    clock = Clock()
    clock.now = 200_000.0
    activation = 'max(process_start_time_seconds{job="lavalink-rust"})'
    target = make_target(tmp_path, Client({**HEALTHY, activation: 180_000.0}), clock=clock)
    settings = TARGET.model_copy(
        update={
            "baseline": config.BaselineSettings(
                metrics=[
                    config.BaselineMetric(
                        name="memory", unit="bytes", query='rss{job="${job}"}', critical=True
                    )
                ]
            )
        }
    )
    mib = 1024.0 * 1024
    ranges = Ranges({'rss{job="lavalink-java"}': 100 * mib, 'rss{job="lavalink-rust"}': 900 * mib})
    target.comparator = baseline.Comparator(settings, 120.0, ranges)
    made = await target.tick(budget=5)
    assert made.verdict is model.Verdict.ROLLBACK
    assert "p95 memory 900 MiB vs 100 MiB on lavalink-java (9.0x, p < 0.001)" in made.reason
    (kept,) = target.store.baselines("lavalink", 180_000.0)
    assert (kept.metric, kept.start, kept.end) == ("memory", 176_400.0, 179_940.0)
    assert kept.samples == (100 * mib,) * 60  # the hour before the switch, one per minute
    clock.now += 60
    await target.tick(budget=5)
    assert len(target.store.baselines("lavalink", 180_000.0)) == 1  # once per activation
    java = [q for q, _, _ in ranges.asked if "lavalink-java" in q]
    assert len(java) == 1


class HungRanges(Ranges):
    async def range(
        self, query: str, start: float, end: float, step: float
    ) -> prometheus.RangeResult:
        await asyncio.sleep(30)
        raise AssertionError("never answers")


def _comparing(ranges: Ranges) -> Any:
    from watchdog.sources import baseline

    memory = config.BaselineMetric(name="memory", unit="bytes", query='rss{job="${job}"}')
    settings = TARGET.model_copy(update={"baseline": config.BaselineSettings(metrics=[memory])})
    return baseline.Comparator(settings, 120.0, ranges)


async def test_a_hung_comparison_stays_inside_the_ticks_budget(tmp_path: Path) -> None:
    clock = Clock()
    clock.now = 200_000.0
    activation = 'max(process_start_time_seconds{job="lavalink-rust"})'
    target = make_target(tmp_path, Client({**BROKEN, activation: 180_000.0}), clock=clock)
    target.comparator = _comparing(HungRanges({}))
    started = time.monotonic()
    made = await target.tick(budget=0.5)
    assert time.monotonic() - started < 2
    assert made.verdict is model.Verdict.ROLLBACK  # the rule's evidence still decides
    [journaled] = target.store.evaluations("lavalink")
    compared = [s for s in journaled.signals if s.name.startswith("WorseThan")]
    assert [s.state for s in compared] == ["nodata", "nodata"]
    assert "no answer within the tick's 0.5s" in compared[0].detail


async def test_after_a_rearm_the_comparison_reads_only_newer_samples(tmp_path: Path) -> None:
    mib = 1024.0 * 1024
    ranges = Ranges({'rss{job="lavalink-java"}': 100 * mib, 'rss{job="lavalink-rust"}': 900 * mib})
    comparator = _comparing(ranges)
    await comparator.signals(200_000.0, 180_000.0, since=199_000.0)
    primary = [
        (start, end) for q, start, end in ranges.asked if q.startswith('rss{job="lavalink-rust"')
    ]
    assert primary == [(199_020.0, 199_920.0)]  # up to the last whole minute before 200 000
    # kept: only samples whose minute lies wholly after the re-arm
    assert min(comparator._series["memory"].values) == 199_080.0


async def test_the_release_is_what_primary_binary_holds_and_survives_a_blink(
    tmp_path: Path,
) -> None:
    binary = tmp_path / "lavalink"
    binary.write_bytes(b"v1")
    primary = TARGET.primary.model_copy(update={"binary": binary})
    settings = TARGET.model_copy(update={"primary": primary})
    first = pipeline.release_of(settings)
    assert first is not None and first.since == binary.stat().st_mtime
    assert str(binary.resolve()) in first.name
    replaced = tmp_path / "lavalink.new"
    replaced.write_bytes(b"v2 longer")
    replaced.rename(binary)  # a deploy: a new file (inode, size)
    second = pipeline.release_of(settings)
    assert second is not None and second.name != first.name
    binary.unlink()
    assert pipeline.release_of(settings) is None
    # in a tick, a binary caught missing (mid-copy) is no new release: the last one stands
    target = make_target(tmp_path / "j", Client(HEALTHY))
    target.settings = settings
    target.release = second
    await target.tick(budget=5)
    assert target.release == second


async def test_a_crash_loops_activations_do_not_pile_up_baselines(tmp_path: Path) -> None:
    ranges = Ranges({'rss{job="lavalink-java"}': 1.0, 'rss{job="lavalink-rust"}': 2.0})
    comparator = _comparing(ranges)
    for restart in range(5):  # a new activation every minute
        await comparator.signals(200_000.0 + 60 * restart, 190_000.0 + 60 * restart)
    assert list(comparator.baselines) == [("memory", 190_240.0)]

"""One target's guard: its evaluation loop, its systemd watch, the runs it launches or adopts,
the watch after a rollback and the report at a run's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Protocol

import httpx
import structlog

from watchdog import (
    backtest,
    config,
    errors,
    gate,
    journal,
    model,
    pipeline,
    report,
    telemetry,
)
from watchdog.executor import after, runbook, units
from watchdog.runtime.link import RECONNECT_EVERY, ManagerLink, _pause
from watchdog.sources import probes, prometheus

log = structlog.get_logger("watchdog.runtime")


# a step that ended, one way or another, has a duration (skipped and running ones have none)
_TIMED = frozenset({model.StepStatus.OK, model.StepStatus.FAILED, model.StepStatus.INTERRUPTED})
WAKE_GAP = 1.0  # seconds: the least time between two evaluations woken early
STREAM_LASTED = 10.0  # seconds: an event stream that ended sooner counts as broken


class RunEnded(Protocol):
    """Told when a run of a target ended (fleet mode gives its slot back)."""

    async def ended(self, target: str, outcome: runbook.Outcome) -> None: ...


class Guard:
    """One target's loops: evaluate every ``interval``, read systemd every watch interval, and
    start (or adopt) the runbook as its own task so evaluation keeps ticking while it runs. A
    crash loop newly seen on D-Bus wakes the evaluation at once rather than at the next tick."""

    def __init__(
        self,
        target: pipeline.Target,
        link: ManagerLink,
        settings: config.Settings,
        runs: set[asyncio.Task[runbook.Outcome | None]],
        clock: Callable[[], float],
        recorder: telemetry.Recorder,
        *,
        halt: asyncio.Event | None = None,  # the daemon's stop: runs pause at a safe point
        password: str = "",  # the service's secret, for the watch after a rollback
        gatekeeper: gate.Gate | None = None,
        fleet: RunEnded | None = None,  # fleet mode: told of each run's end (slot, halt)
    ) -> None:
        self.target = target
        self._fleet = fleet
        self._password = password
        self._gatekeeper = gatekeeper
        self._after: set[asyncio.Task[None]] = set()
        self._ticked_at: float | None = None  # monotonic, for readiness
        self.verdict = "starting"  # the last verdict, for systemd's STATUS=
        self._halt = halt
        self._wake = asyncio.Event()  # wakes the loop for an evaluation now (crash loop, alert)
        self._crash_looping = False
        self._link = link
        self._settings = settings
        self._runs = runs
        self._clock = clock
        self._recorder = recorder

    def _task(self, kind: str) -> asyncio.Task[runbook.Outcome | None] | None:
        """This target's run task of ``kind`` (``rollback`` or ``reconcile``) in flight here."""
        name = f"{kind}:{self.target.name}"
        return next((task for task in self._runs if task.get_name() == name), None)

    def wake(self) -> None:
        """Evaluate now rather than at the next tick (news that cannot wait)."""
        self._wake.set()

    def reconfigure(self, settings: config.Settings) -> None:
        """Settings swapped in by a reload (the next tick uses them)."""
        self._settings = settings

    def since_last_tick(self) -> float | None:
        """Seconds since the evaluation loop last went round (None before its first tick)."""
        return None if self._ticked_at is None else time.monotonic() - self._ticked_at

    def in_flight(self) -> bool:
        """Whether this target's rollback runs here now (``gate.Launcher``)."""
        return self._task("rollback") is not None

    def reconciling(self) -> bool:
        """Whether an interrupted run of this target is being reconciled here now."""
        return self._task("reconcile") is not None

    def blocked(self) -> str | None:
        """Why a rollback cannot start now, or None (``gate.Launcher``)."""
        if self._task("rollback") is not None:
            return None  # it joins the run in flight
        if self._halt is not None and self._halt.is_set():
            return "the watchdog is stopping"
        if self._task("reconcile") is not None:
            return "an interrupted run is being reconciled first"
        if self._link.connection() is None:
            return "no executor is connected"
        return None

    def __call__(self, order: gate.Order) -> model.Launched:
        """Start the runbook for an order (``gate.Launcher``), or join the run in flight."""
        if self._task("rollback") is not None:
            return model.Launched(model.Launch.JOINED)
        systemd = self._link.connection()
        if systemd is None or self._task("reconcile") is not None:
            return model.Launched(model.Launch.REFUSED, self.blocked() or "")
        self._start(
            "rollback",
            runbook.start_run(
                self.target.settings,
                self.target.store,
                systemd,
                self._settings.state_dir,
                trigger=order.trigger,
                initiated_by=order.initiated_by,
                reason=order.reason,
                incident_id=order.incident,
                clock=self._clock,
                observer=self._timed(order.observer),
                halt=self._halt,
            ),
            on_end=self._ended(order),
        )
        return model.Launched(model.Launch.STARTED)

    def _ended(self, order: gate.Order) -> Callable[[runbook.Outcome], None]:
        """At the run's end: tell the order's observer, then watch the fallback a while."""

        def ended(outcome: runbook.Outcome) -> None:
            if order.on_end is not None:
                order.on_end(outcome)
            self._after_run(outcome, order.incident)

        return ended

    def resumed_run_ended(self, outcome: runbook.Outcome) -> None:
        """A run resumed or closed by a reconcile ended: the same ending as any run's."""

        async def end() -> None:
            run = await asyncio.to_thread(self.target.store.run, outcome.run_id)
            if self._gatekeeper is not None:
                await self._gatekeeper.note(
                    run.incident_id,
                    f"run #{outcome.run_id} {outcome.status} (resumed)",
                    status=f"Rollback {outcome.status}: {outcome.detail}",
                    final=outcome.status is not model.RunStatus.INTERRUPTED,
                )
            self._after_run(outcome, run.incident_id)

        self._spawn(end())

    def _after_run(self, outcome: runbook.Outcome, incident: int | None) -> None:
        """A run that ended (not one paused for shutdown): its report, and the watch after."""
        if self._fleet is not None:
            self._spawn(self._fleet.ended(self.target.name, outcome))
        if outcome.status is model.RunStatus.INTERRUPTED:  # still open: its end comes later
            return
        self._spawn(self._report(outcome.run_id, incident, post=True))
        if outcome.succeeded and self.target.settings.after.enabled:
            self._spawn(self._watch_after(outcome.run_id, incident))

    async def stop_watching(self) -> None:
        """At shutdown, before the journal closes: end the watch after a rollback."""
        for task in list(self._after):
            task.cancel()
        if self._after:
            await asyncio.wait(list(self._after), timeout=5.0)

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._after.add(task)
        task.add_done_callback(self._after.discard)

    async def _report(self, run_id: int, incident: int | None, *, post: bool) -> None:
        """Write the run's report (``state_dir/reports``) and, if asked, post it. Best effort:
        a report that cannot be written is logged, and ``report RUN`` can still print it."""
        try:
            path = await asyncio.to_thread(
                report.write, self.target.store, run_id, self._settings.state_dir
            )
        except Exception:
            log.exception("the rollback report could not be written", run=run_id)
            return
        log.info("rollback report written", run=run_id, path=str(path))
        if post and self._gatekeeper is not None:
            body = await asyncio.to_thread(path.read_text)
            await self._gatekeeper.attach_document(
                incident, f"Rollback report, run #{run_id}", body, target=self.target.name
            )

    async def _watch_after(self, run_id: int, incident: int | None) -> None:
        """For ``after.duration``: the fallback against the runbook's limits. An unhealthy
        fallback is an alert (log, metric, the incident's message), never a switch back."""
        settings = self.target.settings.after
        watch = after.AfterWatch(self.target.settings, self._password)
        gauge = self._recorder.fallback_healthy.labels(self.target.name)
        store, name = self.target.store, self.target.name
        deadline = time.monotonic() + settings.duration
        healthy = True
        stop = self._halt if self._halt is not None else asyncio.Event()
        log.info("watching the fallback", target=name, run=run_id, seconds=settings.duration)
        async with httpx.AsyncClient(timeout=10.0) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    found = await watch.check(self._link.connection(), client)
                except Exception:  # the watch outlives any one bad round
                    log.exception("fallback check failed", target=name)
                    found = []
                problems = [f"{c.name}: {c.detail}" for c in found if not c.ok]
                if found:
                    gauge.set(0 if problems else 1)
                if found and watch.checks == 1 and not problems:  # journaled from the start
                    await asyncio.to_thread(store.remember, run_id, "after", watch.summary())
                if watch.checks <= 3:  # the first passing probe on the fallback comes about now
                    await self._report(run_id, incident, post=False)
                if found and bool(problems) == healthy:  # it turned
                    healthy = not problems
                    if problems:
                        line = "fallback unhealthy too: " + "; ".join(problems)
                        log.error(line, target=name, run=run_id, switch_back="never automatic")
                    else:
                        line = "fallback healthy again"
                        log.warning(line, target=name, run=run_id)
                    await asyncio.to_thread(store.remember, run_id, "after", watch.summary())
                    if self._gatekeeper is not None:
                        await self._gatekeeper.note(incident, line)
                await _pause(stop, settings.interval)
        await asyncio.to_thread(store.remember, run_id, "after", watch.summary())
        if stop.is_set():  # cut short: say so, never "healthy through the watch"
            if self._gatekeeper is not None:
                await self._gatekeeper.note(
                    incident,
                    f"the watch after the rollback ended with the watchdog ({watch.checks} checks)",
                )
            return
        if self._gatekeeper is not None and healthy:
            await self._gatekeeper.note(
                incident, f"fallback healthy through the watch ({watch.checks} checks)"
            )
        await self._report(run_id, incident, post=True)  # the final version

    def _timed(self, observer: runbook.Observer | None) -> runbook.Observer:
        """The order's observer, plus each finished step's duration as a metric."""
        histogram = self._recorder.step_duration

        def observe(event: runbook.StepEvent) -> None:
            if event.status in _TIMED:
                histogram.labels(self.target.name, event.name).observe(event.seconds)
            if observer is not None:
                observer(event)

        return observe

    def _start(
        self,
        kind: str,
        work: Coroutine[object, object, runbook.Outcome | None],
        *,
        on_end: Callable[[runbook.Outcome], None] | None = None,
    ) -> None:
        task = asyncio.create_task(work, name=f"{kind}:{self.target.name}")
        self._runs.add(task)
        task.add_done_callback(_finished(self._runs, self.target, self._recorder, on_end))

    async def _adopt_orphan(self) -> None:
        """A run journaled as running with no task here was left by a dead process (or one
        whose lock was still held at start, or whose systemd connection dropped): reconcile it
        as a run of ours. A run a living process holds is left alone (its lock says so)."""
        systemd = self._link.connection()
        if systemd is None or self._task("rollback") or self._task("reconcile"):
            return
        orphan = await asyncio.to_thread(self.target.store.running_run, self.target.name)
        if orphan is None:
            return
        target = self.target
        self._start(
            "reconcile",
            runbook.reconcile(
                target.settings,
                target.store,
                systemd,
                self._settings.state_dir,
                clock=self._clock,
                halt=self._halt,
            ),
            on_end=self.resumed_run_ended,
        )

    async def loop(self, stop: asyncio.Event) -> None:
        """Tick every ``interval`` until stopped; a failed tick never ends the loop."""
        target = self.target
        while not stop.is_set():
            interval = self._settings.interval  # each time round: a reload may change them
            budget = source_budget(self._settings)
            begun = time.monotonic()
            self._wake.clear()  # this tick sees it; news during the tick wakes the next
            try:
                await self._adopt_orphan()
                async with asyncio.timeout(budget + 30.0):  # last resort: the tick bounds itself
                    decided = await target.tick(budget=budget)
                self.verdict = decided.verdict.value
            except TimeoutError:
                target.recorder.source_errors.labels(target.name, "tick_timeout").inc()
                log.error("tick timed out", target=target.name, budget_seconds=budget)  # noqa: TRY400 - no traceback to add
            except errors.JournalLost:  # logged once where found; nothing acts until a restart
                target.recorder.source_errors.labels(target.name, "journal_lost").inc()
            except Exception:  # the loop outlives any one bad tick
                target.recorder.source_errors.labels(target.name, "tick_failed").inc()
                log.exception("tick failed", target=target.name)
            self._ticked_at = time.monotonic()
            # news wakes the next tick early, but at most one tick per WAKE_GAP: a flood of
            # alerts must not turn the loop into a busy one
            await _pause(stop, min(interval, WAKE_GAP) - (time.monotonic() - begun))
            await _pause(stop, interval - (time.monotonic() - begun), wake=self._wake)

    async def read_units(self) -> None:
        """One reading of both units, exported; tells the link whether systemd answered."""
        watch = self.target.watch
        if watch is None:
            return
        connection = self._link.connection()
        readings = await watch.sample(connection, self._clock)
        if connection is not None:
            self._link.answered(at_all=not watch.unanswered)
        failed = sum(1 for reading in readings if reading.status is None)
        now = self._clock()
        self._recorder.record_units(self.target.name, watch.latest(now), failed_reads=failed)
        observed = watch.observe(now)
        if observed.ok:  # an unreadable moment says nothing: it neither starts nor ends one
            crash_loop = bool(observed.points)
            if crash_loop and not self._crash_looping:  # the most urgent signal: evaluate now
                log.warning(
                    f"crash loop seen on {self._link.name}",
                    target=self.target.name,
                    unit=watch.primary,
                )
                self.wake()
            self._crash_looping = crash_loop

    async def follow_changes(self, stop: asyncio.Event) -> None:
        """Where the manager says when a unit changes (Docker's event stream), read both
        units the moment the primary or the fallback dies or starts: a crash loop is then
        seen at its third death, not at the next reading. Without such a manager, nothing.
        A stream that keeps breaking is followed again less and less often (up to every
        ``RECONNECT_EVERY``), and said once per outage, not at every attempt."""
        watch = self.target.watch
        if watch is None:
            return
        broken = 0  # streams in a row that broke, or ended within a few seconds
        while not stop.is_set():
            connection: object = self._link.connection()  # any manager; some say more
            if not isinstance(connection, units.Changes):
                if connection is not None:  # systemd: the readings are all there is
                    return
                await _pause(stop, RECONNECT_EVERY)
                continue
            began = time.monotonic()
            following = asyncio.ensure_future(self._follow(connection, watch.units))
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([following, stopping], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (following, stopping):
                    task.cancel()
                await asyncio.gather(following, stopping, return_exceptions=True)
            if stop.is_set():
                return
            failed = following.exception() if not following.cancelled() else None
            short = time.monotonic() - began < STREAM_LASTED
            if not short:  # it served a while: whatever ended it starts a new outage
                broken = 0
            if failed is not None or short:
                broken += 1
                if broken == 1:
                    log.warning(
                        f"{self._link.name} events lost; following again",
                        target=self.target.name,
                        error=str(failed) if failed is not None else "the stream ended",
                    )
            await _pause(stop, min(RECONNECT_EVERY, 2.0 ** max(broken - 1, 0)))

    async def _follow(self, connection: units.Changes, names: tuple[str, ...]) -> None:
        async with contextlib.aclosing(connection.changes(names)) as changes:  # its session too
            async for name in changes:
                log.info(f"{self._link.name} event", target=self.target.name, unit=name)
                await self.read_units()

    async def watch(self, stop: asyncio.Event) -> None:
        """Read both units every watch interval; export them for Prometheus."""
        watch = self.target.watch
        if watch is None:
            return
        while not stop.is_set():
            begun = time.monotonic()
            try:
                await self.read_units()
            except Exception:  # the watch outlives any one bad reading
                log.exception("systemd watch failed", target=self.target.name)
            await _pause(stop, watch.settings.interval - (time.monotonic() - begun))


async def _probe(
    prober: probes.Prober,
    recorder: telemetry.Recorder,
    store: journal.Journal,
    clock: Callable[[], float],
    stop: asyncio.Event,
) -> None:
    """One round of synthetic probes every probe interval; export what they saw, and journal
    when the service turns from passing to failing or back (the report's downtime)."""
    interval = prober.settings.interval
    while not stop.is_set():
        begun = time.monotonic()
        try:
            results = await prober.round()
            recorder.record_probes(prober.target, results)
            turn = probes.health(results)
            if turn is not None:
                healthy, detail = turn
                await asyncio.to_thread(
                    store.probe_change, prober.target, at=clock(), healthy=healthy, detail=detail
                )
        except Exception:  # the probes outlive any one bad round
            log.exception("probe round failed", target=prober.target)
        await _pause(stop, interval - (time.monotonic() - begun))


def _finished(
    runs: set[asyncio.Task[runbook.Outcome | None]],
    target: pipeline.Target,
    recorder: telemetry.Recorder,
    on_end: Callable[[runbook.Outcome], None] | None = None,
) -> Callable[[asyncio.Task[runbook.Outcome | None]], None]:
    def done(task: asyncio.Task[runbook.Outcome | None]) -> None:
        runs.discard(task)
        if task.cancelled():
            log.error("rollback cancelled at shutdown; the next start reconciles it")
        elif isinstance(task.exception(), journal.RunInFlight):
            log.warning(
                "rollback already in flight in another process", error=str(task.exception())
            )
        elif task.exception() is not None:
            log.error("rollback could not run", error=repr(task.exception()))
        elif (outcome := task.result()) is None:
            log.debug("run in flight belongs to a living process", target=target.name)
        else:
            recorder.record_run(target.name, outcome.status)
            log.warning(
                "rollback ended", run=outcome.run_id, status=outcome.status, detail=outcome.detail
            )
            if on_end is not None:
                on_end(outcome)

    return done


source_budget = config.source_budget  # the tick's budget; `status` judges staleness by it


async def _warm_start(target: pipeline.Target, settings: config.Settings, now: float) -> None:
    """Rebuild the alert memory from recent history so a restart keeps ``for`` timers."""
    if not isinstance(target.source, prometheus.PrometheusSource):
        return  # no history to read: the timers start afresh
    interval = settings.interval
    window = backtest.lookback(target.rules, interval)
    try:
        async with asyncio.timeout(source_budget(settings)):
            replayed = await backtest.replay(
                target.source,
                target.settings,
                target.rules,
                target.policy,
                start=now - window,
                end=now - interval,
                step=interval,
                state=target.state,
            )
    except Exception:  # best effort: an empty memory is the safe default
        log.exception("warm start failed; starting with empty alert memory", target=target.name)
        return
    target.memory = replayed.memory
    log.info("warm start", target=target.name, window_seconds=window, queries=replayed.queries)


async def _stop_watching(guards: list[Guard]) -> None:
    for guard in guards:
        await guard.stop_watching()

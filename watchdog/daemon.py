"""Wiring and supervision: build everything from the settings, run one loop per target.

The shape follows kopf's reactor: root tasks in an ``asyncio.TaskGroup``, a stop event set by
SIGTERM/SIGINT, and every tick bounded by a timeout so a hung Prometheus never stalls the loop.
A tick that fails is logged and counted, and the loop goes on: the watchdog must keep watching
when its sources misbehave -- and with no data it reports ``inconclusive``, it never acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from watchdog import backtest, config, errors, journal, model, pipeline, rules, telemetry
from watchdog.executor import runbook
from watchdog.executor.systemd import Systemd, SystemdError
from watchdog.sources import prometheus

log = structlog.get_logger("watchdog.daemon")


@dataclass(frozen=True, slots=True)
class Running:
    """Handles a caller (or a test) may want while the daemon runs."""

    targets: list[pipeline.Target]
    metrics_port: int
    journal: journal.Journal


async def run(
    settings: config.Settings,
    *,
    stop: asyncio.Event | None = None,  # set by tests; signals set it otherwise
    clock: Callable[[], float] = time.time,
    started: Callable[[Running], None] | None = None,  # tests learn ports and handles
) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop if stop is not None else asyncio.Event()
    with _exclusive(settings.state_dir):
        await _run(settings, stop=stop, clock=clock, started=started)


async def _run(
    settings: config.Settings,
    *,
    stop: asyncio.Event,
    clock: Callable[[], float],
    started: Callable[[Running], None] | None,
) -> None:
    log.info("starting", state_dir=str(settings.state_dir), mode=settings.mode.value)
    store = journal.Journal.open(settings.state_dir)
    recorder = telemetry.Recorder()
    source = prometheus.PrometheusSource(settings.prometheus)
    host, port = settings.listen.host, settings.listen.port
    try:
        server = telemetry.MetricsServer(recorder, host, port)
    except OSError as exc:
        store.close()
        source.close()
        raise errors.InputError(f"cannot serve /metrics on {host}:{port}: {exc.strerror}") from None
    policy = settings.policy.to_policy()
    systemd: Systemd | None = None
    runs: set[asyncio.Task[runbook.Outcome]] = set()
    try:
        systemd = await _connect_systemd(settings)
        targets = []
        for target_settings in settings.targets:
            rule_set = rules.load(target_settings.rules)
            state = await asyncio.to_thread(store.target_state, target_settings.name)
            target = pipeline.Target(
                settings=target_settings,
                rules=rule_set.rules,
                policy=policy,
                mode=settings.mode,
                source=source,
                store=store,
                recorder=recorder,
                state=state,
                clock=clock,
            )
            if systemd is not None:
                await _reconcile(target_settings, store, systemd, settings, clock)
                target.state = await asyncio.to_thread(store.target_state, target_settings.name)
                target.launch = _launcher(
                    target_settings, store, systemd, settings, runs, clock, recorder
                )
            await _warm_start(target, settings, clock())
            targets.append(target)
        log.info(
            "started",
            mode=settings.mode.value,
            targets=[t.name for t in targets],
            prometheus=settings.prometheus.url,
            metrics=f"http://{settings.listen.host}:{server.port}/metrics",
            journal=str(store.path),
        )
        if started is not None:
            started(Running(targets=targets, metrics_port=server.port, journal=store))
        with _signals_set(stop):
            async with asyncio.TaskGroup() as group:
                for target in targets:
                    group.create_task(_loop(target, settings, stop), name=f"loop:{target.name}")
                await stop.wait()
        if runs:  # let a rollback in flight finish; reconcile covers the rest after a restart
            await asyncio.wait(list(runs), timeout=_longest_run(settings))
    finally:
        for task in list(runs):
            task.cancel()
        if runs:
            await asyncio.wait(list(runs), timeout=10.0)
        server.close()
        source.close()
        if systemd is not None:
            systemd.close()
        store.close()
        log.info("stopped")


def _longest_run(settings: config.Settings) -> float:
    """How long a run can take: three systemd jobs, the verification and some slack."""
    return max(3 * t.runbook.job_timeout + t.runbook.verify.timeout + 30 for t in settings.targets)


async def _connect_systemd(settings: config.Settings) -> Systemd | None:
    """systemd is needed to act (auto mode) and to reconcile; observe mode can do without."""
    job_timeout = max(t.runbook.job_timeout for t in settings.targets)
    try:
        systemd = await Systemd.connect(settings.systemd.bus, call_timeout=job_timeout)
    except SystemdError as exc:
        if settings.mode is model.Mode.AUTO:
            log.error("systemd unreachable: rollbacks cannot run", error=str(exc))  # noqa: TRY400
        else:
            log.info("systemd unreachable", error=str(exc))
        return None
    log.info("connected to systemd", bus=settings.systemd.bus)
    return systemd


async def _reconcile(
    target: config.TargetSettings,
    store: journal.Journal,
    systemd: Systemd,
    settings: config.Settings,
    clock: Callable[[], float],
) -> None:
    log.info("reconciling", target=target.name)
    outcome = await runbook.reconcile(target, store, systemd, settings.state_dir, clock=clock)
    if outcome is not None:
        log.warning(
            "reconciled",
            target=target.name,
            run=outcome.run_id,
            status=outcome.status,
            detail=outcome.detail,
        )


def _launcher(
    target: config.TargetSettings,
    store: journal.Journal,
    systemd: Systemd,
    settings: config.Settings,
    runs: set[asyncio.Task[runbook.Outcome]],
    clock: Callable[[], float],
    recorder: telemetry.Recorder,
) -> pipeline.Launcher:
    """Start the runbook as its own task, so evaluation keeps ticking while it runs."""

    def launch(decided: model.Decision, incident: int | None) -> str:
        if any(task.get_name() == f"rollback:{target.name}" for task in runs):
            return "joined the run in flight"
        task = asyncio.create_task(
            runbook.start_run(
                target,
                store,
                systemd,
                settings.state_dir,
                trigger="auto",
                initiated_by="rollback-watchdog",
                reason=decided.reason,
                incident_id=incident,
                clock=clock,
            ),
            name=f"rollback:{target.name}",
        )
        runs.add(task)
        task.add_done_callback(_finished(runs, target.name, recorder))
        return "rollback started"

    return launch


def _finished(
    runs: set[asyncio.Task[runbook.Outcome]], target: str, recorder: telemetry.Recorder
) -> Callable[[asyncio.Task[runbook.Outcome]], None]:
    def done(task: asyncio.Task[runbook.Outcome]) -> None:
        runs.discard(task)
        if task.cancelled():
            log.error("rollback cancelled at shutdown; the next start reconciles it")
        elif isinstance(task.exception(), journal.RunInFlight):
            log.warning(
                "rollback already in flight in another process", error=str(task.exception())
            )
        elif task.exception() is not None:
            log.error("rollback could not run", error=repr(task.exception()))
        else:
            outcome = task.result()
            recorder.record_run(target, outcome.status)
            log.warning(
                "rollback ended", run=outcome.run_id, status=outcome.status, detail=outcome.detail
            )

    return done


def source_budget(settings: config.Settings) -> float:
    """Seconds the sources get per tick: every attempt's timeout plus the capped backoff."""
    prom = settings.prometheus
    return prom.timeout * prom.retries + 4.0 * (prom.retries - 1) + 1.0


async def _loop(target: pipeline.Target, settings: config.Settings, stop: asyncio.Event) -> None:
    """Tick every ``interval`` until stopped; a failed tick never ends the loop."""
    interval = settings.interval
    budget = source_budget(settings)
    while not stop.is_set():
        begun = time.monotonic()
        try:
            async with asyncio.timeout(budget + 30.0):  # last resort: the tick bounds itself
                await target.tick(budget=budget)
        except TimeoutError:
            target.recorder.source_errors.labels(target.name, "tick_timeout").inc()
            log.error("tick timed out", target=target.name, budget_seconds=budget)  # noqa: TRY400 - no traceback to add
        except Exception:  # the loop outlives any one bad tick
            target.recorder.source_errors.labels(target.name, "tick_failed").inc()
            log.exception("tick failed", target=target.name)
        remaining = interval - (time.monotonic() - begun)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, remaining)):
                await stop.wait()


async def _warm_start(target: pipeline.Target, settings: config.Settings, now: float) -> None:
    """Rebuild the alert memory from recent history so a restart keeps ``for`` timers."""
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


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    """One daemon per state directory: two would act on the same journal."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = (state_dir / "daemon.lock").open("a+")
    except OSError as exc:
        raise errors.InputError(f"cannot use state_dir {state_dir}: {exc.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.InputError(
                f"another rollback-watchdog is running with state_dir {state_dir}"
            ) from None
        yield


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)

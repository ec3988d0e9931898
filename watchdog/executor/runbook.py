"""Running the runbook: its steps in order, journaled, resumed or reconciled after a crash.

preflight -> backup -> snapshot -> stop-primary -> carry-config -> start-fallback -> verify
-> finish, as in the runbook (``docs/architecture.md``). Each step is a ``Step`` with
a ``run`` (do it) and a ``check`` (is its effect already in place?). The runner journals each
step before it starts and after it ends, so a crash at any moment leaves a true record; on the
next start ``reconcile`` resumes the run, skipping every step whose ``check`` says it is done --
a stop or a start is never repeated blindly -- or, if the run is too old to resume, marks it
interrupted and says so loudly.

Safety rules: nothing is stopped unless preflight passed; a fallback that fails to start or
verify brings the primary back (``restore_primary``, default) or is left as it is (``leave``);
every run that touched a unit ends with the target disarmed, so nothing ever switches twice or
switches back by itself. One process executes a run (a lock file); one run per target is in
flight (the journal's unique index); a second trigger joins the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import structlog

from watchdog import config, credentials, journal, model
from watchdog.errors import ManagerError
from watchdog.executor.steps import (
    _SWITCH_CONTINUES,
    _TOUCHING,
    STEPS,
    Context,
    Step,
    StepFailed,
    _flagged,
    _remove_flag,
    finish,
    plan,
    policies_before,
    preflight,
)
from watchdog.executor.units import Units
from watchdog.model import RunStatus, StepStatus, UnitStatus

__all__ = [
    "STEPS",
    "Context",
    "Observer",
    "Outcome",
    "Step",
    "StepEvent",
    "StepFailed",
    "execute",
    "plan",
    "preflight",
    "reconcile",
    "restore_primary",
    "run_lock",
    "start_run",
]

log = structlog.get_logger("watchdog.executor")

StepEvent = model.StepEvent
Outcome = model.RunOutcome


Observer = Callable[[StepEvent], None]


async def _finish_failure(
    target: config.TargetSettings,
    store: journal.Journal,
    systemd: Units,
    state_dir: Path,
    run_id: int,
    steps: Sequence[journal.StepRow],
    clock: Callable[[], float],
) -> Outcome:
    """A crash came after a step failed: do (or redo) the failure handling, nothing else."""
    restored = any(s.name == "restore-primary" and s.status == StepStatus.OK for s in steps)
    failed = next(
        (s for s in steps if s.status == StepStatus.FAILED and s.name != "restore-primary"),
        steps[-1],
    )
    if not _touched(steps):
        outcome = f"{failed.name} failed, nothing was stopped: {failed.detail}"
        return _close(store, run_id, RunStatus.ABORTED, outcome, clock, disarm=False)
    if failed.name == "finish":  # verified; only closing the run had failed
        outcome = f"fallback verified; the run is closed after a restart ({failed.detail})"
        return _close(store, run_id, RunStatus.SUCCEEDED, outcome, clock, disarm=True)
    if restored or target.runbook.on_fallback_failure == "leave":
        status = RunStatus.RESTORED if restored else RunStatus.FAILED
        outcome = f"{failed.name} had failed ({failed.detail}); closed after a restart"
        return _close(store, run_id, status, outcome, clock, disarm=True)
    ctx = _context(target, systemd, store, state_dir, run_id, clock, password="")
    try:
        # a resumed run's preflight can fail after the switch began: handle it as a touching step
        step = next(
            s for s in STEPS if s.name == (failed.name if failed.name in _TOUCHING else "verify")
        )
        return await _failed(ctx, step, max(s.seq for s in steps), failed.detail, lambda e: None)
    finally:
        await ctx.http.aclose()


# -- running ----------------------------------------------------------------------------------


def _safe(observer: Observer | None) -> Observer:
    """The observer, made harmless: a live view that fails (a closed pipe, a stream that cannot
    encode) must never fail a step or skip the restore after a failure. It is told once and
    then left alone; the journal and the log keep the run."""
    if observer is None:
        return lambda event: None
    broken = False

    def tell(event: StepEvent) -> None:
        nonlocal broken
        if broken:
            return
        try:
            observer(event)
        except Exception as exc:
            broken = True
            log.warning("step not shown", step=event.name, error=f"{type(exc).__name__}: {exc}")

    return tell


def _ticker(
    notify: Observer, seq: int, name: str, total: int, started: float
) -> Callable[[str], None]:
    """What a step says it waits for, as a progress event of that step (``notify`` is safe)."""

    def waiting(text: str) -> None:
        seconds = time.monotonic() - started
        notify(StepEvent(seq, name, StepStatus.RUNNING, text, seconds, total, progress=True))

    return waiting


async def execute(
    ctx: Context,
    *,
    resume: bool = False,
    observer: Observer | None = None,
    steps: Sequence[Step] = STEPS,
) -> Outcome:
    """Run the steps in order, journaling each; on resume skip those already done."""
    notify = _safe(observer)
    pause, total = ctx.runbook.step_pause, len(steps)
    for seq, step in enumerate(steps, start=1):
        if ctx.halt is not None and ctx.halt.is_set() and step.name not in _SWITCH_CONTINUES:
            return _halted(ctx, step.name)
        if resume and await _safe_check(step, ctx):
            step_id = ctx.journal.step_started(ctx.run_id, seq, step.name, at=ctx.clock())
            ctx.journal.step_finished(step_id, StepStatus.SKIPPED, "already done", at=ctx.clock())
            notify(StepEvent(seq, step.name, StepStatus.SKIPPED, "already done", 0.0, total))
            continue
        step_id = ctx.journal.step_started(ctx.run_id, seq, step.name, at=ctx.clock())
        ctx.current_step = step_id
        notify(StepEvent(seq, step.name, StepStatus.RUNNING, "", 0.0, total))
        log.info("step started", run=ctx.run_id, step=step.name)
        started = time.monotonic()
        ctx.waiting = _ticker(notify, seq, step.name, total, started)
        try:
            if pause:
                await asyncio.sleep(pause)  # drills: time to watch (or kill) each step
            detail, status = await step.run(ctx), StepStatus.OK
            if pause and step.run is not finish:
                await asyncio.sleep(pause)  # ... and the moment after its effect, unjournaled
        except (StepFailed, ManagerError) as exc:
            detail, status = str(exc), StepStatus.FAILED
            if isinstance(exc, ManagerError) and _connection_lost(ctx):
                detail = f"interrupted: the {ctx.systemd.manager} connection was lost: {exc}"
                status = StepStatus.INTERRUPTED
        except Exception as exc:  # a bug or the unexpected: journaled, never silent
            detail, status = f"{type(exc).__name__}: {exc}", StepStatus.FAILED
        seconds = time.monotonic() - started
        if step.run is not finish or status is not StepStatus.OK:  # finish journals itself
            ctx.journal.step_finished(step_id, status, detail, at=ctx.clock())
        notify(StepEvent(seq, step.name, status, detail, seconds, total))
        log.info("step finished", run=ctx.run_id, step=step.name, status=status, detail=detail)
        if status is StepStatus.INTERRUPTED:
            return _left_running(ctx, step.name)
        if status is StepStatus.FAILED:
            return await _failed(ctx, step, seq, detail, notify)
    return Outcome(ctx.run_id, RunStatus.SUCCEEDED, "fallback verified")


def _halted(ctx: Context, step: str) -> Outcome:
    """The watchdog is stopping: the step before finished and was journaled; the run stays
    open and the next start resumes it (within ``resume_within``) from ``step``."""
    detail = f"the watchdog stopped before {step}; the run resumes when it starts again"
    log.warning("rollback paused for shutdown", run=ctx.run_id, step=step)
    return Outcome(ctx.run_id, RunStatus.INTERRUPTED, detail)


def _connection_lost(ctx: Context) -> bool:
    return not getattr(ctx.systemd, "connected", True)


def _left_running(ctx: Context, step: str) -> Outcome:
    """The manager went away mid-step (the bus dropped, the engine restarted): what it did is
    unknown until it can be read again, so the run stays open for the reconcile (the daemon
    adopts it once reconnected) -- never a restore attempted blind, never a run closed as
    failed that may just have succeeded."""
    manager = ctx.systemd.manager
    detail = f"{manager} connection lost in {step}; the run resumes once {manager} is reachable"
    log.error("rollback interrupted", run=ctx.run_id, step=step, detail=detail)
    return Outcome(ctx.run_id, RunStatus.INTERRUPTED, detail)


async def _safe_check(step: Step, ctx: Context) -> bool:
    try:
        return await step.check(ctx)
    except (ManagerError, OSError):
        return False


async def _failed(ctx: Context, step: Step, seq: int, detail: str, notify: Observer) -> Outcome:
    """A step failed: abort cleanly before the switch; after it, restore or leave.

    Whether the switch began is read from the journal, not from the failing step: a resumed
    run's preflight can fail after its stop-primary was done.
    """
    at = ctx.clock()
    if step.run is finish:
        # The fallback was verified; only the journal write failed. Never switch back for that.
        outcome = f"fallback verified, but the run could not be closed: {detail}"
        log.critical("rollback done, journal not closed", run=ctx.run_id, detail=detail)
        return Outcome(ctx.run_id, RunStatus.FAILED, outcome)
    if not step.touches_units and not _touched(ctx.journal.steps(ctx.run_id)):
        outcome = f"{step.name} failed, nothing was stopped: {detail}"
        ctx.journal.finish_run(ctx.run_id, RunStatus.ABORTED, outcome, at=at)
        log.error("rollback aborted", run=ctx.run_id, step=step.name, detail=detail)
        return Outcome(ctx.run_id, RunStatus.ABORTED, outcome)
    if ctx.runbook.on_fallback_failure == "restore_primary":
        step_id = ctx.journal.step_started(ctx.run_id, seq + 1, "restore-primary", at=ctx.clock())
        total = seq + 1
        notify(StepEvent(seq + 1, "restore-primary", StepStatus.RUNNING, "", 0.0, total))
        started = time.monotonic()
        try:
            restored = await restore_primary(ctx)
            status, result = StepStatus.OK, restored
        except Exception as exc:  # whatever it was, the journal and the operator must know
            status, result = StepStatus.FAILED, f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ManagerError) and _connection_lost(ctx):
                result = f"interrupted: the {ctx.systemd.manager} connection was lost: {exc}"
                status = StepStatus.INTERRUPTED
        ctx.journal.step_finished(step_id, status, result, at=ctx.clock())
        seconds = time.monotonic() - started
        notify(StepEvent(seq + 1, "restore-primary", status, result, seconds, total))
        if status is StepStatus.INTERRUPTED:  # the reconcile finishes the restore
            return _left_running(ctx, "restore-primary")
        run_status = RunStatus.RESTORED if status is StepStatus.OK else RunStatus.FAILED
        outcome = f"{step.name} failed ({detail}); primary restore {status}: {result}"
    else:
        run_status = RunStatus.FAILED
        outcome = f"{step.name} failed ({detail}); left as it is"
    # Touched units: disarm, so the watchdog never switches again on its own.
    ctx.journal.finish_run(
        ctx.run_id, run_status, outcome, at=ctx.clock(), disarm=True, close_incident=True
    )
    log.critical("rollback failed", run=ctx.run_id, status=run_status, outcome=outcome)
    return Outcome(ctx.run_id, run_status, outcome)


async def restore_primary(ctx: Context) -> str:
    """A degraded service beats none: fallback off, primary back on (its restart policy as it
    was, read before anything here can fail)."""
    fallback, primary = ctx.target.fallback.unit, ctx.target.primary.unit
    before = policies_before(ctx)
    early = not _flagged(ctx) and ctx.systemd.disable_first  # as stop_primary does
    if early:
        await ctx.systemd.disable([fallback])
    stopped = await ctx.systemd.stop(fallback)
    if not (await ctx.systemd.status(fallback)).stopped:  # never two servers on one port
        if early:  # it still serves: it stays the boot choice
            await ctx.systemd.enable([fallback])
        raise StepFailed(f"{fallback} did not stop (job {stopped}): primary left stopped")
    if _flagged(ctx):
        _remove_flag(ctx)  # the primary's ConditionPathExists=! must hold again
        made = "flag removed"
    else:
        if not early:
            await ctx.systemd.disable([fallback])
        await ctx.systemd.enable([primary], as_before=before)
        await ctx.systemd.reload()
        made = "disabled/enabled"
    result = await ctx.systemd.start(primary)
    status = await ctx.systemd.status(primary)
    if not status.active:
        raise StepFailed(f"{primary} did not come back: job {result}, {status.active_state}")
    return f"{fallback} stopped, {primary} started again ({made})"


# -- locking, starting, reconciling -----------------------------------------------------------


@contextlib.contextmanager
def run_lock(state_dir: Path, target: str) -> Iterator[bool]:
    """Hold the target's run lock if free (True), else yield False: another process runs it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle: IO[str] = (state_dir / f"run-{target}.lock").open("a+")
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield True


async def reconcile(
    target: config.TargetSettings,
    store: journal.Journal,
    systemd: Units,
    state_dir: Path,
    *,
    clock: Callable[[], float] = time.time,
    observer: Observer | None = None,
    halt: asyncio.Event | None = None,
) -> Outcome | None:
    """Finish or close a run that a crash left unfinished; None if there is none (or if its
    process is alive and still running it)."""
    with run_lock(state_dir, target.name) as mine:
        if not mine:
            return None
        return await _reconcile_locked(target, store, systemd, state_dir, clock, observer, halt)


async def _reconcile_locked(
    target: config.TargetSettings,
    store: journal.Journal,
    systemd: Units,
    state_dir: Path,
    clock: Callable[[], float],
    observer: Observer | None,
    halt: asyncio.Event | None = None,
) -> Outcome | None:
    """With the run lock held: the run in the journal has no living process.

    Steps journaled as running were interrupted and are marked so; the real unit states are
    read. A run that restored the primary, or whose step really failed, never goes forward again:
    it is closed as interrupted. A run younger than ``resume_within`` resumes, skipping every step
    already done. An older one is closed: interrupted (and the target disarmed) if it had
    touched a unit, aborted if not.
    """
    run = store.running_run(target.name)  # read under the lock: it may just have ended
    if run is None:
        return None
    for step in store.steps(run.id):
        if step.status == StepStatus.RUNNING:
            store.step_finished(
                step.id,
                StepStatus.INTERRUPTED,
                "interrupted: the watchdog stopped here",
                at=clock(),
            )
    steps = store.steps(run.id)
    primary = await _status_or_none(systemd, target.primary.unit)
    fallback = await _status_or_none(systemd, target.fallback.unit)
    seen = f"{_state(primary)}; {_state(fallback)}"
    store.remember(run.id, "reconciled", seen)
    touched = _touched(steps)
    restores = [s for s in steps if s.name == "restore-primary"]
    failures = [s for s in steps if s.status == StepStatus.FAILED]
    if restores or failures:
        # The switch had failed: never go forward again. Finish bringing the primary back.
        return await _finish_failure(target, store, systemd, state_dir, run.id, steps, clock)
    if clock() - run.started_at > target.runbook.resume_within:
        if touched:
            outcome = f"interrupted and too old to resume; left as found: {seen}"
            return _close(store, run.id, RunStatus.INTERRUPTED, outcome, clock, disarm=True)
        outcome = f"interrupted before touching a unit and too old to resume: {seen}"
        return _close(store, run.id, RunStatus.ABORTED, outcome, clock, disarm=False)
    log.warning("resuming interrupted rollback", run=run.id, units=seen)
    ctx = _context(
        target,
        systemd,
        store,
        state_dir,
        run.id,
        clock,
        password=credentials.service_secret(
            target.runbook.password_file, target.runbook.password_env
        ),
    )
    ctx.halt = halt
    try:
        return await execute(ctx, resume=True, observer=observer)
    finally:
        await ctx.http.aclose()


def _context(
    target: config.TargetSettings,
    systemd: Units,
    store: journal.Journal,
    state_dir: Path,
    run_id: int,
    clock: Callable[[], float],
    *,
    password: str,
) -> Context:
    return Context(
        target=target,
        systemd=systemd,
        store=store,
        state_dir=state_dir,
        run_id=run_id,
        password=password,
        clock=clock,
    )


def _touched(steps: Sequence[journal.StepRow]) -> bool:
    """Whether a run has started any step that changes a unit (its effect may be in place)."""
    return any(step.name in _TOUCHING or step.name == "restore-primary" for step in steps)


def _close(
    store: journal.Journal,
    run_id: int,
    status: RunStatus,
    outcome: str,
    clock: Callable[[], float],
    *,
    disarm: bool,
) -> Outcome:
    store.finish_run(run_id, status, outcome, at=clock(), disarm=disarm, close_incident=disarm)
    log.critical("rollback not resumed", run=run_id, status=status, outcome=outcome)
    return Outcome(run_id, status, outcome)


async def _status_or_none(systemd: Units, unit: str) -> UnitStatus | None:
    try:
        return await systemd.status(unit)
    except Exception:  # reconciling must go on; the state then reads "unknown"
        return None


def _state(status: UnitStatus | None) -> str:
    if status is None:
        return "unknown unit"
    return f"{status.name} {status.active_state} ({status.unit_file_state})"


async def start_run(
    target: config.TargetSettings,
    store: journal.Journal,
    systemd: Units,
    state_dir: Path,
    *,
    trigger: model.Trigger,
    initiated_by: str,
    reason: str,
    incident_id: int | None,
    clock: Callable[[], float] = time.time,
    observer: Observer | None = None,
    halt: asyncio.Event | None = None,
) -> Outcome:
    """Open a run and execute it (up to the next safe point once ``halt`` is set).

    ``journal.RunInFlight`` if another living process runs one. A run left behind by a dead
    process (its lock is free) is reconciled first, under this lock; its outcome is returned, as
    it carried the same intent.
    """
    password = credentials.service_secret(  # before anything is journaled
        target.runbook.password_file, target.runbook.password_env
    )
    with run_lock(state_dir, target.name) as mine:
        if not mine:
            running = store.running_run(target.name)
            raise journal.RunInFlight(running.id if running else -1)
        if store.running_run(target.name) is not None:
            orphan = await _reconcile_locked(
                target, store, systemd, state_dir, clock, observer, halt
            )
            if orphan is not None:
                return orphan
        run_id = store.open_run(
            target.name,
            incident_id=incident_id,
            trigger=trigger,
            initiated_by=initiated_by,
            reason=reason,
            at=clock(),
        )
        log.warning(
            "rollback started",
            run=run_id,
            target=target.name,
            trigger=trigger,
            by=initiated_by,
            reason=reason,
        )
        ctx = _context(target, systemd, store, state_dir, run_id, clock, password=password)
        ctx.halt = halt
        try:
            return await execute(ctx, observer=observer)
        finally:
            await ctx.http.aclose()

"""The operators' rollback procedure as an ordered list of small, journaled steps.

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
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import structlog

from watchdog import config, credentials, errors, journal, model, profiles
from watchdog.executor import verify
from watchdog.executor.systemd import SystemdError, Unreachable
from watchdog.executor.units import Units
from watchdog.model import RunStatus, StepStatus, UnitStatus
from watchdog.profiles import base

log = structlog.get_logger("watchdog.executor")


StepFailed = errors.StepFailed


@dataclass(slots=True)
class Context:
    """Everything the steps share during one run."""

    target: config.TargetSettings
    systemd: Units  # the service manager (systemd), or Unreachable: every call says why
    store: journal.Journal | None  # None for a dry run: it writes nothing
    state_dir: Path
    run_id: int
    password: str
    clock: Callable[[], float] = time.time
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=5.0))
    current_step: int = 0  # the journal row of the step being run
    halt: asyncio.Event | None = None  # set at shutdown: stop at the next safe point

    @property
    def runbook(self) -> config.RunbookSettings:
        return self.target.runbook

    @property
    def service(self) -> base.Service:
        """The target's service as its profile asks it."""
        return profiles.get(self.target.profile).bind(self.target, self.password)

    @property
    def journal(self) -> journal.Journal:
        if self.store is None:
            raise StepFailed("a dry run does not change anything")
        return self.store

    def facts(self) -> dict[str, Any]:
        return self.journal.run(self.run_id).facts

    def remember(self, key: str, value: Any) -> None:
        self.journal.remember(self.run_id, key, value)

    def carried_paths(self) -> tuple[Path, Path] | None:
        name = self.runbook.carry_config
        source, destination = self.target.primary.config_dir, self.target.fallback.config_dir
        if name is None or source is None or destination is None:
            return None
        return source / name, destination / name


@dataclass(frozen=True, slots=True)
class Step:
    """One step: ``run`` does it and says what it did; ``check`` says it is already done."""

    name: str
    run: Callable[[Context], Awaitable[str]]
    check: Callable[[Context], Awaitable[bool]]
    touches_units: bool = False  # from here on, a failure has changed the service


StepEvent = model.StepEvent
Outcome = model.RunOutcome


Observer = Callable[[StepEvent], None]


# -- the steps --------------------------------------------------------------------------------


async def _never(ctx: Context) -> bool:
    return False


async def preflight(ctx: Context) -> str:
    """Everything the fallback needs, checked before anything is stopped."""
    problems: list[str] = []
    notes: list[str] = []
    if isinstance(ctx.systemd, Unreachable):
        problems.append(ctx.systemd.reason)
    for side, settings in (("fallback", ctx.target.fallback), ("primary", ctx.target.primary)):
        if isinstance(ctx.systemd, Unreachable):
            break
        try:
            status = await ctx.systemd.status(settings.unit)
        except SystemdError as exc:
            problems.append(f"{side} unit {settings.unit}: {exc}")
            continue
        if status.load_state != "loaded":
            problems.append(
                f"{side} unit {settings.unit} is {status.load_state} (is its unit file installed?)"
            )
        else:
            notes.append(f"{settings.unit} {status.active_state}")
    binary = ctx.target.fallback.binary
    if binary is not None and not binary.is_file():
        problems.append(f"fallback binary {binary} does not exist")
    found = await ctx.service.preflight()
    problems += found.problems
    notes += found.notes
    carried = ctx.carried_paths()
    if carried is not None:
        source, destination = carried
        if not source.is_file() and not destination.is_file():
            problems.append(f"no config to carry over: neither {source} nor {destination} exists")
    unreadable = _unreadable(ctx.target.primary.config_dir)
    if unreadable:  # the backup would fail mid-run: say so before anything is stopped
        problems.append(f"cannot read {unreadable} for the backup (add this user to its group)")
    flag = ctx.runbook.flag_file
    if ctx.runbook.persistence == "flag-file" and flag is not None:
        if flag.exists() and not _flag_is_ours(ctx):  # ours: this run, resumed
            problems.append(
                f"the flag file {flag} is already there: the fallback is already the boot choice "
                "(remove it when the primary is back in service)"
            )
        elif not os.access(flag.parent, os.W_OK | os.X_OK):
            problems.append(f"cannot write the flag file in {flag.parent}")
        else:
            notes.append(f"flag file {flag} writable")
    if problems:
        raise StepFailed("; ".join(problems))
    return ", ".join(notes)


def _unreadable(folder: Path | None) -> Path | None:
    """The first file or directory under ``folder`` this process cannot read, if any."""
    if folder is None or not folder.is_dir():
        return None
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        if not os.access(base, os.R_OK | os.X_OK):
            return base
        for name in files:
            if not os.access(base / name, os.R_OK):
                return base / name
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
    return None


def _flag_is_ours(ctx: Context) -> bool:
    """Whether the flag file was written by this very run (a resumed run finds its own)."""
    flag = ctx.runbook.flag_file
    try:
        return flag is not None and flag.read_text().startswith(f"{_FLAG_PREFIX}{ctx.run_id}:")
    except OSError:
        return False


def _flagged(ctx: Context) -> bool:
    """Whether the switch persists by a flag file (the unprivileged mode)."""
    return ctx.runbook.persistence == "flag-file" and ctx.runbook.flag_file is not None


def _write_flag(ctx: Context) -> None:
    """The fallback is the boot choice: the flag exists (and is on disk) before its start."""
    flag = ctx.runbook.flag_file
    assert flag is not None  # noqa: S101 - _flagged() said so
    try:
        with flag.open("w") as handle:
            handle.write(
                f"run {ctx.run_id}: {ctx.target.fallback.unit} replaces {ctx.target.primary.unit}\n"
            )
            handle.flush()
            os.fsync(handle.fileno())
        directory = os.open(flag.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise StepFailed(f"cannot write the flag file {flag}: {exc.strerror}") from None


def _remove_flag(ctx: Context) -> None:
    flag = ctx.runbook.flag_file
    assert flag is not None  # noqa: S101 - _flagged() said so
    try:
        flag.unlink(missing_ok=True)
    except OSError as exc:
        raise StepFailed(f"cannot remove the flag file {flag}: {exc.strerror}") from None


async def backup(ctx: Context) -> str:
    """Config directory and primary unit file into ``backups/emergency-YYYYmmdd-HHMMSS/``."""
    stamp = datetime.fromtimestamp(ctx.clock(), tz=UTC).strftime("%Y%m%d-%H%M%S")
    folder = ctx.state_dir / "backups" / f"emergency-{stamp}"
    copied: list[str] = []
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        config_dir = ctx.target.primary.config_dir
        if config_dir is not None and config_dir.is_dir():
            shutil.copytree(config_dir, folder / "config", dirs_exist_ok=True)
            copied.append(str(config_dir))
        unit_file = await _unit_file(ctx)
        if unit_file is not None and unit_file.is_file():
            shutil.copy2(unit_file, folder / unit_file.name)
            copied.append(str(unit_file))
    except OSError as exc:
        raise StepFailed(f"backup into {folder} failed: {exc}") from None
    ctx.remember("backup", str(folder))
    return f"{', '.join(copied) or 'nothing to copy'} -> {folder}"


async def _unit_file(ctx: Context) -> Path | None:
    if ctx.target.primary.unit_file is not None:
        return ctx.target.primary.unit_file
    try:
        path = (await ctx.systemd.status(ctx.target.primary.unit)).fragment_path
    except SystemdError:
        return None
    return Path(path) if path else None


async def _backed_up(ctx: Context) -> bool:
    folder = ctx.facts().get("backup")
    return bool(folder) and Path(str(folder)).is_dir()  # noqa: ASYNC240 - one stat


async def snapshot(ctx: Context) -> str:
    """Both units' state and the primary's own view, as its profile reads it (best effort)."""
    facts: dict[str, Any] = {"profile": ctx.target.profile}
    for side in ("primary", "fallback"):
        unit = getattr(ctx.target, side).unit
        try:
            facts[side] = (await ctx.systemd.status(unit)).as_dict()
        except SystemdError as exc:
            facts[side] = {"error": str(exc)}
    seen = await ctx.service.snapshot(ctx.http)
    facts.update(seen.facts)
    ctx.remember("snapshot", facts)
    primary = facts["primary"]
    return f"primary {primary.get('ActiveState', '?')}, {seen.summary}"


async def _snapshotted(ctx: Context) -> bool:
    return "snapshot" in ctx.facts()


async def stop_primary(ctx: Context) -> str:
    unit = ctx.target.primary.unit
    result = await ctx.systemd.stop(unit)
    status = await ctx.systemd.status(unit)
    if not status.stopped:
        raise StepFailed(f"stop {unit}: job {result}, still {status.active_state}")
    if _flagged(ctx):  # both units stay enabled; the flag decides at boot
        return f"{unit} stopped (job {result})"
    await ctx.systemd.disable([unit])
    await ctx.systemd.reload()
    return f"{unit} stopped (job {result}) and disabled"


async def _primary_stopped(ctx: Context) -> bool:
    status = await ctx.systemd.status(ctx.target.primary.unit)
    return status.stopped and (_flagged(ctx) or not status.enabled)


async def carry_config(ctx: Context) -> str:
    carried = ctx.carried_paths()
    if carried is None:
        return "nothing to carry (carry_config or config_dir not set)"
    source, destination = carried
    if destination.is_file():
        return f"{destination} already exists: kept"
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    except OSError as exc:
        raise StepFailed(f"copy {source} -> {destination}: {exc}") from None
    return f"{source} -> {destination}"


async def _config_carried(ctx: Context) -> bool:
    carried = ctx.carried_paths()
    return carried is None or carried[1].is_file()


async def start_fallback(ctx: Context) -> str:
    unit = ctx.target.fallback.unit
    if _flagged(ctx):
        _write_flag(ctx)  # its ConditionPathExists= must hold before the start
        made = f"flag {ctx.runbook.flag_file} written"
    else:
        await ctx.systemd.enable([unit])
        await ctx.systemd.reload()
        made = "enabled"
    result = await ctx.systemd.start(unit)
    status = await ctx.systemd.status(unit)
    if result != "done" or not status.active:
        raise StepFailed(f"start {unit}: job {result}, {status.active_state}/{status.sub_state}")
    return f"{unit} {made} and started (job {result}, MainPID {status.main_pid})"


async def _fallback_active(ctx: Context) -> bool:
    return (await ctx.systemd.status(ctx.target.fallback.unit)).active


async def verify_fallback(ctx: Context) -> str:
    """The runbook's verification list against the fallback.

    Liveness (answers, track loading, WebSocket, units, port) must hold at once. Performance
    (latency, memory, CPU) is retried for ``settle`` seconds: a JVM that is still warming up is
    not a broken fallback, and switching back to the suspect primary for it would be worse.
    """
    settings, service = ctx.runbook.verify, ctx.service
    checks = [
        await verify.wait_ready(ctx.http, service, within=settings.timeout, poll=settings.poll)
    ]
    fallback = await ctx.systemd.status(ctx.target.fallback.unit)
    primary = await ctx.systemd.status(ctx.target.primary.unit)
    if checks[0].ok:
        checks += [verify.Check.of(answer) for answer in await service.checks(ctx.http)]
    checks.append(
        verify.Check(
            "units",
            fallback.active and primary.stopped,
            f"{fallback.name} {fallback.active_state}, {primary.name} {primary.active_state}",
        )
    )
    port = verify.port_of(ctx.runbook.url, settings)
    checks.append(await asyncio.to_thread(verify.port_bound, fallback.main_pid, port))
    live = all(c.ok for c in checks)
    performance = await _settled_performance(ctx, fallback.main_pid) if live else []
    checks += performance
    ctx.remember("verification", verify.summary(checks))
    failed = [c for c in checks if not c.ok]
    if failed:
        raise StepFailed("; ".join(f"{c.name}: {c.detail}" for c in failed))
    return f"{len(checks)} checks passed ({checks[0].detail}, up after {checks[0].seconds:.1f}s)"


async def _settled_performance(ctx: Context, pid: int) -> list[verify.Check]:
    """Latency, memory and CPU, retried until they pass or ``settle`` runs out."""
    settings, service = ctx.runbook.verify, ctx.service
    deadline = time.monotonic() + settings.settle
    while True:
        sampling = asyncio.create_task(verify.cpu(pid, settings))  # runs while we measure
        checks = [
            await verify.latency(ctx.http, service, settings),
            await asyncio.to_thread(verify.memory, pid, settings),
            await sampling,
        ]
        if all(c.ok for c in checks) or time.monotonic() >= deadline:
            return checks
        await asyncio.sleep(settings.poll)


FINISHED = "target disarmed until re-armed; incident closed"


async def finish(ctx: Context) -> str:
    # One transaction: the run, this step, the arming and the incident end together.
    ctx.journal.finish_run(
        ctx.run_id,
        RunStatus.SUCCEEDED,
        "fallback verified",
        at=ctx.clock(),
        disarm=True,
        close_incident=True,
        step=(ctx.current_step, FINISHED),
    )
    return FINISHED


def plan(target: config.TargetSettings, state_dir: Path) -> list[tuple[str, str]]:
    """What each step would do for this target, in words, for ``rollback --dry-run``."""
    runbook, primary, fallback = target.runbook, target.primary, target.fallback
    flagged = runbook.persistence == "flag-file"
    service = profiles.get(target.profile).bind(target, "")
    needs = [f"{fallback.unit} and {primary.unit} load"]
    if fallback.binary is not None:
        needs.append(f"{fallback.binary} exists")
    needs += service.preflight_plan()
    carried = None
    if runbook.carry_config and primary.config_dir and fallback.config_dir:
        carried = (primary.config_dir / runbook.carry_config, fallback.config_dir)
        needs.append(f"{carried[0]} (or the fallback's copy) exists")
    v = runbook.verify
    checks = service.verify_plan()
    checks += [
        f"port {verify.port_of(runbook.url, v)} bound by MainPID",
        f"RSS < {v.max_memory_bytes / 1024**2:.0f} MiB",
        f"CPU < {v.max_cpu:.0%}",
        f"endpoints < {v.max_latency * 1000:.0f} ms",
    ]
    return [
        ("preflight", "; ".join(needs)),
        (
            "backup",
            f"{primary.config_dir or '(no config_dir)'} and the unit file -> "
            f"{state_dir / 'backups'}/emergency-<time>/",
        ),
        ("snapshot", f"both units' state; the {target.profile} profile's view of {runbook.url}"),
        (
            "stop-primary",
            f"stop {primary.unit}" if flagged else f"stop + disable {primary.unit}",
        ),
        (
            "carry-config",
            f"{carried[0]} -> {carried[1]}/ unless it has one" if carried else "nothing to carry",
        ),
        (
            "start-fallback",
            f"write {target.runbook.flag_file}, start {fallback.unit}"
            if flagged
            else f"enable + start {fallback.unit}",
        ),
        ("verify", ", ".join(checks)),
        ("finish", "disarm the target until re-armed; close the incident"),
    ]


STEPS: tuple[Step, ...] = (
    Step("preflight", preflight, _never),
    Step("backup", backup, _backed_up),
    Step("snapshot", snapshot, _snapshotted),
    Step("stop-primary", stop_primary, _primary_stopped, touches_units=True),
    Step("carry-config", carry_config, _config_carried, touches_units=True),
    Step("start-fallback", start_fallback, _fallback_active, touches_units=True),
    Step("verify", verify_fallback, _never, touches_units=True),
    Step("finish", finish, _never, touches_units=True),
)


_TOUCHING = frozenset(step.name for step in STEPS if step.touches_units)
# once the primary is stopped, the fallback is started before anything else: a shutdown never
# leaves the service down between the two
_SWITCH_CONTINUES = frozenset({"carry-config", "start-fallback"})
_FLAG_PREFIX = "run "  # the flag file names the run that wrote it


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


async def execute(
    ctx: Context,
    *,
    resume: bool = False,
    observer: Observer | None = None,
    steps: Sequence[Step] = STEPS,
) -> Outcome:
    """Run the steps in order, journaling each; on resume skip those already done."""
    notify = observer or (lambda event: None)
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
        try:
            if pause:
                await asyncio.sleep(pause)  # drills: time to watch (or kill) each step
            detail, status = await step.run(ctx), StepStatus.OK
            if pause and step.run is not finish:
                await asyncio.sleep(pause)  # ... and the moment after its effect, unjournaled
        except (StepFailed, SystemdError) as exc:
            detail, status = str(exc), StepStatus.FAILED
            if isinstance(exc, SystemdError) and _connection_lost(ctx):
                detail = f"interrupted: the systemd connection was lost: {exc}"
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
    """The bus went away mid-step: what systemd did is unknown until it can be read again, so
    the run stays open for the reconcile (the daemon adopts it once reconnected) -- never a
    restore attempted blind, never a run closed as failed that may just have succeeded."""
    detail = f"systemd connection lost in {step}; the run resumes once systemd is reachable"
    log.error("rollback interrupted", run=ctx.run_id, step=step, detail=detail)
    return Outcome(ctx.run_id, RunStatus.INTERRUPTED, detail)


async def _safe_check(step: Step, ctx: Context) -> bool:
    try:
        return await step.check(ctx)
    except (SystemdError, OSError):
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
            if isinstance(exc, SystemdError) and _connection_lost(ctx):
                result = f"interrupted: the systemd connection was lost: {exc}"
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
    """A degraded service beats none: fallback off, primary back on."""
    fallback, primary = ctx.target.fallback.unit, ctx.target.primary.unit
    stopped = await ctx.systemd.stop(fallback)
    if not (await ctx.systemd.status(fallback)).stopped:  # never two servers on one port
        raise StepFailed(f"{fallback} did not stop (job {stopped}): primary left stopped")
    if _flagged(ctx):
        _remove_flag(ctx)  # the primary's ConditionPathExists=! must hold again
        made = "flag removed"
    else:
        await ctx.systemd.disable([fallback])
        await ctx.systemd.enable([primary])
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

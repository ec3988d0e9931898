"""The runbook's steps: what each does, how it tells that its effect is already in place, and
the plan a dry run prints.

preflight -> backup -> snapshot -> stop-primary -> carry-config -> start-fallback -> verify
-> finish, as in the operators' procedure (``docs/architecture.md``). Each step is a ``Step``
with a ``run`` (do it, say what was done) and a ``check`` (is its effect already in place?):
``runbook`` journals each before and after and, on a restart, skips those whose check holds.
The service's own questions are its profile's; the units are switched through ``units.Units``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog

from watchdog import config, errors, journal, profiles
from watchdog.errors import ManagerError
from watchdog.executor import verify
from watchdog.executor.systemd import Unreachable
from watchdog.executor.units import Units
from watchdog.model import RunStatus, UnitDefinition
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
    # what the running step waits for now, for a live view (the CLI's ticker); never journaled
    waiting: Callable[[str], None] = field(default=lambda text: None)

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


# -- the steps --------------------------------------------------------------------------------


async def _never(ctx: Context) -> bool:
    return False


async def preflight(ctx: Context) -> str:
    """Everything the fallback needs, checked before anything is stopped."""
    problems: list[str] = []
    notes: list[str] = []
    bound: list[Path] = []  # the primary's files the backup will copy
    if isinstance(ctx.systemd, Unreachable):
        problems.append(ctx.systemd.reason)
    for side, settings in (("fallback", ctx.target.fallback), ("primary", ctx.target.primary)):
        if isinstance(ctx.systemd, Unreachable):
            break
        try:
            status = await ctx.systemd.status(settings.unit)
        except ManagerError as exc:
            problems.append(f"{side} unit {settings.unit}: {exc}")
            continue
        if status.load_state != "loaded" and ctx.systemd.manager == "systemd":
            problems.append(
                f"{side} unit {settings.unit} is {status.load_state} (is its unit file installed?)"
            )
            continue
        try:  # what it needs to start (or to start again: the primary, on a restore)
            definition = await ctx.systemd.definition(settings.unit)
            problems += definition.missing
            if side == "primary":
                bound += [Path(f) for f in definition.files]
        except ManagerError as exc:
            problems.append(f"{side} {settings.unit}: {exc}")
            continue
        if status.load_state == "loaded":
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
    unreadable = _unreadable(ctx.target.primary.config_dir) or await asyncio.to_thread(
        _unreadable_file, bound
    )
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


def _unreadable_file(paths: list[Path]) -> Path | None:
    """The first of ``paths`` that exists and this process cannot read, if any."""
    return next((p for p in paths if p.exists() and not os.access(p, os.R_OK)), None)


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


BACKUP_FILE_LIMIT = 16 * 1024**2  # bytes: a config file, never a bind-mounted data file


async def backup(ctx: Context) -> str:
    """The config directory, what defines the primary (its unit file; a container's
    bind-mounted files, under ``files/`` at their full path) and each container's inspect
    record, into ``backups/emergency-YYYYmmdd-HHMMSS/``."""
    stamp = datetime.fromtimestamp(ctx.clock(), tz=UTC).strftime("%Y%m%d-%H%M%S")
    folder = ctx.state_dir / "backups" / f"emergency-{stamp}"
    primary = await _definition(ctx, ctx.target.primary.unit)
    fallback = await _definition(ctx, ctx.target.fallback.unit)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        copied = await asyncio.to_thread(_copy_definitions, ctx, folder, primary, fallback)
    except OSError as exc:
        raise StepFailed(f"backup into {folder} failed: {exc}") from None
    ctx.remember("backup", str(folder))
    return f"{', '.join(copied) or 'nothing to copy'} -> {folder}"


def _copy_definitions(
    ctx: Context, folder: Path, primary: UnitDefinition, fallback: UnitDefinition
) -> list[str]:
    copied: list[str] = []
    config_dir = ctx.target.primary.config_dir
    if config_dir is not None and config_dir.is_dir():
        shutil.copytree(config_dir, folder / "config", dirs_exist_ok=True)
        copied.append(str(config_dir))
    unit_file = ctx.target.primary.unit_file
    files = [unit_file] if unit_file is not None else []
    if primary.record is None:  # systemd: the unit file it loaded
        files += [Path(f) for f in primary.files if unit_file is None]
    for path in files:
        if path.is_file():
            shutil.copy2(path, folder / path.name)
            copied.append(str(path))
    for path in [Path(f) for f in primary.files] if primary.record is not None else []:
        kept = folder / "files" / path.relative_to(path.anchor)
        try:
            found = path.lstat()  # the file itself: a symlink is not followed
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(found.st_mode) or found.st_size > BACKUP_FILE_LIMIT:
            copied.append(f"{path} not copied (not a regular file under 16 MiB)")
            continue
        kept.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy2(path, kept, follow_symlinks=False)
        copied.append(str(path))
    for definition in (primary, fallback):
        if definition.record is not None:
            name = definition.name.replace("/", "_").replace(":", "_")
            record = folder / f"{name}.inspect.json"
            # the record holds the container's environment, secrets included: owner only
            handle = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(handle, "w") as out:
                out.write(json.dumps(definition.record, indent=2, sort_keys=True) + "\n")
            copied.append(f"{definition.name}'s inspect record")
    return copied


async def _definition(ctx: Context, unit: str) -> UnitDefinition:
    """What the manager says defines ``unit``. An error fails the backup, before anything is
    stopped: a backup that silently left out the config is worse than none said plainly (a
    lost connection is raised as it is: the run is then interrupted)."""
    try:
        return await ctx.systemd.definition(unit)
    except ManagerError as exc:
        if not ctx.systemd.connected:
            raise
        raise StepFailed(f"backup: cannot read what defines {unit}: {exc}") from None


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
        except ManagerError as exc:
            facts[side] = {"error": str(exc)}
    seen = await ctx.service.snapshot(ctx.http)
    facts.update(seen.facts)
    ctx.remember("snapshot", facts)
    primary = facts["primary"]
    return f"primary {primary.get('ActiveState', '?')}, {seen.summary}"


async def _snapshotted(ctx: Context) -> bool:
    return "snapshot" in ctx.facts()


async def stop_primary(ctx: Context) -> str:
    """Stop and disable the primary. Where disabling acts at once (Docker: an ``always``
    container comes back when the engine restarts, stopped or not) it is disabled first, and
    enabled again as it was if the stop fails: a primary that still serves is never left
    disabled. systemd's enablement acts at boot, so there it is stop, then disable."""
    unit = ctx.target.primary.unit
    if _flagged(ctx):  # both units stay enabled; the flag decides at boot
        return f"{unit} stopped (job {await _stopped(ctx, unit)})"
    if not ctx.systemd.disable_first:
        result = await _stopped(ctx, unit)
        await ctx.systemd.disable([unit])
        await ctx.systemd.reload()
        return f"{unit} stopped (job {result}) and disabled"
    await ctx.systemd.disable([unit])
    try:
        result = await _stopped(ctx, unit)
    except (StepFailed, ManagerError):
        if ctx.systemd.connected:  # still serving: never left disabled
            await ctx.systemd.enable([unit], as_before=policies_before(ctx))
        raise
    return f"{unit} disabled and stopped (job {result})"


async def _stopped(ctx: Context, unit: str) -> str:
    """Stop ``unit`` and read it back: the job's result, or ``StepFailed`` if it still runs."""
    result = await ctx.systemd.stop(unit)
    status = await ctx.systemd.status(unit)
    if not status.stopped:
        raise StepFailed(f"stop {unit}: job {result}, still {status.active_state}")
    return result


def policies_before(ctx: Context) -> dict[str, str]:
    """The primary's restart policy as the snapshot read it before the switch (containers),
    to put it back exactly; empty for units, or when the snapshot could not read it."""
    try:
        seen = ctx.facts().get("snapshot", {}).get("primary", {})
    except Exception:  # a journal that cannot be read must not stop a restore
        return {}
    policy = seen.get("RestartPolicy") if isinstance(seen, dict) else None
    return {ctx.target.primary.unit: policy} if isinstance(policy, str) and policy else {}


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
    ctx.waiting(f"waiting for {ctx.target.fallback.unit} to answer (up to {settings.timeout:g}s)")
    checks = [
        await verify.wait_ready(
            ctx.http,
            service,
            within=settings.timeout,
            poll=settings.poll,
            waiting=lambda detail: ctx.waiting(f"not answering yet: {detail}"),
        )
    ]
    fallback = await ctx.systemd.status(ctx.target.fallback.unit)
    primary = await ctx.systemd.status(ctx.target.primary.unit)
    if checks[0].ok:
        ctx.waiting("checking " + ", ".join(service.verify_plan()))
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
    container = verify.measurer(ctx.systemd)
    while True:
        measured = None
        if container is not None:  # the container as Docker measures it, not one process
            measuring = asyncio.create_task(
                verify.usage(container, ctx.target.fallback.unit, settings)
            )
            try:
                latency = await verify.latency(ctx.http, service, settings)
            finally:  # never a measurement left running behind a failure
                measured = await measuring
        if measured is not None:
            checks = [latency, *measured[0]]
        else:  # a unit, or a container whose stats could not be read: its process tree
            sampling = asyncio.create_task(verify.cpu(pid, settings))  # runs while we measure
            checks = [
                await verify.latency(ctx.http, service, settings),
                await asyncio.to_thread(verify.memory, pid, settings),
                await sampling,
            ]
        if all(c.ok for c in checks) or time.monotonic() >= deadline:
            return checks
        left = max(deadline - time.monotonic(), 0.0)
        ctx.waiting(
            "settling: "
            + "; ".join(f"{c.name} {c.detail}" for c in checks if not c.ok)
            + f" (retried for {left:.0f}s more)"
        )
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
    docker = target.executor == "docker"
    needs = [
        f"containers {fallback.unit} and {primary.unit} exist, {fallback.unit}'s image too"
        if docker
        else f"{fallback.unit} and {primary.unit} load"
    ]
    if fallback.binary is not None:
        needs.append(f"{fallback.binary} exists")
    needs += service.preflight_plan()
    carried = None
    if runbook.carry_config and primary.config_dir and fallback.config_dir:
        carried = (primary.config_dir / runbook.carry_config, fallback.config_dir)
        needs.append(f"{carried[0]} (or the fallback's copy) exists")
    v = runbook.verify
    checks = service.verify_plan()
    measured = "the container's " if docker else ""  # Docker's stats, or /proc
    checks += [
        f"port {verify.port_of(runbook.url, v)} bound by "
        + ("the container's process" if docker else "MainPID"),
        f"{measured}{'memory' if docker else 'RSS'} < {v.max_memory_bytes / 1024**2:.0f} MiB",
        f"{measured}CPU < {v.max_cpu:.0%}",
        f"endpoints < {v.max_latency * 1000:.0f} ms",
    ]
    return [
        ("preflight", "; ".join(needs)),
        (
            "backup",
            f"{primary.config_dir or '(no config_dir)'} and "
            + ("the bind-mounted files and inspect records" if docker else "the unit file")
            + " -> "
            f"{state_dir / 'backups'}/emergency-<time>/",
        ),
        ("snapshot", f"both units' state; the {target.profile} profile's view of {runbook.url}"),
        (
            "stop-primary",
            f"stop {primary.unit}"
            if flagged
            else f"stop {primary.unit}, restart policy no"
            if docker
            else f"stop + disable {primary.unit}",
        ),
        (
            "carry-config",
            f"{carried[0]} -> {carried[1]}/ unless it has one" if carried else "nothing to carry",
        ),
        (
            "start-fallback",
            f"write {target.runbook.flag_file}, start {fallback.unit}"
            if flagged
            else f"set the restart policy of {fallback.unit}, start it"
            if docker
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

"""The commands that change things: rollback (through the daemon or here over D-Bus), approve
and deny, rearm.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from pathlib import Path

from watchdog import (
    config,
    errors,
    journal,
    model,
)
from watchdog.cli.api import (
    _Api,
    _api_configured,
    _operator_token,
    _rollback_via_api,
    _said,
    _Unreachable,
)
from watchdog.cli.common import EXIT_FAILED, EXIT_OK, _fail
from watchdog.executor import runbook, units
from watchdog.executor.systemd import SystemdError, Unreachable


def _who(args: argparse.Namespace) -> str:
    return args.by or os.environ.get("SUDO_USER") or os.environ.get("USER") or "operator"


def _rollback(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    target = settings.target(args.target)
    if not args.reason.strip():
        return _fail("--reason must say why")
    by = _who(args)
    through_api = not (args.local or args.dry_run) and _api_configured(settings)
    if through_api and args.by is not None:
        return _fail("--by names who rolls back with --local; through the daemon, your token does")
    if not args.dry_run and not args.yes:
        if not sys.stdin.isatty():
            return _fail("rollback needs --yes when not run from a terminal")
        answer = input(
            f"Roll {target.name} back: stop {target.primary.unit}, start {target.fallback.unit}?"
            " [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return EXIT_FAILED
    if through_api:
        return _rollback_via_api(settings, target, args)
    return asyncio.run(_rollback_async(settings, target, args, by))


def _vote(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    if not re.fullmatch(r"[1-9][0-9]{0,17}", args.id):
        return _fail(f"{args.id!r} is not an approval number (see `status`)")
    api = _Api(settings, args.url, _operator_token(settings, args))
    try:
        answer = api.call(
            "POST",
            f"/api/v1/approvals/{int(args.id)}",
            {"decision": args.command, "request_id": f"cli-{os.getpid()}-{time.time_ns()}"},
        )
    except _Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        api.close()
    if answer.status_code in (400, 404):  # no such approval: bad input
        return _fail(f"{_said(answer)} (HTTP {answer.status_code})")
    if answer.status_code != 200:
        print(f"refused: {_said(answer)} (HTTP {answer.status_code})", file=sys.stderr)
        return EXIT_FAILED
    print(_said(answer))
    return EXIT_OK


async def _rollback_async(
    settings: config.Settings, target: config.TargetSettings, args: argparse.Namespace, by: str
) -> int:
    if args.dry_run:
        print(f"rollback plan for {target.name}: {target.primary.unit} -> {target.fallback.unit}")
        steps = runbook.plan(target, settings.state_dir)
        for seq, (name, what) in enumerate(steps, start=1):
            print(f"  {seq}. {name:<15} {what}")
        print(f"  on a failure after stop-primary: {target.runbook.on_fallback_failure}")
    systemd: units.Units
    try:
        systemd = await units.connect(settings.systemd, call_timeout=target.runbook.job_timeout)
    except SystemdError as exc:
        if not args.dry_run:
            return _fail(str(exc))
        systemd = Unreachable(str(exc))  # a dry run still checks everything else
    try:
        if args.dry_run:
            ctx = runbook.Context(
                target=target,
                systemd=systemd,
                store=None,
                state_dir=settings.state_dir,
                run_id=0,
                password="",
            )
            try:
                detail = await runbook.preflight(ctx)
            except runbook.StepFailed as exc:
                print(f"preflight: FAILED: {exc}")
                return EXIT_FAILED
            finally:
                await ctx.http.aclose()
            print(f"preflight: OK ({detail}); nothing was changed")
            return EXIT_OK
        if isinstance(systemd, Unreachable):  # only a dry run goes on without systemd
            return _fail(systemd.reason)
        return await _execute(settings, target, systemd, args.reason, by, args.category)
    finally:
        systemd.close()


async def _execute(
    settings: config.Settings,
    target: config.TargetSettings,
    systemd: units.Units,
    reason: str,
    by: str,
    category: str = "manual",
) -> int:
    store = journal.Journal.open(settings.state_dir)
    try:
        incident = store.open_incident_id(target.name)
        if incident is None:
            incident = store.open_manual_incident(
                target.name, reason=reason, at=time.time(), category=category, by=by, via="cli"
            )
        print(f"rolling {target.name} back: {target.primary.unit} -> {target.fallback.unit}")
        try:
            outcome = await runbook.start_run(
                target,
                store,
                systemd,
                settings.state_dir,
                trigger=model.Trigger.MANUAL,
                initiated_by=by,
                reason=reason,
                incident_id=incident,
                observer=_show_step,
            )
        except journal.RunInFlight as exc:
            print(f"run #{exc.run_id} is already in flight: following it")
            outcome = await _follow(store, exc.run_id, target, systemd, settings.state_dir)
    finally:
        store.close()
    print(f"run #{outcome.run_id}: {outcome.status.upper()}: {outcome.detail}")
    return EXIT_OK if outcome.succeeded else EXIT_FAILED


def _show_step(event: runbook.StepEvent) -> None:
    total = event.total or len(runbook.STEPS)
    if event.status is model.StepStatus.RUNNING:
        print(f"  [{event.seq}/{total}] {event.name:<15} ...", end="", flush=True)
    elif event.status is model.StepStatus.SKIPPED:
        print(f"  [{event.seq}/{total}] {event.name:<15} skipped: {event.detail}", flush=True)
    else:
        print(f" {event.status} ({event.seconds:.1f}s) {event.detail}", flush=True)


async def _follow(
    store: journal.Journal,
    run_id: int,
    target: config.TargetSettings,
    systemd: units.Units,
    state_dir: Path,
) -> runbook.Outcome:
    """Show another process's run until it ends (a second trigger joins the first). If that
    process dies meanwhile, reconcile its run here."""
    if run_id < 0:  # it ended between our look and our lock
        last = store.runs(target=target.name, limit=1)
        if not last:
            raise errors.InputError("the run in flight vanished from the journal")
        run_id = last[0].id
    shown = 0
    while True:
        steps = await asyncio.to_thread(store.steps, run_id)
        for step in steps[shown:]:
            if step.status is model.StepStatus.RUNNING:
                break
            print(f"  {step.name:<15} {step.status}: {step.detail}")
            shown += 1
        run = await asyncio.to_thread(store.run, run_id)
        if run.status is not model.RunStatus.RUNNING:
            return runbook.Outcome(run.id, run.status, run.outcome)
        orphaned = await runbook.reconcile(target, store, systemd, state_dir, observer=_show_step)
        if orphaned is not None:  # its process had died: finished here
            return orphaned
        await asyncio.sleep(0.5)


def _rearm(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    target = settings.target(args.target)
    store = journal.Journal.open_existing(settings.state_dir)
    try:
        arming = store.arming(target.name)
        if arming.armed:
            print(f"target {target.name} is already armed; nothing changed")
            return EXIT_OK
        store.set_armed(target.name, True, at=time.time(), by=args.by, note="re-armed via CLI")
    finally:
        store.close()
    print(
        f"target {target.name} armed (it was disarmed by {arming.by}); only evidence newer than "
        "now can act on it"
    )
    return EXIT_OK

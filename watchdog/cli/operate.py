"""The commands that change things: rollback (through the daemon or here over D-Bus), approve
and deny, rearm.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from watchdog import (
    config,
    errors,
    journal,
    model,
    report,
)
from watchdog.cli.api import (
    _Api,
    _api_configured,
    _operator_token,
    _rollback_via_api,
    _said,
    _Unreachable,
)
from watchdog.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    _fail,
    _print_json,
    _unreachable,
)
from watchdog.errors import ManagerError
from watchdog.executor import runbook, units
from watchdog.executor.systemd import Unreachable


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
        if args.json:
            return _fail("--json needs --yes: a question would mix with the JSON")
        if not sys.stdin.isatty():
            return _fail("rollback needs --yes when not run from a terminal")
    if through_api:
        return _rollback_via_api(settings, target, args, confirm=_confirm)
    return asyncio.run(_rollback_async(settings, target, args, by))


def _confirm(target: config.TargetSettings, args: argparse.Namespace) -> bool:
    """Asked only once everything the rollback needs has answered: check first, then ask."""
    if args.dry_run or args.yes:
        return True
    answer = ask(
        f"Roll {target.name} back: stop {target.primary.unit}, start {target.fallback.unit}? [y/N] "
    )
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("nothing done")
    return False


def ask(prompt: str) -> str:
    """A line from the terminal; Ctrl-D is an empty answer. Ctrl-C ends the question at once,
    even inside ``asyncio.run`` (whose own handler would only cancel the task and leave
    ``input`` waiting, so a "y" typed after it would still roll back)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return input(prompt)
    except EOFError:
        print()
        return ""
    finally:
        signal.signal(signal.SIGINT, previous)


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
        return _unreachable(str(exc))
    finally:
        api.close()
    said = _said(answer)
    if args.json:
        _print_json(
            {
                "approval": int(args.id),
                "decision": args.command,
                "counted": answer.status_code == 200,
                "http_status": answer.status_code,
                "message": said,
            }
        )
    if answer.status_code in (400, 404):  # no such approval: bad input
        return EXIT_BAD_INPUT if args.json else _fail(f"{said} (HTTP {answer.status_code})")
    if answer.status_code != 200:
        if not args.json:
            print(f"refused: {said} (HTTP {answer.status_code})", file=sys.stderr)
        return EXIT_FAILED
    if not args.json:
        print(said)
    return EXIT_OK


async def _rollback_async(
    settings: config.Settings, target: config.TargetSettings, args: argparse.Namespace, by: str
) -> int:
    plan = runbook.plan(target, settings.state_dir)
    if args.dry_run and not args.json:
        print(f"rollback plan for {target.name}: {target.primary.unit} -> {target.fallback.unit}")
        for seq, (name, what) in enumerate(plan, start=1):
            print(f"  {seq}. {name:<15} {what}")
        print(f"  on a failure after stop-primary: {target.runbook.on_fallback_failure}")
    systemd: units.Units
    try:
        systemd = await units.connect_for(settings, target, call_timeout=target.runbook.job_timeout)
    except ManagerError as exc:
        if not args.dry_run:
            return _unreachable(f"{exc}; nothing was changed")
        manager = config.manager_name(target.executor)
        systemd = Unreachable(str(exc), manager=manager)  # a dry run checks everything else
    try:
        if args.dry_run:
            checked = await _dry_run(settings, target, systemd, plan, as_json=args.json)
            unreachable = isinstance(systemd, Unreachable)
            return EXIT_UNREACHABLE if unreachable and checked != EXIT_OK else checked
        # asked on this thread, blocking the loop: nothing else runs yet, and Ctrl-C then
        # interrupts the question itself (a worker thread would keep waiting for a line)
        if not _confirm(target, args):
            return EXIT_FAILED
        return await _execute(
            settings, target, systemd, args.reason, by, args.category, as_json=args.json
        )
    finally:
        closing = getattr(systemd, "aclose", None)  # Docker's session closes on the loop
        if closing is not None:
            await closing()
        else:
            systemd.close()


async def _dry_run(
    settings: config.Settings,
    target: config.TargetSettings,
    systemd: units.Units,
    plan: list[tuple[str, str]],
    *,
    as_json: bool,
) -> int:
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
        ok = True
    except runbook.StepFailed as exc:
        detail, ok = str(exc), False
    finally:
        await ctx.http.aclose()
    if as_json:
        _print_json(
            {
                "dry_run": True,
                "target": target.name,
                "primary": target.primary.unit,
                "fallback": target.fallback.unit,
                "plan": [
                    {"seq": seq, "name": name, "what": what}
                    for seq, (name, what) in enumerate(plan, start=1)
                ],
                "on_fallback_failure": target.runbook.on_fallback_failure,
                "preflight": {"ok": ok, "detail": detail},
            }
        )
    elif ok:
        print(f"preflight: OK ({detail}); nothing was changed")
    else:
        print(f"preflight: FAILED: {detail}")
    return EXIT_OK if ok else EXIT_FAILED


async def _execute(
    settings: config.Settings,
    target: config.TargetSettings,
    systemd: units.Units,
    reason: str,
    by: str,
    category: str = "manual",
    *,
    as_json: bool = False,
) -> int:
    say = _quiet if as_json else print
    store = journal.Journal.open(settings.state_dir)
    try:
        incident = store.open_incident_id(target.name)
        if incident is None:
            incident = store.open_manual_incident(
                target.name, reason=reason, at=time.time(), category=category, by=by, via="cli"
            )
        say(f"rolling {target.name} back: {target.primary.unit} -> {target.fallback.unit}")
        shown = None if as_json else StepView()
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
                observer=shown.show if shown is not None else None,
            )
        except journal.RunInFlight as exc:
            say(f"run #{exc.run_id} is already in flight: following it")
            outcome = await _follow(
                store, exc.run_id, target, systemd, settings.state_dir, view=shown
            )
        steps = store.steps(outcome.run_id)
    finally:
        store.close()
    if as_json:
        _print_json(
            {
                "via": "local",
                "target": target.name,
                "incident": incident,
                "run": outcome.run_id,
                "status": str(outcome.status),
                "outcome": outcome.detail,
                "steps": [report.step_facts(step) for step in steps],
            }
        )
    else:
        print(f"run #{outcome.run_id}: {outcome.status.upper()}: {outcome.detail}")
    return EXIT_OK if outcome.succeeded else EXIT_FAILED


def _quiet(*_: object, **__: object) -> None:
    """``--json``: the progress is not printed, only the document at the end."""


class StepView:
    """Each step as it starts and ends; while one runs, a ticker with what it waits for --
    rewritten in place at a terminal, one line now and then into a pipe or a file."""

    LINE_EVERY = 10.0  # seconds between ticker lines when not at a terminal

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._tty = self._stream.isatty()
        self._last_line = -math.inf
        self._ticking = False

    def show(self, event: runbook.StepEvent) -> None:
        total = event.total or len(runbook.STEPS)
        head = f"  [{event.seq}/{total}] {event.name:<15}"
        if event.progress:
            self._tick(head, event)
        elif event.status is model.StepStatus.RUNNING:
            self._write(f"{head} ...")
        elif event.status is model.StepStatus.SKIPPED:
            self._write(f"{head} skipped: {event.detail}\n")
        else:
            if self._ticking and self._tty:  # the result replaces the ticker's line
                self._write(f"\r\x1b[K{head} ...")
            elif self._ticking:
                self._write(head + " ...")
            self._ticking = False
            self._write(f" {event.status} ({event.seconds:.1f}s) {event.detail}\n")

    def _tick(self, head: str, event: runbook.StepEvent) -> None:
        text = f"{head} ... {event.seconds:.0f}s: {event.detail}"
        if self._tty:
            width = shutil.get_terminal_size().columns
            clipped = text if len(text) < width else text[: max(width - 2, 0)] + "…"
            self._write(f"\r\x1b[K{clipped}")
        elif time.monotonic() - self._last_line >= self.LINE_EVERY:
            self._last_line = time.monotonic()
            self._write(("\n" if not self._ticking else "") + text + "\n")
        self._ticking = True

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except OSError:  # the reader went away (| head): the run goes on, unseen
            self._ticking = False


async def _follow(
    store: journal.Journal,
    run_id: int,
    target: config.TargetSettings,
    systemd: units.Units,
    state_dir: Path,
    *,
    view: StepView | None,
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
            if view is not None:  # --json: only the document at the end
                print(f"  {step.name:<15} {step.status}: {step.detail}")
            shown += 1
        run = await asyncio.to_thread(store.run, run_id)
        if run.status is not model.RunStatus.RUNNING:
            return runbook.Outcome(run.id, run.status, run.outcome)
        orphaned = await runbook.reconcile(
            target, store, systemd, state_dir, observer=view.show if view is not None else None
        )
        if orphaned is not None:  # its process had died: finished here
            return orphaned
        await asyncio.sleep(0.5)


def _rearm(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    target = settings.target(args.target)
    store = journal.Journal.open_existing(settings.state_dir)
    now = time.time()
    try:
        arming = store.arming(target.name)
        if not arming.armed:
            store.set_armed(target.name, True, at=now, by=args.by, note="re-armed via CLI")
    finally:
        store.close()
    if args.json:
        _print_json(
            {
                "target": target.name,
                "armed": True,
                "changed": not arming.armed,
                "at": now if not arming.armed else arming.changed_at,
                "by": args.by if not arming.armed else arming.by,
                "was_disarmed_by": arming.by if not arming.armed else None,
            }
        )
    elif arming.armed:
        print(f"target {target.name} is already armed; nothing changed")
    else:
        print(
            f"target {target.name} armed (it was disarmed by {arming.by}); only evidence newer "
            "than now can act on it"
        )
    return EXIT_OK

"""``status`` and ``report``: what the daemon is doing now, and what a run did.

``status`` answers the question an operator woken at 3 a.m. asks first, the way
``systemctl is-active`` does: is the watchdog running (its listener answers, or its last
evaluation is fresh and its process alive), how old is its word, and per target the verdict
and reason of the latest evaluation, armed or not, a run in flight and its step, approvals
waiting. The exit code says it without parsing: 0 healthy, 1 degraded, 3 not running.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from watchdog import config, journal, report, timefmt
from watchdog.cli.api import listener_url
from watchdog.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    _fail,
    _print_json,
)

LISTENER_TIMEOUT = 1.0  # seconds: a live listener answers /healthz at once


@dataclass(frozen=True, slots=True)
class Daemon:
    """Whether the daemon runs, and how we know."""

    running: bool
    listener: str  # "answers", or why not
    pid: int | None  # the process of the freshest evaluation
    pid_alive: bool | None
    last_evaluation_at: float | None
    stale_after: float  # seconds: an evaluation older than this is stale

    def words(self, now: float) -> str:
        if self.last_evaluation_at is None:
            seen = "no evaluation journaled yet"
        else:
            seen = f"last evaluation {_age(now - self.last_evaluation_at)} ago"
        pid = f"pid {self.pid}, " if self.pid is not None and self.pid_alive else ""
        state = "running" if self.running else "NOT RUNNING"
        return f"{state} ({pid}{seen}; listener {self.listener})"


def status(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    names = (
        [settings.target(args.target).name]
        if args.target is not None
        else [target.name for target in settings.targets]
    )
    now = time.time()
    listener = _listener(settings.listen)
    stale_after = config.stale_after(settings)
    path = settings.state_dir / journal.DATABASE_NAME
    found: list[dict[str, Any]]
    latest: dict[str, journal.LatestRow | None]
    if path.is_file():
        store = journal.Journal.open_existing(settings.state_dir)
        try:
            found = store.status(names)
            latest = {name: store.latest(name) for name in names}
            unrouted: dict[str, Any] = store.unrouted_status()
        finally:
            store.close()
    else:  # the daemon never ran with this config: nothing to read, nothing created
        found = [_never_ran(name) for name in names]
        latest = dict.fromkeys(names)
        unrouted = {"kept": 0, "latest": []}
    freshest = max(
        (row for row in latest.values() if row is not None), key=lambda r: r.at, default=None
    )
    pid = freshest.pid if freshest is not None else None
    alive = _alive(pid, freshest.started) if freshest is not None and pid is not None else None
    fresh = freshest is not None and now - freshest.at <= stale_after
    daemon = Daemon(
        listener == "answers" or (fresh and bool(alive)),
        listener,
        pid,
        alive,
        freshest.at if freshest is not None else None,
        stale_after,
    )
    for item in found:
        row = latest[item["target"]]
        item["latest"] = (
            None
            if row is None
            else {
                "at": row.at,
                "age_seconds": round(now - row.at, 1),
                "verdict": row.verdict.value,
                "score": row.score,
                "reason": row.reason,
            }
        )
        item["in_flight"] = _in_flight(item)
        item["problems"] = _problems(item, now, stale_after)
    healthy = daemon.running and not any(item["problems"] for item in found)
    if args.json:
        _print_json(
            {
                "mode": settings.mode.value,
                "journal": str(path) if path.is_file() else None,
                "daemon": _daemon_json(daemon, now),
                "healthy": healthy,
                "targets": found,
                "unrouted_alerts": unrouted,
            }
        )
    else:
        _print_status(settings, path, daemon, found, unrouted, now)
    if not daemon.running:
        return EXIT_UNREACHABLE
    return EXIT_OK if healthy else EXIT_FAILED


def _never_ran(target: str) -> dict[str, Any]:
    """A target as ``status`` shows it when there is no journal yet: armed, nothing seen."""
    return {
        "target": target,
        "armed": True,
        "committed_at": None,
        "last_change": None,
        "incidents": [],
        "decisions": [],
        "approvals": [],
        "runs": [],
    }


def _listener(listen: config.ListenSettings) -> str:
    """Whether the daemon's listener answers ``/healthz``: "answers", or why not."""
    url = f"{listener_url(listen)}/healthz"
    try:  # straight to the listener, never through a proxy from the environment
        answer = httpx.get(url, timeout=LISTENER_TIMEOUT, trust_env=False)
    except httpx.HTTPError as exc:
        return f"does not answer at {url} ({type(exc).__name__}: {exc})"
    return "answers" if answer.status_code == 200 else f"answered HTTP {answer.status_code}"


def _alive(pid: int, started: int | None) -> bool:
    """Whether the process that evaluated still runs: its pid, started when it was. A pid
    alone could be another process now, or mean nothing here (a daemon in a PID namespace)."""
    if started is not None:
        now_started = journal.process_start(pid)
        if now_started is not None:
            return now_started == started
        # no such process here, or /proc hides it (hidepid): kill(0) tells those apart
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _in_flight(item: dict[str, Any]) -> dict[str, Any] | None:
    for run in item["runs"]:
        if run["status"] == "running":
            steps = run["steps"]
            step = steps[-1] if steps else None
            return {
                "run": run["id"],
                "step": step["name"] if step is not None else None,
                "step_status": step["status"] if step is not None else None,
                "started_at": run["started_at"],
            }
    return None


def _problems(item: dict[str, Any], now: float, stale_after: float) -> list[str]:
    """Why a target is not healthy, in words; none when it is armed, holding, fresh and idle."""
    problems: list[str] = []
    if not item["armed"]:
        problems.append("disarmed")
    latest = item["latest"]
    if latest is None:
        problems.append("never evaluated")
    else:
        if latest["verdict"] != "hold":
            problems.append(f"verdict {latest['verdict']}")
        if now - latest["at"] > stale_after:
            problems.append(f"last evaluation {_age(now - latest['at'])} ago")
    flight = item["in_flight"]
    if flight is not None:
        problems.append(f"run #{flight['run']} in flight")
    pending = [a["id"] for a in item["approvals"] if a["status"] == "pending"]
    problems += [f"approval #{number} pending" for number in pending]
    return problems


def _daemon_json(daemon: Daemon, now: float) -> dict[str, Any]:
    at = daemon.last_evaluation_at
    return {
        "running": daemon.running,
        "listener": daemon.listener,
        "pid": daemon.pid,
        "pid_alive": daemon.pid_alive,
        "last_evaluation_at": at,
        "last_evaluation_age_seconds": round(now - at, 1) if at is not None else None,
        "stale_after_seconds": daemon.stale_after,
    }


def _age(seconds: float) -> str:
    """An age as a person reads it: seconds under two minutes, whole minutes after."""
    if seconds < 120:
        return f"{max(round(seconds), 0)}s"
    return timefmt.format_duration(round(seconds / 60) * 60)


def _print_status(
    settings: config.Settings,
    path: Path,
    daemon: Daemon,
    found: list[dict[str, Any]],
    unrouted: dict[str, Any],
    now: float,
) -> None:
    at = timefmt.format_instant
    print(f"daemon: {daemon.words(now)}")
    where = path if path.is_file() else f"none yet at {path} (has the daemon ever run?)"
    print(f"mode: {settings.mode.value}   journal: {where}")
    for item in found:
        headline = (
            "OK" if not item["problems"] else "NEEDS ATTENTION: " + ", ".join(item["problems"])
        )
        print(f"\ntarget {item['target']}: {'ARMED' if item['armed'] else 'DISARMED'}: {headline}")
        latest = item["latest"]
        if latest is not None:
            print(
                f"  now: {latest['verdict'].upper()} (score {latest['score']:g}) at "
                f"{at(latest['at'])}, {_age(now - latest['at'])} ago: {latest['reason']}"
            )
        flight = item["in_flight"]
        if flight is not None:
            step = flight["step"] or "starting"
            print(
                f"  run #{flight['run']} IN FLIGHT since {at(flight['started_at'])}: "
                f"step {step} ({flight['step_status'] or 'pending'})"
            )
        if item["committed_at"] is not None:
            print(
                f"  release committed at {at(item['committed_at'])}: "
                "a rollback is proposed to a human, never automatic, until the next deploy"
            )
        last = item["last_change"]
        if last:
            print(f"  verdict {last['verdict']} since {at(last['at'])}")
        for incident in item["incidents"]:
            closed = f" .. {at(incident['closed_at'])}" if incident["closed_at"] else ""
            print(
                f"  incident #{incident['id']} {incident['status']} {incident['verdict']} "
                f"{at(incident['opened_at'])}{closed}"
            )
        for run in item["runs"]:
            print(
                f"  run #{run['id']} {run['status'].upper()} ({run['trigger']} by "
                f"{run['initiated_by']}, {at(run['started_at'])}): "
                f"{run['outcome'] or run['reason']}"
            )
            for step in run["steps"]:
                print(f"    {step['name']:<15} {step['status']:<8} {step['detail']}")
        for made in item["decisions"]:
            print(
                f"  decision {at(made['at'])} {made['action']} ({made['mode']}): {made['outcome']}"
            )
        for asked in item["approvals"]:
            if asked["status"] == "pending":
                print(
                    f"  approval #{asked['id']} PENDING ({len(asked['approved_by'])} of "
                    f"{asked['required']}) until {at(asked['expires_at'])}: "
                    f"{asked['reason']}\n    approve: rollback-watchdog approve {asked['id']}"
                    f"   deny: rollback-watchdog deny {asked['id']}"
                )
            else:
                print(f"  approval #{asked['id']} {asked['status']}: {asked['outcome']}")
    if unrouted["kept"]:
        print(f"\nunrouted alerts (no decision): {unrouted['kept']} kept; the latest:")
        for one in unrouted["latest"]:
            print(
                f"  {one['alertname'] or '(no alertname)'} {one['status']}, "
                f"{one['reason']}: {one['detail']} "
                f"(last {at(one['last_seen'])})"
            )


def show_report(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    if not re.fullmatch(r"[1-9][0-9]{0,17}", args.run):
        return _fail(f"{args.run!r} is not a run number (see `status`)")
    store = journal.Journal.open_existing(settings.state_dir)
    try:
        data = report.gather(store, int(args.run))
    except KeyError:
        return _fail(f"there is no run #{args.run} in {store.path} (see `status`)")
    finally:
        store.close()
    if args.json:
        _print_json(report.facts(data))
    else:
        print(report.build(data), end="")
    return EXIT_OK

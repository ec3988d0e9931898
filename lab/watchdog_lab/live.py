"""``rollback-watchdog demo``: two incidents, live, on a real systemd and a real Prometheus.

The stage (``sim.stage``) runs the Rust simulator as the primary unit and the Java simulator as
the fallback in a sandboxed systemd, a real Prometheus scraping both the node and the watchdog,
and the watchdog in ``auto`` mode. Two scenes follow, each a reason of the operators' runbook:

1. the Rust server starts crash-looping (instability: systemd's restart counter, read over
   D-Bus, and the scraped process start time both show it);
2. after the operator has put the Rust server back and re-armed the target, YouTube and
   SoundCloud track loading both fail (the watchdog's own ``loadtracks`` probes, scraped by
   Prometheus, fire ``LavalinkMajorSourcesDown``).

The narration is the watchdog's own JSON log, followed as it is written: verdict changes and
the signals behind them, the decision's reason, every runbook step with its outcome, and the
verification of the fallback. Rules run at demo speed (``for`` and range windows divided by
30) so both scenes fit in about two minutes. Everything is stopped before returning; the work
directory with the journal, logs and configs is kept and printed.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog import errors
from watchdog_lab import prometheus, sandbox, stage

SCENE_TIMEOUT = 120.0  # seconds from a fault to the end of its rollback run
Say = Callable[[str], None]


class Narrator:
    """Follows the watchdog's JSON log from a thread and tells what matters as it happens."""

    def __init__(self, log_path: Path, say: Say) -> None:
        self._path = log_path
        self._say = say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="narrator", daemon=True)
        self._seen: tuple[str, tuple[str, ...]] | None = None
        self.verdict = ""  # the last verdict the watchdog logged

    def __enter__(self) -> Narrator:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        offset = 0
        pending = ""
        while not self._stop.is_set():
            try:
                with self._path.open() as log:
                    log.seek(offset)
                    chunk = log.read()
                    offset = log.tell()
            except FileNotFoundError:
                chunk = ""
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                self._tell(line)
            self._stop.wait(0.2)

    def _tell(self, line: str) -> None:
        try:
            event: dict[str, Any] = json.loads(line)
        except ValueError:
            return
        name = event.get("event", "")
        if name == "evaluated":
            firing = tuple(event.get("firing", ()))
            self.verdict = str(event.get("verdict"))
            if (self.verdict, firing) != self._seen:
                self._seen = (self.verdict, firing)
                shown = ", ".join(firing) if firing else "nothing firing"
                self._say(f"watchdog: verdict {self.verdict.upper()} ({shown})")
        elif name == "decision":
            self._say(f"watchdog: decided {event.get('action')}: {event.get('reason')}")
            self._say(f"          gate: {event.get('outcome')}")
        elif name == "rollback started":
            self._say(f"runbook: run #{event.get('run')} started ({event.get('trigger')})")
        elif name == "step finished":
            detail = str(event.get("detail", ""))
            shown = detail if len(detail) <= 110 else detail[:107] + "..."
            self._say(f"runbook:   {event.get('step'):<15} {event.get('status'):<7} {shown}")
        elif name == "rollback ended":
            self._say(f"runbook: run #{event.get('run')} {str(event.get('status')).upper()}")
        elif event.get("level") in ("error", "critical"):
            self._say(f"watchdog {event.get('level')}: {name} {event.get('error', '')}".rstrip())


def run(*, workdir: Path | None) -> int:
    """Play both scenes; 0 if each ended in a verified fallback for the expected reason."""
    reason = sandbox.unavailable_reason()
    if reason is not None:
        raise errors.InputError(f"the live demo needs a sandboxed systemd: {reason}")
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="rollback-watchdog-demo-"))
    elif (workdir / "state").exists():
        raise errors.InputError(
            f"{workdir} already holds a demo's journal; give a new --workdir (or remove it)"
        )
    begun = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - begun:6.1f}s] {text}", flush=True)

    print("rollback-watchdog demo: a live Lavalink deployment, two incidents")
    print(f"  work directory (kept): {workdir}")
    try:
        with stage.staged(workdir) as deployment:
            say(
                f"up: {stage.PRIMARY} active (Rust simulator on :{stage.PORT}), "
                f"{stage.FALLBACK} stopped; Prometheus {deployment.prometheus_url}; "
                f"watchdog metrics http://127.0.0.1:{deployment.watchdog_port}/metrics"
            )
            with Narrator(deployment.daemon_log, say) as narrator:
                results = [
                    _crash_loop_scene(deployment, narrator, say),
                    _sources_scene(deployment, narrator, say),
                ]
            say("stopping the watchdog, the units, systemd and Prometheus")
    except (prometheus.PrometheusUnavailable, sandbox.SandboxUnavailable) as exc:
        raise errors.InputError(str(exc)) from None
    print()
    for line in _summary(workdir, results):
        print(line)
    print(f"\ntook {time.monotonic() - begun:.0f}s; nothing is left running.")
    return 0 if all(ok for ok, _ in results) else 1


def _crash_loop_scene(deployment: stage.Stage, narrator: Narrator, say: Say) -> tuple[bool, str]:
    wait_for_verdict(narrator, "hold", within=60.0)
    say("SCENE 1: lavalink-rust starts crash-looping (every start dies after 1 s)")
    last = _last_run(deployment)
    deployment.crash_loop()
    run = _wait_for_run(deployment, after=last)
    return _judged(deployment, run, {"UnitCrashLoop", "LavalinkCrashLoop", "LavalinkDown"}, say)


def _sources_scene(deployment: stage.Stage, narrator: Narrator, say: Say) -> tuple[bool, str]:
    say("operator: Rust server back (enable --now), then re-arm once the watchdog holds")
    deployment.restore_primary_units()
    # the restored process's start is one more restart in the crash-loop window: re-arm only
    # once the watchdog has held for a few evaluations, as an operator would wait for calm
    steady = 3 * deployment.options.interval + 1.0
    wait_for_verdict(narrator, "hold", within=120.0, steady_for=steady)
    deployment.cli("rearm", "--by", "demo-operator")
    say("SCENE 2: YouTube and SoundCloud track loading fail (loadType error, severity fault)")
    last = _last_run(deployment)
    deployment.fault(failing_sources=["youtube", "soundcloud"], error_severity="fault")
    run = _wait_for_run(deployment, after=last)
    return _judged(deployment, run, {"LavalinkMajorSourcesDown"}, say)


def wait_for_verdict(
    narrator: Narrator, verdict: str, *, within: float, steady_for: float = 0.0
) -> None:
    """Until the watchdog's verdict is ``verdict`` (and has stayed so ``steady_for`` seconds)."""
    deadline = time.monotonic() + within
    since: float | None = None
    while True:
        now = time.monotonic()
        if narrator.verdict == verdict:
            since = now if since is None else since
            if now - since >= steady_for:
                return
        else:
            since = None
        if now > deadline:
            raise errors.InputError(f"the watchdog never held {verdict} within {within:g}s")
        time.sleep(0.2)


def _last_run(deployment: stage.Stage) -> int:
    row = _query_one(deployment.journal_path, "SELECT max(id) AS id FROM runs", ())
    return int(row["id"]) if row is not None and row["id"] is not None else 0


def _wait_for_run(deployment: stage.Stage, *, after: int) -> dict[str, Any] | None:
    """The first run with an id above ``after``, once it has ended (None if none in time)."""
    deadline = time.monotonic() + SCENE_TIMEOUT
    while time.monotonic() < deadline:
        row = _query_one(
            deployment.journal_path,
            "SELECT * FROM runs WHERE id > ? AND status != 'running' ORDER BY id LIMIT 1",
            (after,),
        )
        if row is not None:
            return row
        time.sleep(0.3)
    return None


def _judged(
    deployment: stage.Stage, run: dict[str, Any] | None, reasons: set[str], say: Say
) -> tuple[bool, str]:
    if run is None:
        say("UNEXPECTED: no rollback run ended in time")
        return False, "no run"
    facts = json.loads(run["data"] or "{}")
    for name, check in facts.get("verification", {}).items():
        say(f"verified:  {name:<22} {'ok' if check['ok'] else 'FAILED':<7} {check['detail']}")
    primary, fallback = deployment.states()
    why = str(run["reason"])  # the decision that started this run
    ok = (
        run["status"] == "succeeded"
        and (primary, fallback) == ("inactive", "active")
        and any(reason in why for reason in reasons)
    )
    say(
        f"{'OK' if ok else 'UNEXPECTED'}: run #{run['id']} {run['status']}; "
        f"{stage.PRIMARY} {primary}, {stage.FALLBACK} {fallback}"
    )
    return ok, f"run #{run['id']} {run['status']}: {why}"


def _query_one(path: Path, sql: str, parameters: tuple[Any, ...]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    db.row_factory = sqlite3.Row
    try:
        row = db.execute(sql, parameters).fetchone()
    except sqlite3.Error:
        return None  # not created yet
    finally:
        db.close()
    return None if row is None else dict(row)


def _summary(workdir: Path, results: list[tuple[bool, str]]) -> list[str]:
    lines = ["what happened:"]
    for number, (ok, line) in enumerate(results, start=1):
        lines.append(f"  scene {number}: {'ok' if ok else 'UNEXPECTED'} -- {line}")
    lines += [
        "where it is:",
        f"  journal:        {workdir / 'state' / 'journal.sqlite3'}",
        f"  backups:        {workdir / 'state' / 'backups'}",
        f"  watchdog log:   {workdir / 'watchdog.log'}",
        f"  config, rules:  {workdir / 'config.yml'}, {workdir / 'rules' / 'lavalink.yml'}",
        f"  runs and steps: rollback-watchdog status --config {workdir / 'config.yml'}",
    ]
    return lines

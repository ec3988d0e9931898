"""``rollback-watchdog demo``: two incidents, live, on a real systemd and a real Prometheus.

The stage (``watchdog_lab.stage``) runs the Rust simulator as the primary unit and the Java
simulator as the fallback in a sandboxed systemd, a real Prometheus scraping both the node and
the watchdog, and the watchdog in ``auto`` mode. Two scenes follow, each a reason of the
operators' runbook:

1. the Rust server starts crash-looping (instability: systemd's restart counter, read over
   D-Bus, and the scraped process start time both show it);
2. after the operator has put the Rust server back and re-armed the target, YouTube and
   SoundCloud track loading both fail (the watchdog's own ``loadtracks`` probes, scraped by
   Prometheus, fire ``LavalinkMajorSourcesDown``).

The narration is the watchdog's own JSON log, followed as it is written, told in the order a
reader expects rather than the order the lines land: a tick's verdict before the decision it
led to and the run that decision started; every runbook step, then the verification the run
journaled, then how the run ended. A rollback verdict that cannot act says why, from the
daemon's own events (the gate's outcome, the arming it follows, the run in flight). The
operator's commands are the CLI's, run on the host and printed with what they answered; the
demo ends with each run's report as ``rollback-watchdog report`` prints it. Paths read as the
host sees them (the daemon runs in the sandbox, where the work directory is mounted
elsewhere), so every command and path printed can be used as is.

Rules run at demo speed (``for`` and range windows divided by ``StageOptions.speed``) so both
scenes fit in about a minute. Everything is stopped before returning; the work directory with
the journal, logs and configs is kept and printed.
"""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from watchdog import errors, model
from watchdog_lab import prometheus, sandbox, stage

SCENE_TIMEOUT = 120.0  # seconds from a fault to the end of its rollback run
TOLD_TIMEOUT = 10.0  # seconds for the narrator to tell a run's end once the journal has it
OPERATOR = "demo-operator"
CRASH_LOOP_RULES = {"UnitCrashLoop", "LavalinkCrashLoop", "LavalinkDown"}
SOURCES_RULE = "LavalinkMajorSourcesDown"  # scene 2's; its `for` shows the demo's speed
WIDTH = 110  # characters of narration after the time stamp before a line wraps
Say = Callable[[str], None]


@dataclass(frozen=True)
class Scene:
    """How a scene ended: as expected or not, the run it caused, and that in one line."""

    ok: bool
    run: int | None
    line: str


def on_host(text: str, workdir: Path) -> str:
    """``text`` with the sandbox's paths as the host sees them: the work directory is the
    sandbox's bind-mounted ``INSIDE_DIR``, so the daemon's details and reports name it so."""
    inside = re.escape(str(sandbox.INSIDE_DIR))
    return re.sub(inside + r"(?![\w.-])", lambda _: str(workdir.resolve()), text)


def _wrapped(head: str, body: str) -> str:
    """``head`` then ``body``, continuation lines aligned under the body's start."""
    return textwrap.fill(
        body,
        width=max(WIDTH, len(head) + 40),
        initial_indent=head,
        subsequent_indent=" " * len(head),
        break_long_words=False,
        break_on_hyphens=False,
    )


class Narrator:
    """Follows the watchdog's JSON log from a thread and tells what matters as it happens.

    What it says comes from the events' fields and, for a run's verification, from the journal
    at ``journal_path`` (read-only; none told without it); what it tracks (armed, the run in
    flight) follows the same events in the order the daemon wrote them, so a verdict's mark is
    what the daemon knew at that evaluation. With ``host_dir`` (the sandbox's host side),
    paths are told as the host sees them.
    """

    def __init__(
        self,
        log_path: Path,
        say: Say,
        *,
        journal_path: Path | None = None,
        host_dir: Path | None = None,
    ) -> None:
        self._path = log_path
        self._journal = journal_path
        self._host_dir = host_dir
        self._say = say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="narrator", daemon=True)
        self._seen: tuple[str, tuple[str, ...], str] | None = None
        self._armed = True  # a new journal's target is armed; "arming changed" tells the rest
        self._in_flight: int | None = None
        self._tick_run: int | None = None  # in flight at some point since the last evaluation
        self._launch: str | None = None  # the gate's outcome, if this tick decided an action
        self._decided: list[str] = []  # this tick's decision, told after its verdict
        self._started: list[str] = []  # ... and the run it started, after the decision
        self._ended: dict[int, str] = {}
        self._told = threading.Condition()
        self.reports: dict[int, Path] = {}  # the report the daemon wrote of each run
        self.verdict = ""  # the last verdict the watchdog logged

    def __enter__(self) -> Narrator:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def wait_told_end(self, run: int, *, within: float) -> bool:
        """Until the run's end has been told (its steps and verification before it)."""
        with self._told:
            return self._told.wait_for(lambda: run in self._ended, timeout=within)

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
        self._flush()

    def _tell(self, line: str) -> None:
        try:
            event: dict[str, Any] = json.loads(line)
        except ValueError:
            return
        name = event.get("event", "")
        # a tick logs its run's start, then its decision, then its verdict ("evaluated"); the
        # first two wait for the verdict so the story reads cause first
        if name == "rollback started":
            self._in_flight = self._tick_run = int(event["run"])
            self._started.append(f"runbook: run #{event['run']} started ({event.get('trigger')})")
        elif name == "decision":
            self._launch = str(event.get("outcome", ""))
            self._decided.append(
                _wrapped(f"watchdog: decided {event.get('action')}: ", str(event.get("reason")))
                + f"\n          gate: {self._launch}"
            )
        elif name == "evaluated":
            self._evaluated(event)
        elif name == "step finished":
            self._flush()
            head = f"runbook:   {event.get('step'):<15} {event.get('status'):<7} "
            self._say(_wrapped(head, self._host(str(event.get("detail", "")))))
        elif name == "rollback ended":
            self._flush()
            self._ended_run(int(event["run"]), str(event.get("status")))
        elif name == "arming changed":
            self._flush()
            self._armed = bool(event.get("armed"))
            state = "armed again" if self._armed else "disarmed"
            self._say(f"watchdog: target {event.get('target')} {state} (by {event.get('by')})")
        elif name == "rollback report written":
            self.reports[int(event["run"])] = Path(self._host(str(event.get("path"))))
        elif event.get("level") in ("error", "critical"):
            self._flush()
            text = f"watchdog {event.get('level')}: {name} {event.get('error', '')}".rstrip()
            self._say(self._host(text))

    def _evaluated(self, event: dict[str, Any]) -> None:
        firing = tuple(event.get("firing", ()))
        verdict = str(event.get("verdict"))
        mark = self._mark() if verdict == model.Verdict.ROLLBACK else ""
        # a tick that decided is told whole, even if its verdict is the one last told
        if (verdict, firing, mark) != self._seen or self._launch is not None or self._started:
            self._seen = (verdict, firing, mark)
            shown = ", ".join(firing) if firing else "nothing firing"
            self._say(f"watchdog: verdict {verdict.upper()} ({shown})" + mark)
        self._flush()
        self._launch = None
        self._tick_run = self._in_flight
        self.verdict = verdict

    def _mark(self) -> str:
        """What a rollback verdict came to, from the gate's outcome, the arming the tick
        followed, and the run in flight (none: the gate's line says it, or nothing to say)."""
        run = self._tick_run
        if run is not None and self._launch == model.Launch.STARTED:
            return f" (starts run #{run})"
        if run is not None and self._launch == model.Launch.JOINED:
            return f" (joins run #{run})"
        if not self._armed:
            return " (no action: disarmed)"
        if run is not None:
            return f" (no action: run #{run} in flight)"
        return ""

    def _flush(self) -> None:
        for text in self._decided + self._started:
            self._say(text)
        self._decided.clear()
        self._started.clear()

    def _ended_run(self, run: int, status: str) -> None:
        """The run's verification as it journaled it, then how it ended."""
        row = None
        if self._journal is not None:
            row = _query_one(self._journal, "SELECT data FROM runs WHERE id = ?", (run,))
        facts = json.loads(row["data"] or "{}") if row is not None else {}
        for name, check in facts.get("verification", {}).items():
            verdict = "ok" if check["ok"] else "FAILED"
            self._say(_wrapped(f"verified:  {name:<22} {verdict:<7} ", self._host(check["detail"])))
        self._say(f"runbook: run #{run} {status.upper()}")
        if self._in_flight == run:
            self._in_flight = None
        with self._told:
            self._ended[run] = status
            self._told.notify_all()

    def _host(self, text: str) -> str:
        return text if self._host_dir is None else on_host(text, self._host_dir)


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
    workdir = workdir.resolve()  # the paths printed are used from anywhere
    begun = time.monotonic()
    printing = threading.Lock()  # the narrator's thread and the scenes both say things

    def say(text: str) -> None:
        stamp = f"[{time.monotonic() - begun:6.1f}s] "
        lines = text.split("\n")
        shown = "\n".join([stamp + lines[0]] + [" " * len(stamp) + line for line in lines[1:]])
        with printing:
            print(shown, flush=True)

    print("rollback-watchdog demo: a live Lavalink deployment, two incidents")
    print(f"  work directory (kept): {workdir}")
    try:
        with stage.staged(workdir) as deployment:
            say(
                f"up: {stage.PRIMARY} active (Rust simulator on :{stage.PORT}), "
                f"{stage.FALLBACK} stopped; Prometheus {deployment.prometheus_url}; "
                f"watchdog metrics http://127.0.0.1:{deployment.watchdog_port}/metrics"
            )
            say(_speed(deployment))
            with Narrator(
                deployment.daemon_log,
                say,
                journal_path=deployment.journal_path,
                host_dir=deployment.workdir,
            ) as narrator:
                scenes = [
                    _crash_loop_scene(deployment, narrator, say),
                    _sources_scene(deployment, narrator, say),
                ]
            say("stopping the watchdog, the units, systemd and Prometheus")
    except (prometheus.PrometheusUnavailable, sandbox.SandboxUnavailable) as exc:
        raise errors.InputError(str(exc)) from None
    print()
    for line in _summary(deployment, scenes, narrator.reports):
        print(line)
    print(f"\ntook {time.monotonic() - begun:.0f}s; nothing is left running.")
    reported = _reports(deployment, scenes)
    return 0 if reported and all(scene.ok for scene in scenes) else 1


def _speed(deployment: stage.Stage) -> str:
    """How much faster the rules run, shown on scene 2's rule: its `for` as shipped and as the
    stage wrote it."""
    speed = deployment.options.speed
    if speed == 1:
        return "rules run as shipped (no demo speed-up)"
    shipped, staged = (_rule(path, SOURCES_RULE) for path in (stage.RULES, deployment.rules_file))
    return (
        f"rules run {speed:g}x faster for the demo (every `for` and range window divided by "
        f"{speed:g}): {SOURCES_RULE} for {shipped.get('for')} -> {staged.get('for')}"
    )


def _rule(path: Path, alert: str) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                found: dict[str, Any] = rule
                return found
    raise errors.InputError(f"{path} has no rule {alert}")


def _crash_loop_scene(deployment: stage.Stage, narrator: Narrator, say: Say) -> Scene:
    wait_for_verdict(narrator, "hold", within=60.0)
    say("SCENE 1: lavalink-rust starts crash-looping (every start dies after 1 s)")
    last = _last_run(deployment)
    deployment.crash_loop()
    run = _wait_for_run(deployment, after=last)
    return _judged(deployment, narrator, run, CRASH_LOOP_RULES, say)


def _sources_scene(deployment: stage.Stage, narrator: Narrator, say: Say) -> Scene:
    say("operator: Rust server back (enable --now), then re-arm once the watchdog holds")
    deployment.restore_primary_units()
    # the restored process's start is one more restart in the crash-loop window: re-arm only
    # once the watchdog has held for a few evaluations, as an operator would wait for calm
    steady = 3 * deployment.options.interval + 1.0
    wait_for_verdict(narrator, "hold", within=120.0, steady_for=steady)
    _operator(deployment, say, "rearm", "--config", str(deployment.config), "--by", OPERATOR)
    say("SCENE 2: YouTube and SoundCloud track loading fail (loadType error, severity fault)")
    last = _last_run(deployment)
    deployment.fault(failing_sources=["youtube", "soundcloud"], error_severity="fault")
    run = _wait_for_run(deployment, after=last)
    return _judged(deployment, narrator, run, {SOURCES_RULE}, say)


def rollback_watchdog(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``rollback-watchdog ARGS`` on the host, as an operator types it (the journal and the
    config's relative paths are the same files the daemon uses inside the sandbox)."""
    return subprocess.run(
        [sys.executable, "-m", "watchdog", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _operator(deployment: stage.Stage, say: Say, *args: str) -> None:
    """An operator's command, and what it answered."""
    done = rollback_watchdog(*args)
    answer = on_host((done.stdout + done.stderr).strip(), deployment.workdir)
    if done.returncode != 0:
        answer += f" (exit status {done.returncode})"
    say(f"operator: {shlex.join(['rollback-watchdog', *args])}\n  " + answer.replace("\n", "\n  "))


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
    deployment: stage.Stage,
    narrator: Narrator,
    run: dict[str, Any] | None,
    reasons: set[str],
    say: Say,
) -> Scene:
    if run is None:
        say("UNEXPECTED: no rollback run ended in time")
        return Scene(False, None, "no run")
    # the journal has the end a moment before the log: the narration of the run comes first
    narrator.wait_told_end(int(run["id"]), within=TOLD_TIMEOUT)
    _told_recovery(deployment, say)
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
    return Scene(ok, int(run["id"]), f"run #{run['id']} {run['status']}: {why}")


def _told_recovery(deployment: stage.Stage, say: Say) -> None:
    """Until the watchdog's probes pass again on the fallback, as it journals them: the end of
    the outage its report measures (a few probe rounds at most; nothing to wait for if they
    never failed)."""
    sql = "SELECT at, healthy, detail FROM probe_changes ORDER BY id DESC LIMIT 1"
    failed = _query_one(deployment.journal_path, sql, ())
    if failed is None or failed["healthy"]:
        return
    deadline = time.monotonic() + 3 * deployment.options.interval + 1.0
    while time.monotonic() < deadline:
        turn = _query_one(deployment.journal_path, sql, ())
        if turn is not None and turn["healthy"]:
            down = turn["at"] - failed["at"]
            say(
                f"watchdog: probes pass again on the fallback ({turn['detail']}), "
                f"{down:.1f}s after they began failing"
            )
            return
        time.sleep(0.3)
    say("watchdog: probes still failing on the fallback")


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


def _summary(deployment: stage.Stage, scenes: list[Scene], reports: dict[int, Path]) -> list[str]:
    config = deployment.config
    lines = ["what happened:"]
    for number, scene in enumerate(scenes, start=1):
        head = f"  scene {number}: {'ok' if scene.ok else 'UNEXPECTED'} -- "
        lines.append(_wrapped(head, scene.line))
    lines += [
        "where it is:",
        f"  journal:        {deployment.journal_path}",
        f"  backups:        {deployment.state_dir / 'backups'}",
        f"  watchdog log:   {deployment.daemon_log}",
        f"  config, rules:  {config}, {deployment.rules_file}",
        f"  runs and steps: rollback-watchdog status --config {config}",
    ]
    if reports:
        written = ", ".join(str(reports[run]) for run in sorted(reports))
        lines.append(_wrapped("  reports:        ", f"{written} (the daemon's, as each run ended)"))
    return lines


def _reports(deployment: stage.Stage, scenes: list[Scene]) -> bool:
    """Each run's report as the operator reads it now, from the journal the stage left on the
    host; False if one could not be printed."""
    runs = [scene.run for scene in scenes if scene.run is not None]
    if runs:
        print("\nthe rollback reports, as an operator reads them:")
    printed = True
    for run in runs:
        args = ("report", "--config", str(deployment.config), str(run))
        print(f"\n$ {shlex.join(['rollback-watchdog', *args])}\n")
        done = rollback_watchdog(*args)
        print(on_host(done.stdout + done.stderr, deployment.workdir), end="", flush=True)
        printed = printed and done.returncode == 0
    return printed

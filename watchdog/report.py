"""The rollback report: one run told in the operators' own template, as Markdown.

The runbook (``docs/architecture.md``) ends every rollback with a report for people:
date, duration, who initiated it and why, a timeline, the impact, the root cause, the resolution,
lessons learned and next steps. Everything this module writes is read from the journal and
nothing is guessed: a figure the journal cannot back (the downtime without probe turns) reads
"unknown" with the reason, and the lessons and next steps are left to people.

``gather`` is the only journal access; ``build`` is a pure function of what it gathered, so each
case can be tested on plain data; ``write`` puts the report in the state directory.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog import errors, journal, model, profiles, timefmt
from watchdog.model import StepStatus, Trigger

REPORTS_DIR = "reports"
UNKNOWN_DOWNTIME = "unknown (probes off or no turn journaled)"

_VIA = {"slack": "Slack", "api": "API", "cli": "CLI", "gate": "the watchdog"}
_ACTED = ("rollback", "propose")  # decisions that ask for a rollback (the others only notify)


@dataclass(frozen=True, slots=True)
class ReportData:
    """One run and what led to it, as journaled: the whole input of ``build``."""

    run: journal.RunRow
    steps: tuple[journal.StepRow, ...] = ()
    incident: Mapping[str, Any] | None = None  # the incidents row (without its lists)
    decisions: tuple[Mapping[str, Any], ...] = ()  # the incident's, oldest first
    approvals: tuple[Mapping[str, Any], ...] = ()  # the incident's; approved_by is a list
    votes: Mapping[int, tuple[journal.AuditRow, ...]] = field(default_factory=dict)
    evaluations: tuple[journal.EvaluationRow, ...] = ()  # verdict changes, incident open..run
    probe_turns: tuple[journal.ProbeTurn, ...] = ()  # last turn at/before the run start, then all
    generated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Downtime:
    """The outage as the synthetic probes saw it, in words, and the turns that bound it."""

    text: str
    started: journal.ProbeTurn | None = None  # the turn to failing
    ended: journal.ProbeTurn | None = None  # the first passing turn once a service was started
    seconds: float | None = None


# -- reading the journal ---------------------------------------------------------------------


def gather(
    store: journal.Journal, run_id: int, *, clock: Callable[[], float] = time.time
) -> ReportData:
    """Read run ``run_id`` and what led to it; ``KeyError`` if there is no such run."""
    run = store.run(run_id)
    incident: dict[str, Any] | None = None
    decisions: tuple[Mapping[str, Any], ...] = ()
    approvals: tuple[Mapping[str, Any], ...] = ()
    votes: dict[int, tuple[journal.AuditRow, ...]] = {}
    evaluations: tuple[journal.EvaluationRow, ...] = ()
    if run.incident_id is not None:
        found = store.incident_report(run.incident_id)
        if found is not None:
            decisions = tuple(found.pop("decisions"))
            approvals = tuple(found.pop("approvals"))
            found.pop("runs")
            incident = found
            votes = {a["id"]: tuple(store.approval_audit(a["id"])) for a in approvals}
            if found["origin"] == "decision":  # a person's order has no evaluation behind it
                evaluations = tuple(
                    store.evaluations(run.target, since=found["opened_at"], until=run.started_at)
                )
    turns = store.probe_changes(run.target)
    before = [t for t in turns if t.at <= run.started_at]
    return ReportData(
        run=run,
        steps=tuple(store.steps(run_id)),
        incident=incident,
        decisions=decisions,
        approvals=approvals,
        votes=votes,
        evaluations=evaluations,
        # only the last turn before the run matters: it says how things stood when it began
        probe_turns=tuple(before[-1:] + [t for t in turns if t.at > run.started_at]),
        generated_at=clock(),
    )


def write(
    store: journal.Journal,
    run_id: int,
    state_dir: Path,
    *,
    clock: Callable[[], float] = time.time,
) -> Path:
    """Write the report of run ``run_id`` to ``<state_dir>/reports/run-<id>.md`` and return
    the path. Atomic (a reader never sees half a report), so it can be rewritten at any time."""
    text = build(gather(store, run_id, clock=clock))
    folder = state_dir / REPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"run-{run_id}.md"
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".run-{run_id}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:  # mkstemp: mode 0600
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


# -- building the report ---------------------------------------------------------------------


def build(data: ReportData) -> str:
    """The report of one run, as Markdown."""
    run = data.run
    lines = [f"# Rollback report: {run.target}, run #{run.id}", ""]
    lines += _summary(data)
    lines += ["", "## Timeline", ""]
    lines += [f"- {_at(at)} {text}" for at, text in timeline(data)]
    lines += ["", "## Impact", ""]
    lines += _impact(data)
    lines += ["", "## Root cause", ""]
    lines += _root_cause(data)
    lines += ["", "## Resolution", ""]
    lines += _resolution(data)
    lines += ["", "## Verification results", ""]
    lines += _verification(run.facts.get("verification"))
    lines += ["", "## Backups", ""]
    lines += _backups(run.facts)
    lines += [
        "",
        "## Lessons learned",
        "",
        "<!-- For people: what went wrong with the new service; what the rollback taught. -->",
        "",
        "## Next steps",
        "",
        "<!-- For people: action items, owners, dates. -->",
        "",
        "---",
        f"_Written by rollback-watchdog from its journal at {_at(data.generated_at)}._",
    ]
    return "\n".join(lines) + "\n"


def facts(data: ReportData) -> dict[str, Any]:
    """The report's facts as plain data (``report --json``): the same journal rows and the same
    derived figures as ``build``, instants as Unix seconds (the CLI prints them RFC 3339)."""
    run = data.run
    down = downtime(data)
    decided = decision_of(data)
    cause = evaluation_of(data)
    run_facts = run.facts
    return {
        "run": {
            "id": run.id,
            "target": run.target,
            "status": run.status.value,
            "trigger": run.trigger.value,
            "initiated_by": initiated_by(data),
            "reason": run.reason,
            "outcome": run.outcome,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "duration_seconds": (
                run.finished_at - run.started_at if run.finished_at is not None else None
            ),
        },
        "incident": dict(data.incident) if data.incident is not None else None,
        "decision": dict(decided) if decided is not None else None,
        "approvals": [
            {**approval, "votes": [_vote(v) for v in data.votes.get(approval["id"], ())]}
            for approval in data.approvals
        ],
        "root_cause": None
        if cause is None
        else {
            "at": cause.at,
            "verdict": cause.verdict.value,
            "score": cause.score,
            "reason": cause.reason,
            "firing": list(cause.firing),
            "signals": [
                {
                    "name": signal.name,
                    "state": signal.state.value,
                    # JSON has no NaN or Infinity (a ratio's +Inf): null, the detail says why
                    "value": signal.value
                    if signal.value is not None and math.isfinite(signal.value)
                    else None,
                    "labels": dict(signal.labels),
                    "threshold": _threshold(signal),
                    "detail": signal.detail,
                }
                for signal in cause.signals
            ],
        },
        # the Markdown's words without its emphasis
        "timeline": [{"at": at, "text": text.replace("**", "")} for at, text in timeline(data)],
        "downtime": {
            "text": down.text,
            "seconds": down.seconds,
            "started_at": down.started.at if down.started is not None else None,
            "ended_at": down.ended.at if down.ended is not None else None,
        },
        "steps": [step_facts(step) for step in data.steps],
        "verification": run_facts.get("verification") or {},
        "backup": run_facts.get("backup"),
        "generated_at": data.generated_at,
    }


def _vote(row: journal.AuditRow) -> dict[str, Any]:
    """A vote as the report tells it (without its replay nonce, an internal of the gate)."""
    return {k: v for k, v in journal._plain(row).items() if k != "nonce"}


def step_facts(step: journal.StepRow) -> dict[str, Any]:
    """One step as plain data (``report --json``, ``rollback --json``)."""
    return {
        "seq": step.seq,
        "name": step.name,
        "status": step.status.value,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "detail": step.detail,
    }


def _summary(data: ReportData) -> list[str]:
    run = data.run
    if run.finished_at is not None:
        duration = (
            f"{timefmt.format_duration(run.finished_at - run.started_at)} "
            f"({_at(run.started_at)} to {_at(run.finished_at)})"
        )
    else:
        duration = f"still running (started {_at(run.started_at)}, as of {_at(data.generated_at)})"
    lines = [
        f"- **Date:** {_at(run.started_at)}",
        f"- **Duration:** {duration}",
        f"- **Initiated by:** {initiated_by(data)}",
        f"- **Reason:** {_inline(run.reason)}",
        f"- **Outcome:** {run.status}" + (f": {_inline(run.outcome)}" if run.outcome else ""),
    ]
    if data.incident is not None:
        incident = data.incident
        lines.append(
            f"- **Incident:** #{incident['id']}, opened {_at(incident['opened_at'])}, "
            f"verdict {incident['verdict']}, now {incident['status']}"
        )
    return lines


def initiated_by(data: ReportData) -> str:
    """Who started the run and how: the watchdog itself, approvers and their channel, or a
    person's order (and whether it was a security one)."""
    run = data.run
    if run.trigger is Trigger.AUTO:
        return f"{run.initiated_by} (auto)"
    if run.trigger is Trigger.APPROVED:
        channels: list[str] = []
        for approval in data.approvals:
            if approval["status"] != "approved":
                continue
            for row in data.votes.get(approval["id"], ()):
                if row.action == "approve" and row.accepted and row.via != "gate":
                    channel = _VIA.get(row.via, row.via)
                    if channel not in channels:
                        channels.append(channel)
        if not channels:  # approved by the clock (on_timeout: proceed): the words say so
            return run.initiated_by
        return f"{run.initiated_by} (approved in {', '.join(channels)})"
    words = ["manual"]  # Trigger.MANUAL: a person's order
    if _category(data) == "security":
        words.append("security")
    ordered = _order(data)
    if ordered is not None:
        words.append(f"via {_VIA.get(ordered[1], ordered[1])}")
    return f"{run.initiated_by} ({', '.join(words)})"


def _category(data: ReportData) -> str | None:
    """``manual`` or ``security`` for a person's order (the incident's ``category``)."""
    category = data.incident.get("category") if data.incident else None
    return str(category) if category else None


def _order(data: ReportData) -> tuple[str, str] | None:
    """Who ordered the rollback and through what: the order's decision's fields."""
    for made in data.decisions:
        if made["mode"] == "manual" and made.get("ordered_by") and made.get("ordered_via"):
            return str(made["ordered_by"]), str(made["ordered_via"])
    return None


def decision_of(data: ReportData) -> Mapping[str, Any] | None:
    """The decision that asked for this run: the last one asking for a rollback before it
    started, else the last one before it started."""
    before = [d for d in data.decisions if d["at"] <= data.run.started_at]
    acting = [d for d in before if d["action"] in _ACTED]
    if acting:
        return acting[-1]
    return before[-1] if before else None


def evaluation_of(data: ReportData) -> journal.EvaluationRow | None:
    """The verdict change the decision acted on (only changes are journaled)."""
    made = decision_of(data)
    if made is None or made["mode"] == "manual":
        return None
    matching = [e for e in data.evaluations if e.at <= made["at"] and e.verdict == made["verdict"]]
    return matching[-1] if matching else None


# -- timeline --------------------------------------------------------------------------------


def timeline(data: ReportData) -> list[tuple[float, str]]:
    """The run's story, oldest first: the template's events and the ones that explain them."""
    run = data.run
    events: list[tuple[float, str]] = []
    lost = downtime(data)
    detected: list[tuple[float, str]] = []
    if data.incident is not None:
        incident = data.incident
        opened = "opened by a person's order" if incident["origin"] == "order" else "opened"
        detected.append((incident["opened_at"], f"incident #{incident['id']} {opened}"))
    if lost.started is not None:
        failing = f"first failing probe ({_inline(lost.started.detail)})"
        if lost.started.at <= run.started_at:
            detected.append((lost.started.at, failing))
        else:  # the switch itself took the service down
            events.append((lost.started.at, _upper_first(failing) + " during the switch"))
    detected.sort(key=lambda event: event[0])
    for index, (at, text) in enumerate(detected):
        events.append((at, f"**Issue detected:** {text}" if index == 0 else _upper_first(text)))
    made = decision_of(data)
    if made is not None:
        if made["mode"] == "manual":
            text = f"**Rollback decision:** rollback {_inline(made['outcome'])}"
        else:
            text = (
                f"**Rollback decision:** {made['verdict']} in {made['mode']} mode: "
                f"{_inline(made['outcome'])}"
            )
        events.append((made["at"], text))
    events += _approval_events(data)
    events.append((run.started_at, f"**Rollback started:** run #{run.id} ({run.trigger})"))
    for step in data.steps:
        if step.finished_at is None:
            continue
        if step.status is StepStatus.INTERRUPTED:
            events.append((step.finished_at, f"{step.name} interrupted: {_inline(step.detail)}"))
        elif step.name == "stop-primary" and step.status is StepStatus.OK:
            events.append((step.finished_at, f"Primary stopped: {_inline(step.detail)}"))
        elif step.name == "start-fallback" and step.status is StepStatus.OK:
            events.append((step.finished_at, f"**Fallback started:** {_inline(step.detail)}"))
        elif step.name == "start-fallback" and step.status is StepStatus.FAILED:
            events.append((step.finished_at, f"Fallback failed to start: {_inline(step.detail)}"))
        elif step.name == "verify" and step.status in (StepStatus.OK, StepStatus.FAILED):
            result = "passed" if step.status is StepStatus.OK else "FAILED"
            events.append(
                (
                    step.finished_at,
                    f"**Verification completed:** {result}: {_inline(step.detail)}",
                )
            )
        elif step.name == "restore-primary":
            result = (
                "Primary restored" if step.status is StepStatus.OK else "Primary restore FAILED"
            )
            events.append((step.finished_at, f"{result}: {_inline(step.detail)}"))
    if lost.ended is not None:
        events.append((lost.ended.at, f"First passing probe {_where(data)}"))
    if run.finished_at is not None:
        ended = f"Run ended: {run.status}" + (f": {_inline(run.outcome)}" if run.outcome else "")
        events.append((run.finished_at, ended))
    return sorted(events, key=lambda event: event[0])  # stable: same-instant events keep order


def _approval_events(data: ReportData) -> list[tuple[float, str]]:
    events: list[tuple[float, str]] = []
    for approval in data.approvals:
        number = approval["id"]
        events.append(
            (
                approval["requested_at"],
                f"**Approval** #{number} requested ({approval['required']} needed, until "
                f"{_at(approval['expires_at'])})",
            )
        )
        for row in data.votes.get(number, ()):
            if row.via == "gate" or not row.accepted or row.action not in ("approve", "deny"):
                continue  # refused votes are in the audit trail; the gate's settling is below
            verb = "approved" if row.action == "approve" else "denied"
            events.append((row.at, f"{row.actor} {verb} #{number} in {_VIA.get(row.via, row.via)}"))
        if approval["decided_at"] is not None:
            outcome = f": {_inline(approval['outcome'])}" if approval["outcome"] else ""
            events.append(
                (
                    approval["decided_at"],
                    f"**Approval** #{number} {approval['status']} by "
                    f"{approval['decided_by']}{outcome}",
                )
            )
    return events


# -- impact ----------------------------------------------------------------------------------


def downtime(data: ReportData) -> Downtime:
    """From the first failing probe (the last turn to failing at or before the run started,
    or, if the probes still passed then, the first failing turn during the run) to the first
    passing probe once a service was started again. Only journaled turns count."""
    run = data.run
    turns = sorted(data.probe_turns, key=lambda turn: turn.at)
    before = [t for t in turns if t.at <= run.started_at]
    start = before[-1] if before and not before[-1].healthy else None
    until = run.finished_at if run.finished_at is not None else data.generated_at
    if start is None:  # passing when the run began: did the switch itself take it down?
        start = next((t for t in turns if run.started_at < t.at <= until and not t.healthy), None)
    if start is None:
        if before:
            return Downtime(
                f"none seen: the probes passed from {_at(before[-1].at)} and no failing "
                f"round was journaled up to {_at(until)} (an outage shorter than one probe "
                "round is not seen)"
            )
        return Downtime(UNKNOWN_DOWNTIME)
    anchor = _back_in_service(data.steps)
    since = start.at if anchor is None else max(start.at, anchor)
    end = next((t for t in turns if t.healthy and t.at >= since), None)
    if end is None:
        if anchor is None:
            return Downtime(
                f"not measured: failing since {_at(start.at)}, no passing probe journaled "
                f"since (as of {_at(data.generated_at)}); this run started no service",
                started=start,
            )
        return Downtime(
            f"not measured yet: failing since {_at(start.at)}, no passing probe "
            f"{_where(data)} journaled (as of {_at(data.generated_at)})",
            started=start,
        )
    span = end.at - start.at
    text = (
        f"{timefmt.format_duration(span)}: from the first failing probe at {_at(start.at)} "
        f"to the first passing probe {_where(data)} at {_at(end.at)}"
    )
    if anchor is None:
        text += " (this run started no service)"
    failing = _failing_seconds(turns, start, end)
    if span - failing >= 1.0:
        text += f"; failing for {timefmt.format_duration(failing)} of it (probes passed between)"
    return Downtime(text, started=start, ended=end, seconds=span)


def _back_in_service(steps: Sequence[journal.StepRow]) -> float | None:
    """When a service was started again: the restore of the primary if one succeeded, else the
    start of the fallback. Its step's *start* counts, not its end: the primary is stopped by
    then, so a passing round can only be the new service, which may answer before the step
    is journaled as done."""
    restored = [s for s in steps if s.name == "restore-primary" and s.status is StepStatus.OK]
    if restored:
        return restored[-1].started_at
    started = [s for s in steps if s.name == "start-fallback"]
    if any(s.status in (StepStatus.OK, StepStatus.SKIPPED) for s in started):
        return min(s.started_at for s in started)  # a resumed run: the first attempt
    return None


def _where(data: ReportData) -> str:
    restored = any(s.name == "restore-primary" and s.status is StepStatus.OK for s in data.steps)
    return "on the restored primary" if restored else "on the fallback"


def _failing_seconds(
    turns: Sequence[journal.ProbeTurn], start: journal.ProbeTurn, end: journal.ProbeTurn
) -> float:
    """How long the probes failed between two turns (they may have passed in between)."""
    failing = 0.0
    since_failing: float | None = start.at  # when the probes last turned to failing; None: passing
    for turn in turns:
        if not start.at < turn.at < end.at:
            continue
        if turn.healthy and since_failing is not None:
            failing += turn.at - since_failing
            since_failing = None
        elif not turn.healthy and since_failing is None:
            since_failing = turn.at
    if since_failing is not None:
        failing += end.at - since_failing
    return float(failing)


def _impact(data: ReportData) -> list[str]:
    snapshot = data.run.facts.get("snapshot")
    return [
        f"- **Downtime:** {downtime(data).text}",
        f"- **Users affected:** {_users(snapshot)}",
        f"- **Services impacted:** {_services(data.run.target, snapshot)}",
    ]


def _users(snapshot: Any) -> str:
    if not isinstance(snapshot, dict):
        return "unknown (no snapshot of the primary was journaled)"
    # runs journaled before profiles existed were Lavalink's
    name = snapshot.get("profile", "lavalink")
    try:
        profile = profiles.get(str(name))
    except errors.ConfigError:
        return f"unknown (the snapshot's profile {name!r} is not known to this version)"
    users = profile.users(snapshot)
    return _inline(users) if users is not None else f"unknown (the {name} profile cannot tell)"


def _services(target: str, snapshot: Any) -> str:
    units = []
    if isinstance(snapshot, dict):
        for side in ("primary", "fallback"):
            unit = snapshot.get(side)
            if isinstance(unit, dict) and unit.get("name"):
                units.append(f"{unit['name']} ({side}, {unit.get('ActiveState', '?')} before)")
    return f"{target}: {', '.join(units)}" if units else target


# -- root cause ------------------------------------------------------------------------------


def _root_cause(data: ReportData) -> list[str]:
    run = data.run
    made = decision_of(data)
    lines: list[str] = []
    if run.trigger is Trigger.MANUAL:
        ordered = _order(data)
        who = (
            f"{ordered[0]} via {_VIA.get(ordered[1], ordered[1])}" if ordered else run.initiated_by
        )
        lines += [f"Ordered by {_inline(who)}:", "", f"> {_inline(run.reason)}", ""]
    evaluated = evaluation_of(data)
    if evaluated is not None:
        counted = set(evaluated.firing)
        firing = [
            s
            for s in evaluated.signals
            if s.name in counted or (not counted and s.state is model.SignalState.FIRING)
        ]
        lines += [
            f"Signals firing at {_at(evaluated.at)} (verdict {evaluated.verdict}"
            + (f", warning score {_number(evaluated.score)}" if evaluated.score else "")
            + "):",
            "",
            "| Signal | State | Value | Threshold | Labels | Detail |",
            "|---|---|---|---|---|---|",
        ]
        for s in firing:
            labels = ", ".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            lines.append(
                "| "
                + " | ".join(
                    _cell(cell)
                    for cell in (
                        s.name,
                        s.state,
                        _number(s.value),
                        _threshold(s) or "-",
                        labels or "-",
                        s.detail or "-",
                    )
                )
                + " |"
            )
        if not firing:
            lines.append("| (none journaled) | | | | | |")
        lines.append("")
    if made is not None and made["mode"] != "manual":
        lines += [
            f"The decision at {_at(made['at'])} ({made['verdict']}, {made['mode']} mode), "
            "as journaled:",
            "",
            f"> {_inline(made['reason'])}",
        ]
    elif not lines:
        lines += [
            "No decision was journaled for this run; its reason:",
            "",
            f"> {_inline(run.reason)}",
        ]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _threshold(signal: journal.SignalRecord) -> str | None:
    """A signal's threshold as journaled with it (the rule's ``threshold`` annotation and its
    ``for``), in the decision's words: "> 0.5 s for 5m"."""
    threshold = signal.threshold
    if signal.for_seconds and "for" not in threshold:
        threshold = f"{threshold} for {timefmt.format_duration(signal.for_seconds)}".strip()
    return threshold or None


# -- resolution, verification, backups -------------------------------------------------------


def _resolution(data: ReportData) -> list[str]:
    if not data.steps:
        return ["No step was journaled."]
    lines = [
        "| # | Step | Status | Started | Duration | Detail |",
        "|---|---|---|---|---|---|",
    ]
    for step in data.steps:
        took = (
            timefmt.format_duration(step.finished_at - step.started_at)
            if step.finished_at is not None
            else "still running"
        )
        lines.append(
            "| "
            + " | ".join(
                _cell(cell)
                for cell in (
                    str(step.seq),
                    step.name,
                    step.status,
                    _at(step.started_at),
                    took,
                    step.detail or "-",
                )
            )
            + " |"
        )
    reconciled = data.run.facts.get("reconciled")
    if reconciled:
        lines += [
            "",
            "The watchdog stopped during this run; on restart it found: "
            + _inline(str(reconciled)),
        ]
    return lines


def _verification(checks: Any) -> list[str]:
    if not isinstance(checks, dict) or not checks:
        return ["No verification was journaled (the run did not verify the fallback)."]
    failed = [name for name, check in checks.items() if not _ok(check)]
    if failed:
        head = f"**FAILED:** {len(failed)} of {len(checks)} checks failed ({', '.join(failed)})."
    else:
        head = f"All {len(checks)} checks passed."
    lines = [head, "", "| Check | Result | Detail | Took |", "|---|---|---|---|"]
    for name, check in checks.items():
        check = check if isinstance(check, dict) else {}
        seconds = check.get("seconds")
        took = timefmt.format_duration(seconds) if isinstance(seconds, int | float) else "-"
        result = "pass" if _ok(check) else "FAIL"
        lines.append(
            f"| {_cell(name)} | {result} | {_cell(str(check.get('detail') or '-'))} | {took} |"
        )
    return lines


def _ok(check: Any) -> bool:
    return isinstance(check, dict) and check.get("ok") is True


def _backups(facts: Mapping[str, Any]) -> list[str]:
    folder = facts.get("backup")
    if not folder:
        return ["No backup was journaled (the run did not reach the backup step)."]
    return [f"- Emergency backup (config directory and unit file): `{folder}`"]


# -- words -----------------------------------------------------------------------------------


def _at(at: float) -> str:
    return timefmt.format_instant(at)


def _number(value: Any) -> str:
    if not isinstance(value, int | float) or value != value:  # None or NaN: no value
        return "-"
    if not math.isfinite(value):  # a ratio rule can give +Inf
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _inline(text: str) -> str:
    """One line of Markdown: journaled text may hold newlines."""
    return " ".join(str(text).split())


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _cell(text: str) -> str:
    """A table cell: one line, pipes escaped."""
    return _inline(text).replace("|", "\\|")

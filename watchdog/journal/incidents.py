"""The decision's record: targets' arming, verdict changes, incidents and decisions, probe turns and
where each incident's chat message is."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from watchdog import comparison, model
from watchdog.journal.approvals import Approvals
from watchdog.journal.core import _plain, _window, process_start
from watchdog.journal.rows import (
    ApprovalAsk,
    Arming,
    DecisionRow,
    EvaluationRow,
    IncidentRow,
    LatestRow,
    ProbeTurn,
    RunRow,
    SignalRecord,
)
from watchdog.journal.runs import Runs


class Incidents(Runs, Approvals):
    """The decision's memory and record, and what the report and ``status`` read of it (with
    the incident's runs and approvals)."""

    def target_state(self, target: str) -> model.TargetState:
        """What the decision must remember about ``target``, as journaled."""
        arming = self.arming(target)
        with self._lock:
            open_row = self._db.execute(
                "SELECT opened_at, verdict, acted FROM incidents WHERE target = ? "
                "AND status = 'open' AND origin = 'decision' ORDER BY id DESC LIMIT 1",
                (target,),
            ).fetchone()
            # A re-arm starts afresh: incidents closed before it do not hold a cooldown.
            closed_row = self._db.execute(
                "SELECT closed_at, verdict FROM incidents WHERE target = ? AND status != 'open' "
                "AND closed_at > COALESCE((SELECT changed_at FROM targets "
                "WHERE name = ? AND armed = 1), -1e18) ORDER BY closed_at DESC LIMIT 1",
                (target, target),
            ).fetchone()
        incident = None
        if open_row is not None:
            incident = model.IncidentState(
                opened_at=open_row["opened_at"],
                verdict=model.Verdict(open_row["verdict"]),
                acted=model.Verdict(open_row["acted"]) if open_row["acted"] else None,
            )
        return model.TargetState(
            armed=arming.armed,
            armed_at=arming.changed_at if arming.armed else None,
            incident=incident,
            last_closed_at=closed_row["closed_at"] if closed_row is not None else None,
            last_closed_verdict=model.Verdict(closed_row["verdict"]) if closed_row else None,
            committed_at=arming.committed_at,
            committed_release=arming.committed_release,
            last_switch_at=arming.last_switch_at,
            fallback_failed_at=arming.fallback_failed_at,
        )

    def arming(self, target: str) -> Arming:
        """The target's arming as journaled (armed unless someone disarmed it), the loop
        guard's inputs and the release commit."""
        with self._lock:
            row = self._db.execute(
                "SELECT armed, changed_at, changed_by, committed_at, committed_release "
                "FROM targets WHERE name = ?",
                (target,),
            ).fetchone()
            # every switch not ordered by an operator: automatic, approved (a timeout that
            # proceeded included); a run that never stopped the primary (aborted) switched nothing
            switch = self._db.execute(
                "SELECT MAX(started_at) FROM runs WHERE target = ? AND trigger != 'manual' "
                "AND status != 'aborted'",
                (target,),
            ).fetchone()
            failed = self._db.execute(
                "SELECT MAX(finished_at) FROM runs WHERE target = ? "
                "AND status IN ('restored', 'failed')",
                (target,),
            ).fetchone()
        guard = {"last_switch_at": switch[0], "fallback_failed_at": failed[0]}
        if row is None:
            return Arming(armed=True, **guard)
        return Arming(
            bool(row["armed"]),
            row["changed_at"],
            row["changed_by"],
            committed_at=row["committed_at"],
            committed_release=row["committed_release"],
            **guard,
        )

    def record_baseline(self, target: str, baseline: comparison.Baseline, *, at: float) -> None:
        """Journal the fallback's baseline for one activation of the primary (once)."""
        with self._lock, self._write():
            self._db.execute(
                "INSERT INTO baselines (target, activation, metric, recorded_at, start, end_at, "
                "samples) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    target,
                    baseline.activation,
                    baseline.metric,
                    at,
                    baseline.start,
                    baseline.end,
                    json.dumps(list(baseline.samples)),
                ),
            )

    def baselines(self, target: str, activation: float) -> list[comparison.Baseline]:
        """The baselines journaled for ``target``'s activation at ``activation``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT metric, start, end_at, samples FROM baselines "
                "WHERE target = ? AND activation = ? ORDER BY id",
                (target, activation),
            ).fetchall()
        return [
            comparison.Baseline(
                row["metric"],
                activation,
                row["start"],
                row["end_at"],
                tuple(float(v) for v in json.loads(row["samples"])),
            )
            for row in rows
        ]

    def set_committed(self, target: str, at: float | None, release: str | None) -> None:
        """Journal the release commit (``at`` None: a new activation reset it)."""
        with self._lock, self._write():
            self._db.execute(
                "INSERT INTO targets (name, armed, committed_at, committed_release) "
                "VALUES (?, 1, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "committed_at = excluded.committed_at, "
                "committed_release = excluded.committed_release",
                (target, at, release),
            )

    def set_armed(self, target: str, armed: bool, *, at: float, by: str, note: str) -> None:
        """Arm or disarm a target (disarmed after a rollback until an operator re-arms).

        Re-arming closes the open incident and clears the cooldown: what comes next is new.
        """
        with self._lock, self._write():
            if armed:
                self._db.execute(
                    "UPDATE incidents SET status = 'closed', closed_at = ? "
                    "WHERE target = ? AND status = 'open'",
                    (at, target),
                )
            self._db.execute(
                "INSERT INTO targets (name, armed, changed_at, changed_by, note) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET armed = excluded.armed, "
                "changed_at = excluded.changed_at, changed_by = excluded.changed_by, "
                "note = excluded.note",
                (target, int(armed), at, by, note),
            )

    def record(
        self,
        evaluation: model.Evaluation,
        decision: model.Decision,
        *,
        mode: model.Mode,
        outcome: str,
        acted: bool = True,
        ask: ApprovalAsk | None = None,
    ) -> int | None:
        """Journal one evaluation's consequences atomically; return the incident id, if any.

        Writes the evaluation only if it changed the verdict, opens/escalates/closes the
        incident as the decision says, and records the decision if it asked for an action.
        ``acted=False``: the gate could not carry the action out (no executor), so the incident
        is not marked as acted on and the next evaluation asks again. ``ask``: open an approval
        request for it (or bring the pending one up to this decision). Alertmanager alerts that
        fed an action are spent: re-deliveries of them never act again.
        """
        target = decision.target
        with self._lock, self._write():
            last = self._db.execute(
                "SELECT verdict FROM evaluations WHERE target = ? ORDER BY id DESC LIMIT 1",
                (target,),
            ).fetchone()
            if last is None or last["verdict"] != decision.verdict.value:
                self._db.execute(
                    "INSERT INTO evaluations (target, at, verdict, score, reason, firing, signals)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        target,
                        decision.at,
                        decision.verdict.value,
                        decision.score,
                        decision.reason,
                        json.dumps(list(decision.firing)),
                        json.dumps([_signal_json(s) for s in evaluation.signals]),
                    ),
                )
            self._db.execute(
                "INSERT INTO latest (target, at, verdict, score, reason, pid, started)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (target) DO UPDATE SET"
                " at = excluded.at, verdict = excluded.verdict, score = excluded.score,"
                " reason = excluded.reason, pid = excluded.pid, started = excluded.started",
                (
                    target,
                    decision.at,
                    decision.verdict.value,
                    decision.score,
                    decision.reason,
                    os.getpid(),
                    process_start(os.getpid()),
                ),
            )
            row = self._db.execute(  # the decision's own: a person's order is not its to close
                "SELECT id FROM incidents WHERE target = ? AND status = 'open' "
                "AND origin = 'decision' ORDER BY id DESC LIMIT 1",
                (target,),
            ).fetchone()
            incident_id: int | None = row["id"] if row is not None else None
            change = decision.incident
            if change is model.IncidentChange.OPEN or (
                incident_id is None and change is model.IncidentChange.ESCALATE
            ):
                if incident_id is not None:  # a stale open incident: a new one supersedes it
                    self._db.execute(
                        "UPDATE incidents SET status = 'closed', closed_at = ? WHERE id = ?",
                        (decision.at, incident_id),
                    )
                cursor = self._db.execute(
                    "INSERT INTO incidents (target, opened_at, status, verdict, reason) "
                    "VALUES (?, ?, 'open', ?, ?)",
                    (target, decision.at, decision.verdict.value, decision.reason),
                )
                incident_id = cursor.lastrowid
            elif change is model.IncidentChange.ESCALATE:
                self._db.execute(
                    "UPDATE incidents SET verdict = ?, reason = ? WHERE id = ?",
                    (decision.verdict.value, decision.reason, incident_id),
                )
            elif change is model.IncidentChange.CLOSE and incident_id is not None:
                self._db.execute(
                    "UPDATE incidents SET status = 'resolved', closed_at = ? WHERE id = ?",
                    (decision.at, incident_id),
                )
            if decision.action is not model.Action.NONE:
                self._db.execute(
                    "INSERT INTO decisions "
                    "(incident_id, target, at, verdict, action, mode, outcome, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        incident_id,
                        target,
                        decision.at,
                        decision.verdict.value,
                        decision.action.value,
                        mode.value,
                        outcome,
                        decision.reason,
                    ),
                )
                if incident_id is not None and acted:
                    self._db.execute(
                        "UPDATE incidents SET acted = ? WHERE id = ?",
                        (decision.verdict.value, incident_id),
                    )
                    if decision.firing:
                        self._db.executemany(
                            "UPDATE alerts SET spent_by = ? WHERE target = ? AND alertname = ? "
                            "AND status = 'firing' AND spent_by IS NULL",
                            [(incident_id, target, name) for name in decision.firing],
                        )
            if ask is not None:
                self._ask(decision, incident_id, ask)
            return incident_id

    def unact(self, incident_id: int, previous: model.Verdict | None) -> None:
        """Undo ``record``'s "acted on" for an action that could not be carried out after all."""
        with self._lock, self._write():
            self._db.execute(
                "UPDATE incidents SET acted = ? WHERE id = ?",
                (previous.value if previous is not None else None, incident_id),
            )

    def status(self, targets: Sequence[str]) -> list[dict[str, Any]]:
        """Per target, as plain data: armed or not, the last verdict change, and the recent
        incidents, decisions and runs with their steps (``status``, ``GET /api/v1/status``)."""
        report: list[dict[str, Any]] = []
        for target in targets:
            arming = self.arming(target)
            report.append(
                {
                    "target": target,
                    "armed": arming.armed,
                    "committed_at": arming.committed_at,
                    "last_change": last.summary()
                    if (last := self.last_evaluation(target)) is not None
                    else None,
                    "incidents": [_plain(i) for i in self.incidents(target=target, limit=5)],
                    "decisions": [_plain(d) for d in self.decisions(target=target, limit=5)],
                    "approvals": [
                        {**_plain(a), "approved_by": list(a.approvers)}
                        for a in self.approvals(target=target, limit=5)
                    ],
                    "runs": [
                        {**_plain(r), "steps": [_plain(s) for s in self.steps(r.id)]}
                        for r in self.runs(target=target, limit=3)
                    ],
                }
            )
        return report

    def open_incident_id(self, target: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM incidents WHERE target = ? AND status = 'open' "
                "ORDER BY id DESC LIMIT 1",
                (target,),
            ).fetchone()
        return int(row["id"]) if row is not None else None

    def open_manual_incident(
        self,
        target: str,
        *,
        reason: str,
        at: float,
        category: str = "manual",
        by: str = "operator",
        via: str = "cli",
    ) -> int:
        """An incident opened by a person (``rollback --reason``), critical by definition, with
        its decision; ``category`` is ``manual`` or ``security``. It lives beside the decision's
        own incident (which the evaluations keep following) and ends with its run."""
        with self._lock, self._write():
            cursor = self._db.execute(
                "INSERT INTO incidents "
                "(target, opened_at, status, verdict, acted, reason, origin, category)"
                " VALUES (?, ?, 'open', 'rollback', 'rollback', ?, 'order', ?)",
                (target, at, f"{category}: {reason}", category),
            )
            incident = int(cursor.lastrowid or 0)
            self._db.execute(
                "INSERT INTO decisions (incident_id, target, at, verdict, action, mode, outcome,"
                " reason, ordered_by, ordered_via)"
                " VALUES (?, ?, ?, 'rollback', 'rollback', 'manual', ?, ?, ?, ?)",
                (
                    incident,
                    target,
                    at,
                    f"ordered by {by} via {via}",
                    f"{category}: {reason}",
                    by,
                    via,
                ),
            )
            return incident

    def probe_change(self, target: str, *, at: float, healthy: bool, detail: str) -> bool:
        """Journal a round of probes if it turned the other way from the last journaled one."""
        with self._lock, self._write():
            last = self._db.execute(
                "SELECT healthy FROM probe_changes WHERE target = ? ORDER BY id DESC LIMIT 1",
                (target,),
            ).fetchone()
            if last is not None and bool(last["healthy"]) == healthy:
                return False
            self._db.execute(
                "INSERT INTO probe_changes (target, at, healthy, detail) VALUES (?, ?, ?, ?)",
                (target, at, int(healthy), detail),
            )
            return True

    def probe_changes(
        self, target: str, *, since: float | None = None, until: float | None = None
    ) -> list[ProbeTurn]:
        """The probes' turns of ``target`` from ``since`` to ``until`` (both included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, healthy, detail FROM probe_changes WHERE target = ? "
                "AND at >= ? AND at <= ? ORDER BY id",
                (target, *_window(since, until)),
            ).fetchall()
        return [ProbeTurn(r["at"], bool(r["healthy"]), r["detail"]) for r in rows]

    def message_ref(self, incident: int) -> tuple[str, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT channel, ts FROM messages WHERE incident_id = ?", (incident,)
            ).fetchone()
        return (row["channel"], row["ts"]) if row is not None else None

    def remember_message(self, incident: int, channel: str, ts: str) -> None:
        with self._lock, self._write():
            self._db.execute(
                "INSERT INTO messages (incident_id, channel, ts) VALUES (?, ?, ?) "
                "ON CONFLICT (incident_id) DO UPDATE SET channel = excluded.channel, "
                "ts = excluded.ts",
                (incident, channel, ts),
            )

    def incident_open(self, incident_id: int) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT status FROM incidents WHERE id = ?", (incident_id,)
            ).fetchone()
        return row is not None and row["status"] == "open"

    def incident_report(self, incident_id: int) -> dict[str, Any] | None:
        """One incident as plain data, with its decisions, approvals and runs (with steps)."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM incidents WHERE id = ?", (incident_id,)
            ).fetchone()
            if row is None:
                return None
            decisions = self._db.execute(
                "SELECT * FROM decisions WHERE incident_id = ? ORDER BY id", (incident_id,)
            ).fetchall()
            approvals = self._db.execute(
                "SELECT * FROM approvals WHERE incident_id = ? ORDER BY id", (incident_id,)
            ).fetchall()
            runs = self._db.execute(
                "SELECT * FROM runs WHERE incident_id = ? ORDER BY id", (incident_id,)
            ).fetchall()
        return {
            **dict(row),
            "decisions": [dict(d) for d in decisions],
            "approvals": [
                {**dict(a), "approved_by": json.loads(a["approved_by"])} for a in approvals
            ],
            "runs": [
                {**_plain(RunRow(**dict(r))), "steps": [_plain(s) for s in self.steps(r["id"])]}
                for r in runs
            ],
        }

    def incidents(self, *, target: str | None = None, limit: int = 20) -> list[IncidentRow]:
        query = "SELECT * FROM incidents"
        args: tuple[Any, ...] = ()
        if target is not None:
            query += " WHERE target = ?"
            args = (target,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [IncidentRow(**dict(row)) for row in rows]

    def decisions(self, *, target: str | None = None, limit: int = 20) -> list[DecisionRow]:
        query = "SELECT * FROM decisions"
        args: tuple[Any, ...] = ()
        if target is not None:
            query += " WHERE target = ?"
            args = (target,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [DecisionRow(**dict(row)) for row in rows]

    def last_evaluation(self, target: str) -> EvaluationRow | None:
        """The latest verdict change of ``target`` (without its signals)."""
        with self._lock:
            row = self._db.execute(
                "SELECT at, verdict, score, reason, firing FROM evaluations "
                "WHERE target = ? ORDER BY id DESC LIMIT 1",
                (target,),
            ).fetchone()
        if row is None:
            return None
        return EvaluationRow(
            row["at"],
            model.Verdict(row["verdict"]),
            row["score"],
            row["reason"],
            tuple(json.loads(row["firing"])),
        )

    def latest(self, target: str) -> LatestRow | None:
        """The latest evaluation of ``target``, whatever its verdict, and who made it."""
        with self._lock:
            row = self._db.execute(
                "SELECT at, verdict, score, reason, pid, started FROM latest WHERE target = ?",
                (target,),
            ).fetchone()
        if row is None:
            return None
        return LatestRow(
            row["at"],
            model.Verdict(row["verdict"]),
            row["score"],
            row["reason"],
            row["pid"],
            row["started"],
        )

    def armed(self, target: str) -> bool:
        return self.target_state(target).armed

    def evaluations(
        self, target: str, *, since: float | None = None, until: float | None = None
    ) -> list[EvaluationRow]:
        """The verdict changes of ``target`` from ``since`` to ``until`` (both included), oldest
        first, with their signals as journaled (the report's root cause)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, verdict, score, reason, firing, signals FROM evaluations "
                "WHERE target = ? AND at >= ? AND at <= ? ORDER BY at, id",
                (target, *_window(since, until)),
            ).fetchall()
        return [
            EvaluationRow(
                r["at"],
                model.Verdict(r["verdict"]),
                r["score"],
                r["reason"],
                tuple(json.loads(r["firing"])),
                tuple(SignalRecord.of(kept) for kept in json.loads(r["signals"])),
            )
            for r in rows
        ]


def _signal_json(signal: model.Signal) -> dict[str, Any]:
    value = signal.value
    return {
        "name": signal.name,
        "state": signal.state.value,
        "value": value if value is None or value == value else None,  # NaN is not JSON
        "labels": dict(signal.labels),
        "detail": signal.detail,
        # the rule's threshold as fields: the report shows them, never parses the reason
        "threshold": signal.rule.threshold,
        "for_seconds": signal.rule.for_seconds,
    }

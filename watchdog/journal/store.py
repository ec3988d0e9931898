"""What the watchdog may ask of a journal: the seam a second store plugs into.

The SQLite journal (``sqlite.Journal``) is the embedded default. A fleet's PostgreSQL store
implements the same protocol; nothing outside this package may rely on more than it says
(no SQL, no ``sqlite3`` types, no connection). Statuses are the model's enums; rows are the
frozen read models of ``rows``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from watchdog import approval as gate_rules
from watchdog import comparison, model, statedir
from watchdog.journal.rows import (
    AlertRecord,
    ApprovalAsk,
    ApprovalRow,
    Arming,
    AuditRow,
    DecisionRow,
    EvaluationRow,
    IncidentRow,
    Ingested,
    LatestRow,
    ProbeTurn,
    RunRow,
    StepRow,
    UnroutedRecord,
)

STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)
"""What a store raises when its database fails (locked, corrupt, unreachable): callers catch
these, never a driver's own types; a second store adds its driver's base error here."""


class Store(Protocol):
    """A journal: the daemon's memory across restarts and the operators' record."""

    path: Path

    # -- the connection and its identity -----------------------------------------------

    def close(self) -> None: ...

    @property
    def schema_version(self) -> int: ...

    def lost_predecessor(self) -> statedir.Marker | None:
        """The journal this one replaced when it was created, until ``disarm_after_loss``."""
        ...

    def disarm_after_loss(self, targets: Sequence[str], *, at: float, note: str) -> None:
        """Disarm every target and mark the loss handled, in one transaction."""
        ...

    def intact(self) -> str | None:
        """None while the file at ``path`` is the journal this process opened (the same inode)."""
        ...

    def healthy(self) -> bool:
        """True when the database answers a query."""
        ...

    def prune(self, before: float) -> dict[str, int]:
        """Delete verdict changes and alerts older than ``before`` (the retention)."""
        ...

    # -- the decision's memory and record ----------------------------------------------

    def target_state(self, target: str) -> model.TargetState:
        """What the decision must remember about ``target``, as journaled."""
        ...

    def arming(self, target: str) -> Arming:
        """The target's arming as journaled (armed unless someone disarmed it)."""
        ...

    def set_armed(self, target: str, armed: bool, *, at: float, by: str, note: str) -> None:
        """Arm or disarm a target (disarmed after a rollback until an operator re-arms)."""
        ...

    def set_committed(self, target: str, at: float | None, release: str | None) -> None:
        """Journal the release commit (``at`` None: a new activation reset it)."""
        ...

    def record_baseline(self, target: str, baseline: comparison.Baseline, *, at: float) -> None:
        """Journal the fallback's baseline for one activation of the primary (once)."""
        ...

    def baselines(self, target: str, activation: float) -> list[comparison.Baseline]:
        """The baselines journaled for ``target``'s activation at ``activation``."""
        ...

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
        """Journal one evaluation's consequences atomically."""
        ...

    def unact(self, incident_id: int, previous: model.Verdict | None) -> None:
        """Undo ``record``'s "acted on" for an action that could not be carried out after all."""
        ...

    def status(self, targets: Sequence[str]) -> list[dict[str, Any]]:
        """Per target, as plain data."""
        ...

    def open_incident_id(self, target: str) -> int | None: ...

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
        """An incident opened by a person (``rollback --reason``), critical by definition, with its
        decision."""
        ...

    def probe_change(self, target: str, *, at: float, healthy: bool, detail: str) -> bool:
        """Journal a round of probes if it turned the other way from the last journaled one."""
        ...

    def probe_changes(
        self, target: str, *, since: float | None = None, until: float | None = None
    ) -> list[ProbeTurn]: ...

    def message_ref(self, incident: int) -> tuple[str, str] | None: ...

    def remember_message(self, incident: int, channel: str, ts: str) -> None: ...

    def incident_open(self, incident_id: int) -> bool: ...

    def incident_report(self, incident_id: int) -> dict[str, Any] | None:
        """One incident as plain data, with its decisions, approvals and runs (with steps)."""
        ...

    def incidents(self, *, target: str | None = None, limit: int = 20) -> list[IncidentRow]: ...

    def decisions(self, *, target: str | None = None, limit: int = 20) -> list[DecisionRow]: ...

    def latest(self, target: str) -> LatestRow | None:
        """The latest evaluation, whatever its verdict (a heartbeat of the loop)."""
        ...

    def last_evaluation(self, target: str) -> EvaluationRow | None:
        """The latest verdict change of ``target``."""
        ...

    def armed(self, target: str) -> bool: ...

    def evaluations(
        self, target: str, *, since: float | None = None, until: float | None = None
    ) -> list[EvaluationRow]:
        """The verdict changes of ``target`` from ``since`` to ``until`` (both included), oldest
        first, with their signals as journaled (the report's root cause)."""
        ...

    # -- runs and their steps ----------------------------------------------------------

    def open_run(
        self,
        target: str,
        *,
        incident_id: int | None,
        trigger: model.Trigger,
        initiated_by: str,
        reason: str,
        at: float,
    ) -> int:
        """Journal a new run."""
        ...

    def running_run(self, target: str) -> RunRow | None: ...

    def run(self, run_id: int) -> RunRow: ...

    def runs(self, *, target: str | None = None, limit: int = 20) -> list[RunRow]: ...

    def steps(self, run_id: int) -> list[StepRow]: ...

    def step_started(self, run_id: int, seq: int, name: str, *, at: float) -> int:
        """Journal that a step is about to act."""
        ...

    def step_finished(
        self, step_id: int, status: model.StepStatus, detail: str, *, at: float
    ) -> None: ...

    def remember(self, run_id: int, key: str, value: Any) -> None:
        """Add one fact (JSON) to a run."""
        ...

    def finish_run(
        self,
        run_id: int,
        status: model.RunStatus,
        outcome: str,
        *,
        at: float,
        disarm: bool = False,
        close_incident: bool = False,
        step: tuple[int, str] | None = None,
    ) -> bool:
        """End a run."""
        ...

    # -- Alertmanager's alerts ---------------------------------------------------------

    def ingest_alerts(
        self,
        alerts: Sequence[AlertRecord],
        *,
        at: float,
        limit: int | None = None,
        forget_before: float | None = None,
    ) -> Ingested:
        """Keep one delivery's alerts, each (fingerprint, startsAt) once."""
        ...

    def record_unrouted(self, alerts: Sequence[UnroutedRecord], *, at: float, limit: int) -> int:
        """Keep alerts that reach no decision, so ``status`` can say what arrived and why it was not
        taken."""
        ...

    def unrouted_status(self, *, limit: int = 10) -> dict[str, Any]:
        """The unrouted alerts as plain data (``status``)."""
        ...

    def unrouted(self, *, limit: int = 10) -> tuple[int, list[UnroutedRecord]]:
        """How many unrouted alerts are kept, and the most recently delivered ones."""
        ...

    def firing_alerts(self, target: str, *, seen_since: float) -> list[AlertRecord]:
        """Per alert name, the oldest alert of ``target`` still firing and delivered since
        ``seen_since`` (one speaks for its signal), with the latest delivery of any alert of that
        name as its ``last_seen`` (how fresh the evidence is)."""
        ...

    # -- approvals and the audit trail -------------------------------------------------

    def approval(self, approval_id: int) -> ApprovalRow | None: ...

    def approvals(
        self, *, target: str | None = None, status: str | None = None, limit: int = 20
    ) -> list[ApprovalRow]: ...

    def vote(
        self,
        approval_id: int,
        vote: gate_rules.Vote,
        rules: gate_rules.Rules,
        *,
        nonce: str | None = None,
    ) -> tuple[gate_rules.Ruling, ApprovalRow | None]:
        """Apply one vote."""
        ...

    def settle(
        self, approval_id: int, status: gate_rules.Status, *, at: float, by: str, outcome: str
    ) -> bool:
        """End a pending request without a vote (timed out, overtaken)."""
        ...

    def mark_launched(self, approval_id: int, outcome: str) -> None:
        """An approved request's run was started (or joined the one in flight)."""
        ...

    def audit(
        self,
        *,
        at: float,
        via: str,
        actor: str,
        action: str,
        accepted: bool,
        detail: str,
        target: str | None = None,
        approval_id: int | None = None,
        nonce: str | None = None,
    ) -> bool:
        """Journal one request by a person."""
        ...

    def audit_trail(self, *, limit: int = 50) -> list[AuditRow]: ...

    def approval_audit(self, approval_id: int) -> list[AuditRow]:
        """Every request journaled about one approval (votes, refusals, its settling), oldest
        first."""
        ...

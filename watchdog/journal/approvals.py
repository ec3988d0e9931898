"""Approvals and the audit trail: who voted how, through what, counted once per click."""

from __future__ import annotations

import json
import sqlite3

from watchdog import approval as gate_rules
from watchdog import model
from watchdog.journal.core import Core
from watchdog.journal.rows import (
    ApprovalAsk,
    ApprovalRow,
    AuditRow,
)


class Approvals(Core):
    """Approval requests, their votes and the audit trail."""

    def _ask(self, decision: model.Decision, incident_id: int | None, ask: ApprovalAsk) -> None:
        asked = _asked(decision)
        pending = self._db.execute(
            "SELECT id FROM approvals WHERE target = ? AND status = 'pending'", (decision.target,)
        ).fetchone()
        if pending is not None:  # the same people are already asked: bring it up to date
            self._db.execute(
                "UPDATE approvals SET verdict = ?, reason = ?, incident_id = ? WHERE id = ?",
                (asked, decision.reason, incident_id, pending["id"]),
            )
            return
        self._db.execute(
            "INSERT INTO approvals (incident_id, target, requested_at, expires_at, required, "
            "verdict, reason, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
            (
                incident_id,
                decision.target,
                decision.at,
                ask.expires_at,
                ask.required,
                asked,
                decision.reason,
            ),
        )

    def approval(self, approval_id: int) -> ApprovalRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
        return ApprovalRow(**dict(row)) if row is not None else None

    def approvals(
        self, *, target: str | None = None, status: str | None = None, limit: int = 20
    ) -> list[ApprovalRow]:
        clauses, args = [], []
        if target is not None:
            clauses.append("target = ?")
            args.append(target)
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM approvals{where} ORDER BY id DESC LIMIT ?",  # noqa: S608 - fixed clauses
                (*args, limit),
            ).fetchall()
        return [ApprovalRow(**dict(row)) for row in rows]

    def vote(
        self,
        approval_id: int,
        vote: gate_rules.Vote,
        rules: gate_rules.Rules,
        *,
        nonce: str | None = None,
    ) -> tuple[gate_rules.Ruling, ApprovalRow | None]:
        """Apply one vote: read, judge and write in one transaction, with an audit line either
        way. The same ``nonce`` (one Slack click, one API request id) is only ever counted once."""
        actor = next((name for name in vote.identities if name), "unknown")
        action = "approve" if vote.approve else "deny"
        with self._lock, self._write():
            if (
                nonce is not None
                and self._db.execute("SELECT 1 FROM audit WHERE nonce = ?", (nonce,)).fetchone()
            ):
                replay = gate_rules.Ruling(
                    False,
                    gate_rules.Status.PENDING,
                    "this exact request was already received; ignored",
                    refusal=gate_rules.Refusal.REPLAY,
                )  # journaled (without the nonce, which is taken): replays can be an attack
                self._audit(vote.at, vote.via, actor, action, approval_id, None, replay, None)
                return replay, None
            row = self._db.execute(
                "SELECT * FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
            if row is None:
                ruling = gate_rules.Ruling(
                    False,
                    gate_rules.Status.CANCELLED,
                    f"there is no approval #{approval_id}",
                    refusal=gate_rules.Refusal.NOT_FOUND,
                )
                self._audit(vote.at, vote.via, actor, action, approval_id, None, ruling, nonce)
                return ruling, None
            current = ApprovalRow(**dict(row))
            void = self._overtaken(current) if current.status == "pending" else None
            if void is not None:  # settled here, before the next tick would: never approve it
                refusal, why = void
                self._db.execute(
                    "UPDATE approvals SET status = 'cancelled', decided_at = ?, "
                    "decided_by = 'rollback-watchdog', outcome = ? WHERE id = ?",
                    (vote.at, why, approval_id),
                )
                ruling = gate_rules.Ruling(
                    False,
                    gate_rules.Status.CANCELLED,
                    f"approval #{approval_id} is void: {why}",
                    refusal=refusal,
                )
                self._audit(
                    vote.at, vote.via, actor, action, approval_id, current.target, ruling, nonce
                )
                cancelled = self._db.execute(
                    "SELECT * FROM approvals WHERE id = ?", (approval_id,)
                ).fetchone()
                return ruling, ApprovalRow(**dict(cancelled))
            ruling = gate_rules.judge(current.request(), vote, rules)
            self._audit(
                vote.at,
                vote.via,
                ruling.voter or actor,
                action,
                approval_id,
                current.target,
                ruling,
                nonce,
            )
            if ruling.counted:
                approved = list(current.approvers)
                if vote.approve and ruling.voter not in approved:
                    approved.append(ruling.voter)
                decided = ruling.status is not gate_rules.Status.PENDING
                self._db.execute(
                    "UPDATE approvals SET status = ?, approved_by = ?, outcome = ?, "
                    "decided_at = CASE WHEN ? THEN ? ELSE decided_at END, "
                    "decided_by = CASE WHEN ? THEN ? ELSE decided_by END WHERE id = ?",
                    (
                        ruling.status.value,
                        json.dumps(approved),
                        ruling.message,
                        decided,
                        vote.at,
                        decided,
                        ", ".join(approved) if vote.approve else ruling.voter,
                        approval_id,
                    ),
                )
            updated = self._db.execute(
                "SELECT * FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
        return ruling, ApprovalRow(**dict(updated))

    def _overtaken(self, request: ApprovalRow) -> tuple[gate_rules.Refusal, str] | None:
        """Why a pending request can no longer be approved, if it cannot (lock held)."""
        armed = self._db.execute(
            "SELECT armed FROM targets WHERE name = ?", (request.target,)
        ).fetchone()
        if armed is not None and not armed["armed"]:
            return gate_rules.Refusal.DISARMED, "the target was already rolled back"
        if request.incident_id is not None:
            incident = self._db.execute(
                "SELECT status FROM incidents WHERE id = ?", (request.incident_id,)
            ).fetchone()
            if incident is None or incident["status"] != "open":
                return gate_rules.Refusal.OVERTAKEN, "its incident has resolved"
        return None

    def settle(
        self, approval_id: int, status: gate_rules.Status, *, at: float, by: str, outcome: str
    ) -> bool:
        """End a pending request without a vote (timed out, overtaken); False if it was no
        longer pending (someone decided first)."""
        with self._lock, self._write():
            cursor = self._db.execute(
                "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, outcome = ? "
                "WHERE id = ? AND status = 'pending'",
                (status.value, at, by, outcome, approval_id),
            )
            if cursor.rowcount:
                row = self._db.execute(
                    "SELECT target FROM approvals WHERE id = ?", (approval_id,)
                ).fetchone()
                self._db.execute(
                    "INSERT INTO audit (at, via, actor, action, approval_id, target, accepted, "
                    "detail) VALUES (?, 'gate', ?, ?, ?, ?, 1, ?)",
                    (at, by, status.value, approval_id, row["target"], outcome),
                )
            return bool(cursor.rowcount)

    def mark_launched(self, approval_id: int, outcome: str) -> None:
        """An approved request's run was started (or joined the one in flight)."""
        with self._lock, self._write():
            self._db.execute(
                "UPDATE approvals SET launched = 1, outcome = CASE WHEN outcome = '' THEN ? "
                "ELSE outcome || '; ' || ? END WHERE id = ?",
                (outcome, outcome, approval_id),
            )

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
        """Journal one request by a person; False if ``nonce`` was seen before (a replay)."""
        with self._lock:
            try:
                with self._write():
                    self._db.execute(
                        "INSERT INTO audit (at, via, actor, action, approval_id, target, "
                        "accepted, detail, nonce) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (at, via, actor, action, approval_id, target, int(accepted), detail, nonce),
                    )
            except sqlite3.IntegrityError:
                return False
        return True

    def audit_trail(self, *, limit: int = 50) -> list[AuditRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [AuditRow(**dict(row)) for row in rows]

    def _audit(
        self,
        at: float,
        via: str,
        actor: str,
        action: str,
        approval_id: int | None,
        target: str | None,
        ruling: gate_rules.Ruling,
        nonce: str | None,
    ) -> None:
        self._db.execute(
            "INSERT INTO audit (at, via, actor, action, approval_id, target, accepted, detail, "
            "nonce) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                at,
                via,
                actor,
                action,
                approval_id,
                target,
                int(ruling.counted),
                ruling.message,
                nonce,
            ),
        )

    def approval_audit(self, approval_id: int) -> list[AuditRow]:
        """Every request journaled about one approval (votes, refusals, its settling), oldest
        first: who decided it and through what (the report's approval line)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM audit WHERE approval_id = ? ORDER BY id", (approval_id,)
            ).fetchall()
        return [AuditRow(**dict(row)) for row in rows]


def _asked(decision: model.Decision) -> str:
    """What people are asked: a rollback, or a proposal. A critical verdict the loop guard or
    the release commit turned into a proposal is asked as one, so it never proceeds on its own
    when the approval times out."""
    if decision.action is model.Action.PROPOSE:
        return model.Verdict.PROPOSE.value
    return decision.verdict.value

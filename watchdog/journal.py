"""The journal: what the watchdog saw, decided and did, in SQLite in the state directory.

It is the daemon's memory across restarts (is the target armed? is an incident open? what was
already acted on?) and the operators' record afterwards. SQLite in WAL mode is the embedded
default: nothing to install, safe against a crash mid-write, readable by ``status`` while the
daemon writes. The schema is versioned with ``PRAGMA user_version``; each migration runs once,
in order, in a transaction.

Only evaluations that changed the verdict are kept (a row every 15 s would bury the story);
every incident and every decision that asked for an action is kept.

The class is synchronous and thread-safe; the daemon calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import structlog

from watchdog import approval as gate_rules
from watchdog import errors, model, statedir

log = structlog.get_logger("watchdog.journal")

DATABASE_NAME = "journal.sqlite3"

MIGRATIONS: Sequence[str] = (
    # 1: targets, verdict changes, incidents, decisions
    """
    CREATE TABLE targets (
        name        TEXT PRIMARY KEY,
        armed       INTEGER NOT NULL DEFAULT 1 CHECK (armed IN (0, 1)),
        changed_at  REAL,
        changed_by  TEXT,
        note        TEXT
    );
    CREATE TABLE evaluations (
        id       INTEGER PRIMARY KEY,
        target   TEXT NOT NULL,
        at       REAL NOT NULL,
        verdict  TEXT NOT NULL,
        score    REAL NOT NULL,
        reason   TEXT NOT NULL,
        firing   TEXT NOT NULL,   -- JSON list of signal names
        signals  TEXT NOT NULL    -- JSON list of {name, state, value, labels, detail}
    );
    CREATE INDEX evaluations_target_at ON evaluations (target, at);
    CREATE TABLE incidents (
        id         INTEGER PRIMARY KEY,
        target     TEXT NOT NULL,
        opened_at  REAL NOT NULL,
        closed_at  REAL,
        status     TEXT NOT NULL CHECK (status IN ('open', 'resolved', 'closed')),
        verdict    TEXT NOT NULL,   -- the worst verdict seen
        acted      TEXT,            -- the worst verdict an action was emitted for
        reason     TEXT NOT NULL
    );
    CREATE INDEX incidents_target_status ON incidents (target, status);
    CREATE TABLE decisions (
        id           INTEGER PRIMARY KEY,
        incident_id  INTEGER REFERENCES incidents (id),
        target       TEXT NOT NULL,
        at           REAL NOT NULL,
        verdict      TEXT NOT NULL,
        action       TEXT NOT NULL,
        mode         TEXT NOT NULL,
        outcome      TEXT NOT NULL,
        reason       TEXT NOT NULL
    );
    CREATE INDEX decisions_incident ON decisions (incident_id);
    """,
    # 2: rollback runs and their steps; at most one run in flight per target
    """
    CREATE TABLE runs (
        id            INTEGER PRIMARY KEY,
        target        TEXT NOT NULL,
        incident_id   INTEGER REFERENCES incidents (id),
        trigger       TEXT NOT NULL,     -- auto | approved | manual
        initiated_by  TEXT NOT NULL,
        reason        TEXT NOT NULL,
        started_at    REAL NOT NULL,
        finished_at   REAL,
        status        TEXT NOT NULL CHECK (status IN
                        ('running', 'succeeded', 'aborted', 'failed', 'restored', 'interrupted')),
        outcome       TEXT NOT NULL DEFAULT '',
        data          TEXT NOT NULL DEFAULT '{}'   -- JSON: backup path, snapshot, verification
    );
    CREATE UNIQUE INDEX runs_one_in_flight ON runs (target) WHERE status = 'running';
    CREATE TABLE steps (
        id           INTEGER PRIMARY KEY,
        run_id       INTEGER NOT NULL REFERENCES runs (id),
        seq          INTEGER NOT NULL,
        name         TEXT NOT NULL,
        started_at   REAL NOT NULL,
        finished_at  REAL,
        status       TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'skipped')),
        detail       TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX steps_run ON steps (run_id, seq);
    """,
    # 3: alerts from Alertmanager (de-duplicated), approvals, the audit trail, Slack messages;
    # incidents opened by a person's order are kept apart from the decision's own
    """
    ALTER TABLE incidents ADD COLUMN origin TEXT NOT NULL DEFAULT 'decision'
        CHECK (origin IN ('decision', 'order'));
    CREATE TABLE alerts (
        fingerprint  TEXT NOT NULL,
        starts_at    REAL NOT NULL,
        target       TEXT NOT NULL,
        alertname    TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
        labels       TEXT NOT NULL,      -- JSON
        annotations  TEXT NOT NULL,      -- JSON
        first_seen   REAL NOT NULL,
        last_seen    REAL NOT NULL,
        deliveries   INTEGER NOT NULL DEFAULT 1,
        resolved_at  REAL,
        spent_by     INTEGER REFERENCES incidents (id),   -- the incident it was acted on in
        PRIMARY KEY (fingerprint, starts_at)
    );
    CREATE INDEX alerts_target_status ON alerts (target, status);
    CREATE TABLE approvals (
        id            INTEGER PRIMARY KEY,
        incident_id   INTEGER REFERENCES incidents (id),
        target        TEXT NOT NULL,
        requested_at  REAL NOT NULL,
        expires_at    REAL NOT NULL,
        required      INTEGER NOT NULL,
        verdict       TEXT NOT NULL,
        reason        TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN
                        ('pending', 'approved', 'denied', 'expired', 'cancelled')),
        approved_by   TEXT NOT NULL DEFAULT '[]',   -- JSON list of approvers, in order
        decided_at    REAL,
        decided_by    TEXT,
        outcome       TEXT NOT NULL DEFAULT '',
        launched      INTEGER NOT NULL DEFAULT 0    -- an approved run was started
    );
    CREATE UNIQUE INDEX approvals_one_pending ON approvals (target) WHERE status = 'pending';
    CREATE TABLE audit (
        id           INTEGER PRIMARY KEY,
        at           REAL NOT NULL,
        via          TEXT NOT NULL,       -- slack | api | cli | gate
        actor        TEXT NOT NULL,
        action       TEXT NOT NULL,       -- approve | deny | rollback | expire | cancel ...
        approval_id  INTEGER,
        target       TEXT,
        accepted     INTEGER NOT NULL CHECK (accepted IN (0, 1)),
        detail       TEXT NOT NULL,
        nonce        TEXT                 -- one click or request, counted once
    );
    CREATE UNIQUE INDEX audit_nonce ON audit (nonce) WHERE nonce IS NOT NULL;
    CREATE TABLE messages (
        incident_id  INTEGER PRIMARY KEY REFERENCES incidents (id),
        channel      TEXT NOT NULL,
        ts           TEXT NOT NULL
    );
    """,
    # 4: when the synthetic probes turned from passing to failing and back (the report's
    # downtime: from the first failing probe to the first passing one on the fallback)
    """
    CREATE TABLE probe_changes (
        id       INTEGER PRIMARY KEY,
        target   TEXT NOT NULL,
        at       REAL NOT NULL,
        healthy  INTEGER NOT NULL CHECK (healthy IN (0, 1)),
        detail   TEXT NOT NULL   -- the failing probes, or "all passed"
    );
    CREATE INDEX probe_changes_target_at ON probe_changes (target, at);
    """,
    # 5: alerts that reach no decision (unrouted: no target, or not a signal there), kept
    # bounded; the journal's identity (a file deleted or replaced under a running daemon, or
    # a state directory that lost its journal, is noticed); alerts pruned by age
    """
    CREATE TABLE unrouted_alerts (
        fingerprint  TEXT NOT NULL,
        starts_at    REAL NOT NULL,
        alertname    TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
        reason       TEXT NOT NULL,      -- model.Unrouted
        detail       TEXT NOT NULL,
        target       TEXT,               -- the target it belongs to (not_a_signal)
        labels       TEXT NOT NULL,      -- JSON
        first_seen   REAL NOT NULL,
        last_seen    REAL NOT NULL,
        deliveries   INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (fingerprint, starts_at)
    );
    CREATE INDEX unrouted_alerts_last_seen ON unrouted_alerts (last_seen);
    CREATE INDEX alerts_last_seen ON alerts (last_seen);
    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    """,
    # 6: an interrupted step has a status of its own (it was 'failed' with an "interrupted:"
    # detail); who ordered a rollback, through what and in which category are fields (they
    # were only prose in the decision's outcome and the incident's reason)
    """
    CREATE TABLE steps_6 (
        id           INTEGER PRIMARY KEY,
        run_id       INTEGER NOT NULL REFERENCES runs (id),
        seq          INTEGER NOT NULL,
        name         TEXT NOT NULL,
        started_at   REAL NOT NULL,
        finished_at  REAL,
        status       TEXT NOT NULL CHECK (status IN
                       ('running', 'ok', 'failed', 'skipped', 'interrupted')),
        detail       TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO steps_6 (id, run_id, seq, name, started_at, finished_at, status, detail)
        SELECT id, run_id, seq, name, started_at, finished_at,
               CASE WHEN status = 'failed' AND detail LIKE 'interrupted:%'
                    THEN 'interrupted' ELSE status END,
               detail
        FROM steps;
    DROP TABLE steps;
    ALTER TABLE steps_6 RENAME TO steps;
    CREATE INDEX steps_run ON steps (run_id, seq);
    ALTER TABLE incidents ADD COLUMN category TEXT /* an order's: manual | security */;
    ALTER TABLE decisions ADD COLUMN ordered_by TEXT /* an order's: the person */;
    ALTER TABLE decisions ADD COLUMN ordered_via TEXT /* an order's: cli | api | slack */;
    UPDATE incidents SET category = CASE WHEN reason LIKE 'security:%' THEN 'security'
                                         ELSE 'manual' END
        WHERE origin = 'order';
    UPDATE decisions
        SET ordered_by = substr(outcome, 12, instr(outcome, ' via ') - 12),
            ordered_via = substr(outcome, instr(outcome, ' via ') + 5)
        WHERE mode = 'manual' AND outcome LIKE 'ordered by % via %';
    """,
)


@dataclass(frozen=True, slots=True)
class Arming:
    """Whether a target may be acted on, and who said so when."""

    armed: bool
    changed_at: float | None = None
    by: str | None = None


RunInFlight = errors.RunInFlight


@dataclass(frozen=True, slots=True)
class RunRow:
    """One execution of the rollback runbook."""

    id: int
    target: str
    incident_id: int | None
    trigger: str
    initiated_by: str
    reason: str
    started_at: float
    finished_at: float | None
    status: str
    outcome: str
    data: str

    @property
    def facts(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.data)
        return loaded


@dataclass(frozen=True, slots=True)
class StepRow:
    """One step of a run, as journaled before and after it ran."""

    id: int
    run_id: int
    seq: int
    name: str
    started_at: float
    finished_at: float | None
    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """An incident as ``status`` shows it."""

    id: int
    target: str
    opened_at: float
    closed_at: float | None
    status: str
    verdict: str
    acted: str | None
    reason: str
    origin: str = "decision"  # or "order": opened by a person's rollback order
    category: str | None = None  # an order's: manual | security


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """A decision that asked for an action, and what came of it."""

    id: int
    incident_id: int | None
    target: str
    at: float
    verdict: str
    action: str
    mode: str
    outcome: str
    reason: str
    ordered_by: str | None = None  # an order's: the person
    ordered_via: str | None = None  # an order's: cli | api | slack


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert of a delivery, routed to its target, as the journal keeps it."""

    fingerprint: str
    starts_at: float
    target: str
    alertname: str
    status: str  # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    last_seen: float | None = None  # as read back: its latest delivery


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one delivery changed: alerts new to us, re-deliveries, and resolutions; and the
    new ones dropped because ``max_alerts`` were already kept."""

    new_firing: tuple[AlertRecord, ...] = ()
    repeated: int = 0
    resolved: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class UnroutedRecord:
    """An alert that reaches no decision, as the journal keeps it (``status`` shows them)."""

    fingerprint: str
    starts_at: float
    alertname: str
    status: str  # firing | resolved
    reason: model.Unrouted
    detail: str
    labels: dict[str, str]
    target: str | None = None
    last_seen: float | None = None
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class ApprovalAsk:
    """Ask people to approve the decision being recorded."""

    expires_at: float
    required: int


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """An approval request and where it stands."""

    id: int
    incident_id: int | None
    target: str
    requested_at: float
    expires_at: float
    required: int
    verdict: str
    reason: str
    status: str
    approved_by: str
    decided_at: float | None
    decided_by: str | None
    outcome: str
    launched: int

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(json.loads(self.approved_by))

    def request(self) -> gate_rules.Request:
        return gate_rules.Request(
            id=self.id,
            target=self.target,
            incident=self.incident_id,
            requested_at=self.requested_at,
            expires_at=self.expires_at,
            required=self.required,
            status=gate_rules.Status(self.status),
            approved_by=self.approvers,
            verdict=self.verdict,
        )


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One thing a person (or the gate on their behalf) asked for, and whether it was taken."""

    id: int
    at: float
    via: str
    actor: str
    action: str
    approval_id: int | None
    target: str | None
    accepted: int
    detail: str
    nonce: str | None


class Journal:
    """One SQLite database; open it with ``Journal.open(state_dir)``."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.path = path
        self._identity = _file_identity(path)
        self._lost: str | None = None
        self._losing = threading.Lock()
        self.journal_id = ""
        self.created_at = 0.0

    @classmethod
    def open(cls, state_dir: Path) -> Journal:
        """Open (creating and migrating as needed) the journal in ``state_dir``. A journal
        created here while the directory's marker names another one records that loss in
        itself, in the transaction that creates it (``lost_predecessor``)."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / DATABASE_NAME
        if not path.exists():
            _set_aside_orphans(path)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # never 0644 via umask
        return cls._connect(path, statedir.read_marker(state_dir))

    @classmethod
    def open_existing(cls, state_dir: Path) -> Journal:
        """Open the journal a daemon made (the CLI's reading and re-arming commands);
        ``InputError`` if there is none -- nothing is created."""
        path = state_dir / DATABASE_NAME
        if not path.is_file():
            raise errors.InputError(
                f"no journal at {path}: has `rollback-watchdog run` started with this config?"
            )
        return cls._connect(path, statedir.read_marker(state_dir))

    @classmethod
    def _connect(cls, path: Path, marker: statedir.Marker | None) -> Journal:
        connection = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a crash of ours
        connection.execute("PRAGMA cache_size=-1024")  # KiB: a small daemon, a bounded cache
        connection.execute("PRAGMA foreign_keys=ON")
        journal = cls(connection, path)
        journal._migrate()
        journal._identify(marker)
        return journal

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._lock:
            current = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {current}, newer than this watchdog "
                    f"({len(MIGRATIONS)}): upgrade rollback-watchdog"
                )
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _statements(script):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {version}")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")

    def _identify(self, marker: statedir.Marker | None) -> None:
        """This journal's id and creation time, made once. A journal that has none is new
        (whatever the file looked like: missing, empty, 0 bytes); if the directory's marker
        names another journal, that one was lost, and the new journal says so itself."""
        with self._lock, _transaction(self._db):
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if "journal_id" not in rows:
                fresh = {"journal_id": uuid.uuid4().hex, "created_at": repr(time.time())}
                if marker is not None:
                    fresh["lost_journal"] = marker.journal_id
                    fresh["lost_created_at"] = repr(marker.created_at)
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)", list(fresh.items())
                )
                rows = fresh
        self.journal_id, self.created_at = rows["journal_id"], float(rows["created_at"])

    def lost_predecessor(self) -> statedir.Marker | None:
        """The journal this one replaced when it was created, until ``disarm_after_loss``."""
        with self._lock:
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if "lost_journal" not in rows or "lost_handled_at" in rows:
            return None
        return statedir.Marker(rows["lost_journal"], float(rows["lost_created_at"]))

    def disarm_after_loss(self, targets: Sequence[str], *, at: float, note: str) -> None:
        """Disarm every target and mark the loss handled, in one transaction: a crash in
        between leaves both undone, and the next start does it again."""
        with self._lock, self._write():
            for target in targets:
                self._db.execute(
                    "INSERT INTO targets (name, armed, changed_at, changed_by, note) "
                    "VALUES (?, 0, ?, 'rollback-watchdog', ?) ON CONFLICT (name) DO UPDATE SET "
                    "armed = 0, changed_at = excluded.changed_at, "
                    "changed_by = excluded.changed_by, note = excluded.note",
                    (target, at, note),
                )
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('lost_handled_at', ?)", (repr(at),)
            )

    # -- is this still the journal we opened? ----------------------------------------------

    def intact(self) -> str | None:
        """None while the file at ``path`` is the journal this process opened (the same
        inode); else what happened to it -- deleted, or another file put in its place --
        which sticks until a restart. (A copy written over the open file in place keeps the
        inode: SQLite's own checks are all that see that.)"""
        if self._lost is None and (problem := self._changed()) is not None:
            self._lose(problem)
        return self._lost

    def _changed(self) -> str | None:
        try:
            identity = _file_identity(self.path)
        except FileNotFoundError:
            return f"{self.path} was deleted"
        except OSError as exc:
            return f"{self.path} cannot be read: {exc.strerror}"
        if identity != self._identity:
            return f"{self.path} was replaced by another file"
        return None

    def _lose(self, problem: str) -> None:
        with self._losing:  # found by a write and by readiness at once: said once
            if self._lost is not None:
                return
            self._lost = (
                f"the journal is not the one this daemon opened ({problem}): nothing written "
                "now would survive a restart, so no action is taken; find out what happened to "
                "it, then restart the watchdog"
            )
        log.error("journal lost", problem=problem, path=str(self.path), action="none until restart")

    @contextlib.contextmanager
    def _write(self, *, in_flight: bool = False) -> Iterator[None]:
        """A write transaction on a journal still ours (lock held by the caller). A run already
        in flight (``in_flight``) keeps journaling even to a lost file, and its log lines say
        the same: stopping it halfway would leave the service down."""
        if self._lost is None and (problem := self._changed()) is not None:
            self._lose(problem)
        if self._lost is not None and not in_flight:
            raise errors.JournalLost(self._lost)
        with _transaction(self._db):
            yield

    def healthy(self) -> bool:
        """True when the database answers a query."""
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    # -- the decision's memory -------------------------------------------------------------

    def target_state(self, target: str) -> model.TargetState:
        """What the decision must remember about ``target``, as journaled."""
        with self._lock:
            armed_row = self._db.execute(
                "SELECT armed, changed_at FROM targets WHERE name = ?", (target,)
            ).fetchone()
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
        armed = bool(armed_row["armed"]) if armed_row is not None else True
        return model.TargetState(
            armed=armed,
            armed_at=armed_row["changed_at"] if armed and armed_row is not None else None,
            incident=incident,
            last_closed_at=closed_row["closed_at"] if closed_row is not None else None,
            last_closed_verdict=model.Verdict(closed_row["verdict"]) if closed_row else None,
        )

    def arming(self, target: str) -> Arming:
        """The target's arming as journaled (armed unless someone disarmed it)."""
        with self._lock:
            row = self._db.execute(
                "SELECT armed, changed_at, changed_by FROM targets WHERE name = ?", (target,)
            ).fetchone()
        if row is None:
            return Arming(armed=True)
        return Arming(bool(row["armed"]), row["changed_at"], row["changed_by"])

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

    # -- recording -------------------------------------------------------------------------

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

    def _ask(self, decision: model.Decision, incident_id: int | None, ask: ApprovalAsk) -> None:
        pending = self._db.execute(
            "SELECT id FROM approvals WHERE target = ? AND status = 'pending'", (decision.target,)
        ).fetchone()
        if pending is not None:  # the same people are already asked: bring it up to date
            self._db.execute(
                "UPDATE approvals SET verdict = ?, reason = ?, incident_id = ? WHERE id = ?",
                (decision.verdict.value, decision.reason, incident_id, pending["id"]),
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
                decision.verdict.value,
                decision.reason,
            ),
        )

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
            report.append(
                {
                    "target": target,
                    "armed": self.target_state(target).armed,
                    "last_change": self.last_evaluation(target),
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

    def prune(self, before: float) -> dict[str, int]:
        """Delete verdict changes and alerts older than ``before`` (the retention); each
        target's latest verdict change stays, and those that led to a run (its report reads
        them), as do incidents, approvals, runs and the audit trail. How many rows went."""
        with self._lock, self._write():
            evaluations = self._db.execute(  # a run's report reads those behind its incident
                "DELETE FROM evaluations WHERE at < ? AND id NOT IN "
                "(SELECT MAX(id) FROM evaluations GROUP BY target) AND NOT EXISTS "
                "(SELECT 1 FROM incidents JOIN runs ON runs.incident_id = incidents.id "
                "WHERE incidents.target = evaluations.target "
                "AND evaluations.at BETWEEN incidents.opened_at AND runs.started_at)",
                (before,),
            ).rowcount
            alerts = self._db.execute(
                "DELETE FROM alerts WHERE last_seen < ? AND (spent_by IS NULL OR spent_by NOT IN "
                "(SELECT id FROM incidents WHERE status = 'open'))",
                (before,),
            ).rowcount
            unrouted = self._db.execute(
                "DELETE FROM unrouted_alerts WHERE last_seen < ?", (before,)
            ).rowcount
        return {"evaluations": evaluations, "alerts": alerts, "unrouted_alerts": unrouted}

    # -- runs ------------------------------------------------------------------------------

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
        """Journal a new run; ``RunInFlight`` if one is already running for ``target``."""
        with self._lock:
            try:
                with self._write():
                    cursor = self._db.execute(
                        "INSERT INTO runs (target, incident_id, trigger, initiated_by, reason, "
                        "started_at, status) VALUES (?, ?, ?, ?, ?, ?, 'running')",
                        (target, incident_id, trigger, initiated_by, reason, at),
                    )
                    return int(cursor.lastrowid or 0)
            except sqlite3.IntegrityError:
                row = self._db.execute(
                    "SELECT id FROM runs WHERE target = ? AND status = 'running'", (target,)
                ).fetchone()
                raise RunInFlight(int(row["id"]) if row else -1) from None

    def running_run(self, target: str) -> RunRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM runs WHERE target = ? AND status = 'running'", (target,)
            ).fetchone()
        return RunRow(**dict(row)) if row is not None else None

    def run(self, run_id: int) -> RunRow:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run #{run_id}")
        return RunRow(**dict(row))

    def runs(self, *, target: str | None = None, limit: int = 20) -> list[RunRow]:
        query, args = "SELECT * FROM runs", cast(tuple[Any, ...], ())
        if target is not None:
            query, args = query + " WHERE target = ?", (target,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [RunRow(**dict(row)) for row in rows]

    def steps(self, run_id: int) -> list[StepRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM steps WHERE run_id = ? ORDER BY seq, id", (run_id,)
            ).fetchall()
        return [StepRow(**dict(row)) for row in rows]

    def step_started(self, run_id: int, seq: int, name: str, *, at: float) -> int:
        """Journal that a step is about to act; the row says 'running' until it ends."""
        with self._lock, self._write(in_flight=True):
            cursor = self._db.execute(
                "INSERT INTO steps (run_id, seq, name, started_at, status) "
                "VALUES (?, ?, ?, ?, 'running')",
                (run_id, seq, name, at),
            )
            return int(cursor.lastrowid or 0)

    def step_finished(
        self, step_id: int, status: model.StepStatus, detail: str, *, at: float
    ) -> None:
        with self._lock, self._write(in_flight=True):
            self._db.execute(
                "UPDATE steps SET status = ?, detail = ?, finished_at = ? WHERE id = ?",
                (status, detail, at, step_id),
            )

    def remember(self, run_id: int, key: str, value: Any) -> None:
        """Add one fact (JSON) to a run: the backup path, a snapshot, the verification."""
        with self._lock, self._write(in_flight=True):
            row = self._db.execute("SELECT data FROM runs WHERE id = ?", (run_id,)).fetchone()
            data = json.loads(row["data"]) if row else {}
            data[key] = value
            self._db.execute(
                "UPDATE runs SET data = ? WHERE id = ?", (json.dumps(data, default=str), run_id)
            )

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
        """End a run; a successful rollback also disarms the target and closes the incident,
        in the same transaction, so no crash can leave one done without the others. Only a run
        still running is ended; False if it had ended already."""
        with self._lock, self._write(in_flight=True):
            row = self._db.execute(
                "SELECT target, incident_id FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            ended = self._db.execute(
                "UPDATE runs SET status = ?, outcome = ?, finished_at = ? "
                "WHERE id = ? AND status = 'running'",
                (status, outcome, at, run_id),
            )
            if ended.rowcount != 1:
                return False  # it had already ended: its first ending stands
            if step is not None:
                self._db.execute(
                    "UPDATE steps SET status = 'ok', detail = ?, finished_at = ? WHERE id = ?",
                    (step[1], at, step[0]),
                )
            if disarm:
                self._db.execute(
                    "INSERT INTO targets (name, armed, changed_at, changed_by, note) "
                    "VALUES (?, 0, ?, 'rollback', ?) ON CONFLICT (name) DO UPDATE SET "
                    "armed = 0, changed_at = excluded.changed_at, "
                    "changed_by = excluded.changed_by, note = excluded.note",
                    (row["target"], at, f"rolled back by run #{run_id}"),
                )
            if close_incident and row["incident_id"] is not None:
                self._db.execute(
                    "UPDATE incidents SET status = 'closed', closed_at = ? "
                    "WHERE id = ? AND status = 'open'",
                    (at, row["incident_id"]),
                )
            return True

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

    # -- alerts from Alertmanager -----------------------------------------------------------

    def ingest_alerts(
        self,
        alerts: Sequence[AlertRecord],
        *,
        at: float,
        limit: int | None = None,
        forget_before: float | None = None,
    ) -> Ingested:
        """Keep one delivery's alerts, each (fingerprint, startsAt) once: a re-delivery only
        refreshes it. A resolution sticks (a late retry of the firing state cannot undo it).

        At most ``limit`` alerts are kept. When full, those not delivered since
        ``forget_before`` make room first; a new alert that still finds none is dropped and
        counted, so a flood can never push out the evidence already kept."""
        new: list[AlertRecord] = []
        repeated = resolved = dropped = 0
        with self._lock, self._write():
            kept = self._count("alerts") if limit is not None else 0
            purged = False
            for alert in alerts:
                if limit is not None and kept >= limit and not self._known(alert):
                    if not purged:
                        kept -= self._purge_alerts(forget_before)
                        purged = True
                    if kept >= limit:
                        dropped += 1
                        continue
                row = self._db.execute(
                    "INSERT INTO alerts (fingerprint, starts_at, target, alertname, status, "
                    "labels, annotations, first_seen, last_seen, resolved_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ? = 'resolved' THEN ? END) "
                    "ON CONFLICT (fingerprint, starts_at) DO UPDATE SET "
                    "last_seen = excluded.last_seen, deliveries = alerts.deliveries + 1, "
                    "resolved_at = CASE WHEN alerts.status = 'firing' AND "
                    "excluded.status = 'resolved' THEN excluded.last_seen "
                    "ELSE alerts.resolved_at END, "
                    "status = CASE WHEN alerts.status = 'resolved' THEN 'resolved' "
                    "ELSE excluded.status END "
                    "RETURNING deliveries, status",
                    (
                        alert.fingerprint,
                        alert.starts_at,
                        alert.target,
                        alert.alertname,
                        alert.status,
                        json.dumps(alert.labels),
                        json.dumps(alert.annotations),
                        at,
                        at,
                        alert.status,
                        at,
                    ),
                ).fetchone()
                if row["deliveries"] == 1:
                    kept += 1
                    if alert.status == "firing":
                        new.append(alert)
                else:
                    repeated += 1
                if alert.status == "resolved":
                    resolved += 1
        return Ingested(tuple(new), repeated, resolved, dropped)

    def _count(self, table: str) -> int:
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 - our own table names

    def _known(self, alert: AlertRecord) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM alerts WHERE fingerprint = ? AND starts_at = ?",
                (alert.fingerprint, alert.starts_at),
            ).fetchone()
            is not None
        )

    def _purge_alerts(self, forget_before: float | None) -> int:
        """Forget the alerts not delivered again since ``forget_before`` (lock held, in a
        transaction); how many. Only those: a resolved row must outlive a late retry of its
        firing state (or the retry would act), and a spent one the re-deliveries of its alert
        (or they would act again) -- Alertmanager re-sends well within ``forget_after``."""
        if forget_before is None:
            return 0
        cursor = self._db.execute("DELETE FROM alerts WHERE last_seen < ?", (forget_before,))
        return cursor.rowcount

    def record_unrouted(self, alerts: Sequence[UnroutedRecord], *, at: float, limit: int) -> int:
        """Keep alerts that reach no decision, so ``status`` can say what arrived and why it
        was not taken; at most ``limit``, the least recently delivered go first. How many
        were let go to stay within it."""
        if not alerts:
            return 0
        with self._lock, self._write():
            self._db.executemany(
                "INSERT INTO unrouted_alerts (fingerprint, starts_at, alertname, status, reason, "
                "detail, target, labels, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (fingerprint, starts_at) DO UPDATE SET "
                "last_seen = excluded.last_seen, deliveries = unrouted_alerts.deliveries + 1, "
                "status = CASE WHEN unrouted_alerts.status = 'resolved' THEN 'resolved' "
                "ELSE excluded.status END, reason = excluded.reason, detail = excluded.detail, "
                "target = excluded.target",
                [
                    (
                        alert.fingerprint,
                        alert.starts_at,
                        alert.alertname,
                        alert.status,
                        alert.reason.value,
                        alert.detail,
                        alert.target,
                        json.dumps(alert.labels),
                        at,
                        at,
                    )
                    for alert in alerts
                ],
            )
            over = self._count("unrouted_alerts") - limit
            if over > 0:
                self._db.execute(
                    "DELETE FROM unrouted_alerts WHERE rowid IN (SELECT rowid FROM "
                    "unrouted_alerts ORDER BY last_seen, rowid LIMIT ?)",
                    (over,),
                )
            return max(over, 0)

    def unrouted_status(self, *, limit: int = 10) -> dict[str, Any]:
        """The unrouted alerts as plain data (``status``): how many are kept, the latest few."""
        total, latest = self.unrouted(limit=limit)
        return {
            "kept": total,
            "latest": [
                {
                    "alertname": one.alertname,
                    "status": one.status,
                    "reason": one.reason.value,
                    "detail": one.detail,
                    "target": one.target,
                    "labels": one.labels,
                    "deliveries": one.deliveries,
                    "last_seen": one.last_seen,
                }
                for one in latest
            ],
        }

    def unrouted(self, *, limit: int = 10) -> tuple[int, list[UnroutedRecord]]:
        """How many unrouted alerts are kept, and the most recently delivered ones."""
        with self._lock:
            total = self._count("unrouted_alerts")
            rows = self._db.execute(
                "SELECT * FROM unrouted_alerts ORDER BY last_seen DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return total, [
            UnroutedRecord(
                fingerprint=row["fingerprint"],
                starts_at=row["starts_at"],
                alertname=row["alertname"],
                status=row["status"],
                reason=model.Unrouted(row["reason"]),
                detail=row["detail"],
                labels=json.loads(row["labels"]),
                target=row["target"],
                last_seen=row["last_seen"],
                deliveries=row["deliveries"],
            )
            for row in rows
        ]

    def firing_alerts(self, target: str, *, seen_since: float) -> list[AlertRecord]:
        """Per alert name, the oldest alert of ``target`` still firing and delivered since
        ``seen_since`` (one speaks for its signal), with the latest delivery of any alert of
        that name as its ``last_seen`` (how fresh the evidence is). An alert that drove an
        action keeps counting while its incident is open (the evidence still holds; the
        incident acts once), but never after: a re-delivery cannot act a second time."""
        with self._lock:
            rows = self._db.execute(  # one row per name, the oldest, dated by the newest
                "SELECT * FROM (SELECT alerts.*, ROW_NUMBER() OVER names AS nth, "
                "MAX(alerts.last_seen) OVER names AS latest FROM alerts "
                "LEFT JOIN incidents ON incidents.id = alerts.spent_by "
                "WHERE alerts.target = ? AND alerts.status = 'firing' AND alerts.last_seen >= ? "
                "AND (alerts.spent_by IS NULL OR incidents.status = 'open') "
                "WINDOW names AS (PARTITION BY alerts.alertname ORDER BY alerts.starts_at, "
                "alerts.rowid ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) "
                "WHERE nth = 1 ORDER BY starts_at",
                (target, seen_since),
            ).fetchall()
        return [
            AlertRecord(
                fingerprint=row["fingerprint"],
                starts_at=row["starts_at"],
                target=row["target"],
                alertname=row["alertname"],
                status=row["status"],
                labels=json.loads(row["labels"]),
                annotations=json.loads(row["annotations"]),
                last_seen=row["latest"],
            )
            for row in rows
        ]

    # -- approvals and the audit trail -----------------------------------------------------

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

    # -- the probes' turns ------------------------------------------------------------------

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
    ) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, healthy, detail FROM probe_changes WHERE target = ? "
                "AND at >= ? AND at <= ? ORDER BY id",
                (target, *_window(since, until)),
            ).fetchall()
        return [{"at": r["at"], "healthy": bool(r["healthy"]), "detail": r["detail"]} for r in rows]

    # -- where each incident's chat message is (notify.MessageRefs) -------------------------

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

    # -- reading ---------------------------------------------------------------------------

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

    def last_evaluation(self, target: str) -> dict[str, Any] | None:
        """The latest verdict change of ``target``."""
        with self._lock:
            row = self._db.execute(
                "SELECT at, verdict, score, reason, firing FROM evaluations "
                "WHERE target = ? ORDER BY id DESC LIMIT 1",
                (target,),
            ).fetchone()
        if row is None:
            return None
        result = dict(row)
        result["firing"] = json.loads(result["firing"])
        return result

    def armed(self, target: str) -> bool:
        return self.target_state(target).armed

    def evaluations(
        self, target: str, *, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """The verdict changes of ``target`` from ``since`` to ``until`` (both included), oldest
        first, with their signals as journaled (the report's root cause)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, verdict, score, reason, firing, signals FROM evaluations "
                "WHERE target = ? AND at >= ? AND at <= ? ORDER BY at, id",
                (target, *_window(since, until)),
            ).fetchall()
        return [
            {**dict(r), "firing": json.loads(r["firing"]), "signals": json.loads(r["signals"])}
            for r in rows
        ]

    def approval_audit(self, approval_id: int) -> list[AuditRow]:
        """Every request journaled about one approval (votes, refusals, its settling), oldest
        first: who decided it and through what (the report's approval line)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM audit WHERE approval_id = ? ORDER BY id", (approval_id,)
            ).fetchall()
        return [AuditRow(**dict(row)) for row in rows]


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:  # never leave the connection wedged in a transaction
                    self._db.execute("ROLLBACK")
                raise
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _file_identity(path: Path) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


def _set_aside_orphans(path: Path) -> None:
    """A new database must not meet the write-ahead log of a deleted one: SQLite would try to
    replay it. Leftovers of a crash are renamed, kept for whoever investigates."""
    for suffix in ("-wal", "-shm"):
        orphan = path.with_name(path.name + suffix)
        if orphan.exists():
            aside = orphan.with_name(f"{orphan.name}.orphaned-{int(time.time())}")
            orphan.rename(aside)
            log.warning("set aside a deleted journal's leftover", path=str(aside))


def _window(since: float | None, until: float | None) -> tuple[float, float]:
    """A time range for ``at >= ? AND at <= ?``, open where not given."""
    return (since if since is not None else -1e18, until if until is not None else 1e18)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip() and not s.strip().startswith("--")]


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


def _plain(row: object) -> dict[str, Any]:
    """A journal row (a slotted dataclass) as a dict."""
    return {name: getattr(row, name) for name in row.__slots__}  # type: ignore[attr-defined]

"""The journal's schema: its versioned migrations, each run once, in order, in a transaction.

``PRAGMA user_version`` is the version; a journal newer than this watchdog is refused. These are
SQLite's (``instr``, table rebuilds for a changed ``CHECK``); a PostgreSQL store keeps its own
migrations behind the same ``store.Store`` protocol.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

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
    # 7: the release commit (policy.commit_after): when, and for which release of the primary
    """
    ALTER TABLE targets ADD COLUMN committed_at REAL;
    ALTER TABLE targets ADD COLUMN committed_release TEXT;
    """,
    # 8: the fallback's baseline per activation of the primary ("worse than the Java version"),
    # kept as samples so the comparison can be checked later
    """
    CREATE TABLE baselines (
        id           INTEGER PRIMARY KEY,
        target       TEXT NOT NULL,
        activation   REAL NOT NULL,
        metric       TEXT NOT NULL,
        recorded_at  REAL NOT NULL,
        start        REAL NOT NULL,
        end_at       REAL NOT NULL,
        samples      TEXT NOT NULL,   -- JSON list of numbers, one per step
        UNIQUE (target, activation, metric)
    );
    """,
    # 9: each target's latest evaluation, whatever its verdict, and the process that made it:
    # `status` tells a live daemon and a stale reason from it (evaluations keep only changes)
    """
    CREATE TABLE latest (
        target   TEXT PRIMARY KEY,
        at       REAL NOT NULL,
        verdict  TEXT NOT NULL,
        score    REAL NOT NULL,
        reason   TEXT NOT NULL,
        pid      INTEGER NOT NULL,
        started  INTEGER   -- the process's start, clock ticks since boot: a pid is not enough
    );
    """,
)


def statements(script: str) -> list[str]:
    """A migration's statements, one by one (so each runs inside the migration's transaction,
    which ``executescript`` would commit): whole lines of ``--`` comment are left out, and a
    statement ends where SQLite says it is complete, never at a ``;`` inside a string."""
    found: list[str] = []
    pending = ""
    for line in script.splitlines():
        if not pending and (not line.strip() or line.strip().startswith("--")):
            continue
        pending += line + "\n"
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"a migration ends inside a statement: {pending.strip()[:80]!r}")
    return found

"""Runs of the runbook and their steps: each step journaled before it starts and after it ends."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, cast

from watchdog import errors, model
from watchdog.journal.core import Core
from watchdog.journal.rows import (
    RunRow,
    StepRow,
)


class Runs(Core):
    """Runs and steps: at most one run in flight per target (a unique index)."""

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
                raise errors.RunInFlight(int(row["id"]) if row else -1) from None

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

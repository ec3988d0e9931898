"""The journal's connection: opening, migrating, the identity check, and writing safely.

One SQLite database in WAL mode in the state directory: nothing to install, safe against a crash
mid-write, readable by ``status`` while the daemon writes. The aggregates (incidents, runs,
alerts, approvals) each add their methods on this core; ``sqlite.Journal`` joins them. The class
is synchronous and thread-safe; the daemon calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import structlog

from watchdog import errors, statedir
from watchdog.journal.schema import DATABASE_NAME, MIGRATIONS
from watchdog.journal.schema import statements as _statements

log = structlog.get_logger("watchdog.journal")


class Core:
    """The connection and its safety: every aggregate's methods build on this."""

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
    def open(cls, state_dir: Path) -> Self:
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
    def open_existing(cls, state_dir: Path) -> Self:
        """Open the journal a daemon made (the CLI's reading and re-arming commands);
        ``InputError`` if there is none -- nothing is created."""
        path = state_dir / DATABASE_NAME
        if not path.is_file():
            raise errors.InputError(
                f"no journal at {path}: has `rollback-watchdog run` started with this config?"
            )
        return cls._connect(path, statedir.read_marker(state_dir))

    @classmethod
    def _connect(cls, path: Path, marker: statedir.Marker | None) -> Self:
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


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    or None if there is no such process here. With the pid it names one process for good: a
    reused pid, or a pid from another PID namespace (a sandbox, a container), starts otherwise."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the name may hold spaces or ")"
    except (OSError, IndexError):
        return None
    try:
        return int(fields[19])  # field 22 counts from 1, and the split starts at field 3
    except (IndexError, ValueError):
        return None


def _plain(row: object) -> dict[str, Any]:
    """A journal row (a slotted dataclass) as a dict."""
    return {name: getattr(row, name) for name in row.__slots__}  # type: ignore[attr-defined]

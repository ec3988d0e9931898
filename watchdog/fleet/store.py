"""The fleet store on PostgreSQL (psycopg 3, async, with its pool): leases, slots, runs, audit.

A member (one node's target) heartbeats its lease; a member whose lease ran out is lost, and a
slot it held is free again. ``take_slot`` is the one place that decides who may switch now: in
one transaction it locks the group's row, frees the slots of lost members, and grants a slot
only below ``max_parallel`` and only while the group is not halted. What frees a slot or
changes a group's halt sends ``NOTIFY`` on ``CHANNEL`` (delivered at commit), so a member that
waits is woken, never polling. Every answer is an enum or a frozen row; every driver failure
becomes ``errors.FleetUnreachable`` naming only its kind (a driver's text may carry the DSN).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg_pool
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from watchdog import errors, model
from watchdog.fleet import schema
from watchdog.fleet.values import (
    AuditLine,
    GroupStatus,
    Member,
    News,
    Node,
    Notice,
    RunRecord,
    Side,
    Slot,
    SlotHeld,
    Summary,
)

CHANNEL = "rollback_watchdog_fleet"  # LISTEN/NOTIFY: the payload is the group's name
_AUDIT_SHOWN = 20

Row = dict[str, Any]


class FleetStore:
    """One pool of connections to the fleet's database."""

    def __init__(
        self, pool: AsyncConnectionPool[AsyncConnection[Row]], *, timeout: float = 5.0
    ) -> None:
        self._pool = pool
        self._timeout = timeout

    @classmethod
    async def open(
        cls, dsn: str, *, max_size: int = 4, limit: float = 5.0, wait: bool = True
    ) -> FleetStore:
        """A pool (small: a node needs few connections). ``wait``: fail now if the database
        does not answer within ``limit`` seconds; else connect in the background and let each
        call fail fast until it does (a partition at start). Each call is bounded by ``limit``
        too: a silent network never hangs a node."""
        pool: AsyncConnectionPool[AsyncConnection[Row]] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=limit,
            # the pool keeps trying while callers ask (it never closes for good)
            reconnect_timeout=0,
            check=AsyncConnectionPool.check_connection,  # a connection PostgreSQL dropped
            kwargs={"row_factory": dict_row, "autocommit": False, **connection_options(limit)},
        )
        try:
            await pool.open(wait=wait, timeout=limit)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await pool.close()
            raise _unreachable(exc) from None
        return cls(pool, timeout=limit)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def transaction(self, limit: float | None = None) -> AsyncIterator[AsyncConnection[Row]]:
        """One transaction on a pooled connection, done within ``limit`` seconds (default: twice
        the store's timeout). A passing conflict is ``FleetBusy``; every other driver failure,
        or no answer in time, is ``FleetUnreachable`` -- never a driver's own exception."""
        try:
            async with (
                asyncio.timeout(limit if limit is not None else 2 * self._timeout),
                self._pool.connection(timeout=self._timeout) as db,
                db.transaction(),
            ):
                yield db
        except _BUSY as exc:
            raise errors.FleetBusy(f"the fleet store was busy: {_kind(exc)}") from None
        except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError) as exc:
            raise _unreachable(exc) from None

    async def version(self) -> int:
        """The schema version the database is at (0: never migrated)."""
        async with self.transaction() as db:
            found = await _fetchone(db, "SELECT to_regclass('fleet_schema') IS NOT NULL AS ok")
            if not found or not found["ok"]:
                return 0
            row = await _fetchone(db, "SELECT max(version) AS v FROM fleet_schema")
            return int(row["v"] or 0) if row else 0

    async def migrate(self) -> int:
        """Run the migrations not yet run; the schema version after."""
        async with self.transaction(limit=_MIGRATION_LIMIT) as db:
            # one migrator at a time, even before the version table exists (CREATE ... IF NOT
            # EXISTS races); the lock is the transaction's, never the session's
            await db.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_watchdog_migrate'))")
            await db.execute("CREATE TABLE IF NOT EXISTS fleet_schema (version int NOT NULL)")
            row = await _fetchone(db, "SELECT max(version) AS v FROM fleet_schema")
            current = int(row["v"] or 0) if row else 0
            for version, script in enumerate(schema.MIGRATIONS[current:], start=current + 1):
                for statement in schema.statements(script):
                    await db.execute(statement.encode())  # our own SQL text, as bytes
                await db.execute("INSERT INTO fleet_schema (version) VALUES (%s)", (version,))
            return max(current, len(schema.MIGRATIONS))

    async def heartbeat(
        self,
        member: Member,
        *,
        group: str,
        side: Side,
        release: str | None,
        lease: float,
        firing: Sequence[str] = (),
    ) -> bool:
        """This member is alive for ``lease`` more seconds, runs ``side`` and sees ``firing``
        (its signals that fire now: the upstream check's evidence); whether it holds a slot."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO fleet_groups (name) VALUES (%s) ON CONFLICT DO NOTHING", (group,)
            )
            row = await _fetchone(
                db,
                "WITH up AS (INSERT INTO fleet_nodes"
                " (node, target, grp, side, release, seen_at, lease_until, firing)"
                " VALUES (%s, %s, %s, %s, %s, now(), now() + make_interval(secs => %s), %s)"
                " ON CONFLICT (node, target) DO UPDATE SET grp = excluded.grp,"
                " side = excluded.side, release = excluded.release, firing = excluded.firing,"
                " seen_at = excluded.seen_at, lease_until = excluded.lease_until RETURNING 1)"
                " SELECT EXISTS (SELECT 1 FROM fleet_slots WHERE node = %s AND target = %s)"
                " AS holds",
                (
                    member.node,
                    member.target,
                    group,
                    side.value,
                    release,
                    lease,
                    list(firing),
                    *member_key(member),
                ),
            )
            return bool(row and row["holds"])

    async def peers_firing(
        self, group: str, member: Member, names: Sequence[str]
    ) -> list[tuple[Member, tuple[str, ...]]]:
        """The group's live members on the fallback that see any of ``names`` fire now."""
        async with self.transaction() as db:
            rows = await (
                await db.execute(
                    "SELECT node, target, array(SELECT unnest(firing) INTERSECT"
                    " SELECT unnest(%s::text[])) AS same FROM fleet_nodes WHERE grp = %s"
                    " AND side = 'fallback' AND lease_until >= now() AND firing && %s::text[]"
                    " AND NOT (node = %s AND target = %s) ORDER BY node, target",
                    (list(names), group, list(names), member.node, member.target),
                )
            ).fetchall()
        return [(Member(r["node"], r["target"]), tuple(sorted(r["same"]))) for r in rows]

    async def take_slot(
        self,
        member: Member,
        *,
        group: str,
        max_parallel: int,
        reason: str,
        wave: str | None = None,
    ) -> tuple[Slot, tuple[Member, ...]]:
        """May ``member`` switch now? Decided for the whole group in one transaction; with the
        answer, the members that hold the group's slots. ``wave``: the release whose rollout
        this switch belongs to (its pause between waves must be over)."""
        async with self.transaction() as db:
            row = await _fetchone(
                db, "SELECT halted_at FROM fleet_groups WHERE name = %s FOR UPDATE", (group,)
            )
            if row is None:
                raise LookupError(f"no group {group!r}: heartbeat first")
            # a lost member's slot frees when its lease has run out -- counted while this
            # server ran: after a restart of the store every lease looks expired, though no
            # member could renew one; each gets a whole lease from the start again
            freed = await db.execute(
                "DELETE FROM fleet_slots s USING fleet_nodes n WHERE s.grp = %s"
                " AND n.node = s.node AND n.target = s.target AND n.lease_until < now()"
                " AND pg_postmaster_start_time() + (n.lease_until - n.seen_at) < now()"
                " RETURNING s.node, s.target",
                (group,),
            )
            for lost in await freed.fetchall():
                await _audit(
                    db, group, Member(lost["node"], lost["target"]), "slot freed", "lease expired"
                )
            holders = tuple(
                Member(r["node"], r["target"])
                for r in await (
                    await db.execute(
                        "SELECT node, target FROM fleet_slots WHERE grp = %s ORDER BY taken_at",
                        (group,),
                    )
                ).fetchall()
            )
            if member in holders:
                return Slot.HELD, holders
            if row["halted_at"] is not None:
                return Slot.HALTED, holders
            if len(holders) >= max_parallel:
                return Slot.FULL, holders
            if wave is not None:
                due = await _fetchone(
                    db,
                    "SELECT next_at <= now() AS due FROM fleet_waves WHERE grp = %s"
                    " AND release = %s AND status = 'rolling'",
                    (group, wave),
                )
                if due is None or not due["due"]:
                    return Slot.PAUSED, holders
            await db.execute(
                "INSERT INTO fleet_slots (grp, node, target, taken_at, reason)"
                " VALUES (%s, %s, %s, now(), %s)",
                (group, member.node, member.target, reason),
            )
            await _audit(db, group, member, "slot taken", reason)
            return Slot.GRANTED, (*holders, member)

    async def release_slot(self, member: Member, *, group: str, detail: str) -> bool:
        """The member's switch ended (or never began): its slot is free; waiting members are
        woken. False if it held none."""
        async with self.transaction() as db:
            done = await db.execute(
                "DELETE FROM fleet_slots WHERE node = %s AND target = %s",
                (member.node, member.target),
            )
            if done.rowcount:
                await _audit(db, group, member, "slot released", detail)
                await notify(db, Notice(group, News.SLOT))
            return bool(done.rowcount)

    async def halt(self, group: str, *, by: Member, reason: str) -> bool:
        """Stop the group's automatic switches (a switch failed); False if already halted."""
        async with self.transaction() as db:
            done = await db.execute(
                "UPDATE fleet_groups SET halted_at = now(), halted_by = %s, halt_reason = %s"
                " WHERE name = %s AND halted_at IS NULL",
                (str(by), reason, group),
            )
            if done.rowcount:
                await _audit(db, group, by, "group halted", reason)
                await notify(db, Notice(group, News.HALTED))
            return bool(done.rowcount)

    async def resume(self, group: str, *, by: str) -> bool:
        """An operator lets the group switch again; False if it was not halted."""
        async with self.transaction() as db:
            done = await db.execute(
                "UPDATE fleet_groups SET halted_at = NULL, halted_by = NULL, halt_reason = NULL"
                " WHERE name = %s AND halted_at IS NOT NULL",
                (group,),
            )
            if done.rowcount:
                await _audit(db, group, Member(by, ""), "group resumed", f"by {by}")
                await notify(db, Notice(group, News.RESUMED))
            return bool(done.rowcount)

    async def record_runs(self, group: str, runs: Sequence[RunRecord]) -> bool:
        """Copy runs from a member's journal (new, or changed since): idempotent. A failed
        switch (restored, failed, or interrupted and closed) of the last day the store learns
        of here halts the group, as it would have when told at once -- so a halt is never lost
        to a partition or a restart (the journal is its record). Whether it halted the group."""
        halted = False
        if not runs:
            return halted
        async with self.transaction() as db:
            for run in runs:
                before = await _fetchone(
                    db,
                    "SELECT status FROM fleet_runs WHERE node = %s AND target = %s AND run_id = %s",
                    (run.member.node, run.member.target, run.run_id),
                )
                await db.execute(
                    "INSERT INTO fleet_runs (node, target, run_id, grp, trigger, status, reason,"
                    " started_at, ended_at, release) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                    " %s) ON CONFLICT (node, target, run_id) DO UPDATE SET status ="
                    " excluded.status, ended_at = excluded.ended_at",
                    (
                        run.member.node,
                        run.member.target,
                        run.run_id,
                        group,
                        run.trigger.value,
                        run.status.value,
                        run.reason,
                        run.started_at,
                        run.ended_at,
                        run.release,
                    ),
                )
                news = before is None or before["status"] != run.status.value
                if news and _failed_switch(run):
                    reason = f"{run.member}: run #{run.run_id} {run.status.value} (told late)"
                    done = await db.execute(
                        "UPDATE fleet_groups SET halted_at = now(), halted_by = %s,"
                        " halt_reason = %s WHERE name = %s AND halted_at IS NULL",
                        (str(run.member), reason, group),
                    )
                    if done.rowcount:
                        halted = True
                        await _audit(db, group, run.member, "group halted", reason)
                        await notify(db, Notice(group, News.HALTED))
        return halted

    async def summary(self, group: str) -> Summary:
        async with self.transaction() as db:
            row = await _fetchone(
                db,
                "SELECT (SELECT halted_at IS NOT NULL FROM fleet_groups WHERE name = %s) AS halted,"
                " count(*) FILTER (WHERE s.node IS NULL AND n.lease_until >= now()) AS live,"
                " count(*) FILTER (WHERE s.node IS NULL AND n.lease_until < now()) AS lost,"
                " count(s.node) AS switching FROM fleet_nodes n LEFT JOIN fleet_slots s"
                " ON s.node = n.node AND s.target = n.target WHERE n.grp = %s",
                (group, group),
            )
            waves = await (
                await db.execute(
                    "SELECT status, count(*) AS n, sum(waves) AS switched FROM fleet_waves"
                    " WHERE grp = %s GROUP BY status ORDER BY status",
                    (group,),
                )
            ).fetchall()
        if row is None:
            return Summary(0, 0, 0, halted=False)
        return Summary(
            int(row["live"]),
            int(row["lost"]),
            int(row["switching"]),
            halted=bool(row["halted"]),
            rollouts=tuple((str(w["status"]), int(w["n"])) for w in waves),
            wave_switches=sum(int(w["switched"] or 0) for w in waves),
        )

    async def groups(self) -> list[str]:
        async with self.transaction() as db:
            rows = await (
                await db.execute("SELECT name FROM fleet_groups ORDER BY name")
            ).fetchall()
        return [str(r["name"]) for r in rows]

    async def status(self, group: str) -> GroupStatus | None:
        """The group's members, slots, runs and latest audit lines; None if no such group."""
        async with self.transaction() as db:
            head = await _fetchone(db, "SELECT * FROM fleet_groups WHERE name = %s", (group,))
            if head is None:
                return None
            nodes = await (
                await db.execute(
                    "SELECT n.*, n.lease_until < now() AS lost, s.node IS NOT NULL AS switching"
                    " FROM fleet_nodes n LEFT JOIN fleet_slots s"
                    " ON s.node = n.node AND s.target = n.target"
                    " WHERE n.grp = %s ORDER BY n.node, n.target",
                    (group,),
                )
            ).fetchall()
            slots = await (
                await db.execute(
                    "SELECT * FROM fleet_slots WHERE grp = %s ORDER BY taken_at", (group,)
                )
            ).fetchall()
            runs = await (
                await db.execute(
                    "SELECT * FROM (SELECT * FROM fleet_runs WHERE grp = %s"
                    " ORDER BY started_at DESC LIMIT 50) latest ORDER BY started_at, node",
                    (group,),
                )
            ).fetchall()
            audit = await (
                await db.execute(
                    "SELECT * FROM (SELECT * FROM fleet_audit WHERE grp = %s ORDER BY id DESC"
                    " LIMIT %s) latest ORDER BY id",
                    (group, _AUDIT_SHOWN),
                )
            ).fetchall()
            from watchdog.fleet import incidents as fleet_incidents  # one module, one job
            from watchdog.fleet import waves

            incidents = await fleet_incidents.latest(db, group)
            rollouts = await waves.latest(db, group)
        return GroupStatus(
            name=group,
            halted_at=head["halted_at"],
            halted_by=head["halted_by"],
            halt_reason=head["halt_reason"],
            nodes=tuple(
                Node(
                    member=Member(r["node"], r["target"]),
                    group=r["grp"],
                    side=Side(r["side"]),
                    release=r["release"],
                    seen_at=r["seen_at"],
                    lease_until=r["lease_until"],
                    lost=bool(r["lost"]),
                    switching=bool(r["switching"]),
                    firing=tuple(r["firing"]),
                )
                for r in nodes
            ),
            slots=tuple(
                SlotHeld(Member(r["node"], r["target"]), r["taken_at"], r["reason"]) for r in slots
            ),
            runs=tuple(
                RunRecord(
                    member=Member(r["node"], r["target"]),
                    run_id=int(r["run_id"]),
                    trigger=model.Trigger(r["trigger"]),
                    status=model.RunStatus(r["status"]),
                    reason=r["reason"],
                    started_at=r["started_at"],
                    ended_at=r["ended_at"],
                    release=r["release"],
                )
                for r in runs
            ),
            audit=tuple(
                AuditLine(r["at"], Member(r["node"], r["target"] or ""), r["event"], r["detail"])
                for r in audit
            ),
            incidents=incidents,
            rollouts=rollouts,
        )


async def listen(
    dsn: str,
    heard: Callable[[Notice], None],
    *,
    limit: float = 5.0,
    ready: Callable[[], None] | None = None,
) -> None:
    """``LISTEN`` on the fleet's channel until cancelled, calling ``heard`` with each
    notification (one of another version's is skipped). LISTEN needs a session of its own
    (behind PgBouncer: a direct or session-pooled DSN). Raises ``FleetUnreachable`` when the
    connection fails or drops."""
    try:
        conninfo = psycopg.conninfo.make_conninfo(dsn, **connection_options(limit))
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as db:
            await db.execute(f"LISTEN {CHANNEL}".encode())
            if ready is not None:  # from now on nothing told is missed: catch up on the rest
                ready()
            async for notification in db.notifies():
                notice = Notice.parse(notification.payload)
                if notice is not None:
                    heard(notice)
    except psycopg.Error as exc:
        raise _unreachable(exc) from None


def _failed_switch(run: RunRecord) -> bool:
    """A switch that failed (its verification, or cut off and closed too old to resume),
    ended within the last day."""
    failed = run.status in (model.RunStatus.RESTORED, model.RunStatus.FAILED) or (
        run.status is model.RunStatus.INTERRUPTED and run.ended_at is not None
    )
    recent = run.ended_at is not None and run.ended_at > datetime.now(tz=UTC) - timedelta(days=1)
    return failed and recent


def connection_options(limit: float) -> dict[str, int]:
    """libpq's connect timeout, and TCP keepalives so a peer gone silent (a firewall dropping
    packets) is noticed in seconds, by the pool and by a LISTEN connection alike."""
    return {
        "connect_timeout": max(2, int(limit)),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


async def require_current(store: FleetStore) -> None:
    """``ConfigError`` unless the store's schema is this version's (run ``migrate`` first)."""
    version = await store.version()
    if version < len(schema.MIGRATIONS):
        raise errors.ConfigError(
            f"the fleet store's schema is at version {version}, this watchdog needs "
            f"{len(schema.MIGRATIONS)}: run `rollback-watchdog migrate --config FILE` "
            "(or set fleet.migrate_at_start)"
        )


async def notify(db: AsyncConnection[Row], notice: Notice) -> None:
    """Tell the listening members (delivered when the transaction commits, not before)."""
    await db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notice.payload()))


def member_key(member: Member) -> tuple[str, str]:
    return member.node, member.target


async def _fetchone(
    db: AsyncConnection[Row], query: str, params: Sequence[object] = ()
) -> Row | None:
    return await (await db.execute(query.encode(), params)).fetchone()


async def _audit(
    db: AsyncConnection[Row], group: str, member: Member, event: str, detail: str
) -> None:
    await db.execute(
        "INSERT INTO fleet_audit (grp, node, target, event, detail) VALUES (%s, %s, %s, %s, %s)",
        (group, member.node, member.target or None, event, detail),
    )


def _unreachable(exc: BaseException) -> errors.FleetUnreachable:
    return errors.FleetUnreachable(f"the fleet store did not answer: {_kind(exc)}")


def _kind(exc: BaseException) -> str:
    """The failure's kind and SQLSTATE only: a driver's message may quote the DSN."""
    state = getattr(exc, "sqlstate", None)
    return type(exc).__name__ + (f" (SQLSTATE {state})" if state else "")


_BUSY = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
)
_MIGRATION_LIMIT = 600.0  # seconds: a migration may rewrite tables

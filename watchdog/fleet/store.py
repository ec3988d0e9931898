"""The fleet store on PostgreSQL (psycopg 3, async, with its pool): leases and slots.

A node heartbeats its lease; a node whose lease ran out is lost, and a slot it held is free
again. ``take_slot`` is the one place that decides who may switch now: in one transaction it
locks the group's row, frees the slots of lost nodes, and grants a slot only below
``max_parallel`` and only while the group is not halted. Every answer is an enum.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from watchdog.fleet import schema


class Slot(enum.StrEnum):
    """What asking for a switch slot came to."""

    GRANTED = "granted"  # this node may switch now
    HELD = "held"  # it already holds one (a resumed switch)
    FULL = "full"  # max_parallel nodes of the group are switching: wait
    HALTED = "halted"  # a switch of the group failed; an operator must resume it


@dataclass(frozen=True, slots=True)
class Node:
    """One node as the fleet sees it."""

    name: str
    group: str
    target: str
    release: str | None
    seen_at: datetime
    lease_until: datetime
    lost: bool  # its lease ran out (by the database's clock)
    switching: bool  # it holds a slot


class FleetStore:
    """One pool of connections to the fleet's database."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[dict[str, Any]]]) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 4) -> FleetStore:
        """Connect (a small pool: a node needs few connections)."""
        pool: AsyncConnectionPool[AsyncConnection[dict[str, Any]]] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"row_factory": dict_row, "autocommit": False},
        )
        await pool.open(wait=True, timeout=10)
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> int:
        """Run the migrations not yet run; the schema version after."""
        async with self._pool.connection() as db, db.transaction():
            await db.execute("CREATE TABLE IF NOT EXISTS fleet_schema (version int NOT NULL)")
            await db.execute("LOCK TABLE fleet_schema IN EXCLUSIVE MODE")  # one migrator
            row = await (await db.execute("SELECT max(version) AS v FROM fleet_schema")).fetchone()
            current = int(row["v"] or 0) if row else 0
            for version, script in enumerate(schema.MIGRATIONS[current:], start=current + 1):
                for statement in schema.statements(script):
                    await db.execute(statement.encode())  # our own SQL text, as bytes
                await db.execute("INSERT INTO fleet_schema (version) VALUES (%s)", (version,))
            return max(current, len(schema.MIGRATIONS))

    async def heartbeat(
        self, node: str, *, group: str, target: str, release: str | None, lease: float
    ) -> None:
        """This node is alive for ``lease`` more seconds (and runs ``release``)."""
        async with self._pool.connection() as db, db.transaction():
            await db.execute(
                "INSERT INTO fleet_groups (name) VALUES (%s) ON CONFLICT DO NOTHING", (group,)
            )
            await db.execute(
                "INSERT INTO fleet_nodes (name, grp, target, release, seen_at, lease_until) "
                "VALUES (%s, %s, %s, %s, now(), now() + make_interval(secs => %s)) "
                "ON CONFLICT (name) DO UPDATE SET grp = excluded.grp, target = excluded.target,"
                " release = excluded.release, seen_at = excluded.seen_at,"
                " lease_until = excluded.lease_until",
                (node, group, target, release, lease),
            )

    async def take_slot(self, node: str, *, group: str, max_parallel: int) -> Slot:
        """May ``node`` switch now? Decided for the whole group in one transaction."""
        async with self._pool.connection() as db, db.transaction():
            row = await (
                await db.execute(
                    "SELECT halted_at FROM fleet_groups WHERE name = %s FOR UPDATE", (group,)
                )
            ).fetchone()
            if row is None:
                raise LookupError(f"no group {group!r}: heartbeat first")
            if row["halted_at"] is not None:
                return Slot.HALTED
            await db.execute(  # a lost node's slot frees when its lease has run out
                "DELETE FROM fleet_slots s USING fleet_nodes n "
                "WHERE s.grp = %s AND n.name = s.node AND n.lease_until < now()",
                (group,),
            )
            held = await (
                await db.execute("SELECT node FROM fleet_slots WHERE grp = %s", (group,))
            ).fetchall()
            holders = {str(r["node"]) for r in held}
            if node in holders:
                return Slot.HELD
            if len(holders) >= max_parallel:
                return Slot.FULL
            await db.execute(
                "INSERT INTO fleet_slots (grp, node, taken_at) VALUES (%s, %s, now())",
                (group, node),
            )
            return Slot.GRANTED

    async def release_slot(self, node: str, *, group: str) -> None:
        """The node's switch ended (verified or restored): its slot is free."""
        async with self._pool.connection() as db, db.transaction():
            await db.execute("DELETE FROM fleet_slots WHERE grp = %s AND node = %s", (group, node))

    async def halt(self, group: str, *, by: str, reason: str) -> None:
        """Stop the group's automatic switches (a switch failed its verification)."""
        async with self._pool.connection() as db, db.transaction():
            await db.execute(
                "UPDATE fleet_groups SET halted_at = now(), halted_by = %s, halt_reason = %s "
                "WHERE name = %s AND halted_at IS NULL",
                (by, reason, group),
            )

    async def resume(self, group: str) -> bool:
        """An operator lets the group switch again; False if it was not halted."""
        async with self._pool.connection() as db, db.transaction():
            done = await db.execute(
                "UPDATE fleet_groups SET halted_at = NULL, halted_by = NULL, halt_reason = NULL "
                "WHERE name = %s AND halted_at IS NOT NULL",
                (group,),
            )
            return done.rowcount == 1

    async def nodes(self, group: str) -> list[Node]:
        """The group's nodes, lost ones marked, by name."""
        async with self._pool.connection() as db, db.transaction():
            rows = await (
                await db.execute(
                    "SELECT n.*, n.lease_until < now() AS lost, s.node IS NOT NULL AS switching "
                    "FROM fleet_nodes n LEFT JOIN fleet_slots s ON s.node = n.name "
                    "WHERE n.grp = %s ORDER BY n.name",
                    (group,),
                )
            ).fetchall()
        return [
            Node(
                name=str(r["name"]),
                group=str(r["grp"]),
                target=str(r["target"]),
                release=None if r["release"] is None else str(r["release"]),
                seen_at=r["seen_at"],
                lease_until=r["lease_until"],
                lost=bool(r["lost"]),
                switching=bool(r["switching"]),
            )
            for r in rows
        ]

"""The release is bad: roll the rest of the group back, in waves.

After each switch a member reports, the fleet asks whether ``fleet.release_bad_when`` holds:
that many nodes (or that share of the group's nodes) of the release rolled back for critical reasons
(automatic or approved runs that succeeded) within the window. Then a rollout of the rest is
proposed (an operator approves it: ``fleet approve-waves``) or, with ``on_bad_release: auto``,
started. Members still on the release's primary then switch through the group's slots (at
most ``max_parallel`` at once), and a wave starts only ``wave_pause`` after the last one
ended verified; a failed switch halts the group as any does. Members already on the fallback
are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from watchdog.fleet.store import FleetStore, _audit, _fetchone, notify
from watchdog.fleet.values import Member, News, Notice, Rollout

PROPOSED, ROLLING, DONE = "proposed", "rolling", "done"


@dataclass(frozen=True, slots=True)
class BadWhen:
    """``fleet.release_bad_when`` as the store applies it."""

    nodes: int | None
    fraction: float | None
    within: float


class WaveBook:
    """The rollouts of one store."""

    def __init__(self, store: FleetStore) -> None:
        self._store = store

    async def judge(
        self, group: str, release: str, rule: BadWhen, *, auto: bool, by: Member
    ) -> Rollout | None:
        """Propose (or start) the rollout of ``release`` once the rule holds; the new rollout,
        None if the rule does not hold or one exists already (once per release)."""
        async with self._store.transaction() as db:
            await db.execute("SELECT 1 FROM fleet_groups WHERE name = %s FOR UPDATE", (group,))
            if await _fetchone(
                db, "SELECT 1 FROM fleet_waves WHERE grp = %s AND release = %s", (group, release)
            ):
                return None
            counts = await _fetchone(
                db,
                "SELECT (SELECT count(DISTINCT node) FROM fleet_runs WHERE grp = %s"
                " AND release = %s AND status = 'succeeded' AND trigger IN ('auto', 'approved')"
                " AND ended_at >= now() - make_interval(secs => %s)) AS rolled,"
                " (SELECT count(DISTINCT node) FROM fleet_nodes WHERE grp = %s) AS size",
                (group, release, rule.within, group),
            )
            rolled = int(counts["rolled"]) if counts else 0
            size = int(counts["size"]) if counts else 0
            holds = (rule.nodes is not None and rolled >= rule.nodes) or (
                rule.fraction is not None and size > 0 and rolled >= rule.fraction * size
            )
            if not holds:
                return None
            reason = (
                f"release {release} is bad: {rolled} of {size} nodes rolled back for critical"
                f" reasons within {int(rule.within)}s"
            )
            row = await _fetchone(
                db,
                "INSERT INTO fleet_waves (grp, release, status, reason, started_at, next_at)"
                " VALUES (%s, %s, %s, %s, CASE WHEN %s THEN now() END, now()) RETURNING *",
                (group, release, ROLLING if auto else PROPOSED, reason, auto),
            )
            await _audit(db, group, by, "rollout started" if auto else "rollout proposed", reason)
            await notify(db, Notice(group, News.WAVE))
            return _rollout(row) if row else None

    async def approve(self, group: str, *, by: str) -> list[str]:
        """An operator starts the proposed rollouts of the group; the releases started."""
        async with self._store.transaction() as db:
            rows = await (
                await db.execute(
                    "UPDATE fleet_waves SET status = %s, approved_by = %s, started_at = now(),"
                    " next_at = now() WHERE grp = %s AND status = %s RETURNING release",
                    (ROLLING, by, group, PROPOSED),
                )
            ).fetchall()
            for row in rows:
                await _audit(
                    db, group, Member(by, ""), "rollout approved", f"release {row['release']}"
                )
            if rows:
                await notify(db, Notice(group, News.WAVE))
            return [str(r["release"]) for r in rows]

    async def rollouts(self, group: str) -> list[Rollout]:
        async with self._store.transaction() as db:
            rows = await (
                await db.execute(
                    "SELECT * FROM fleet_waves WHERE grp = %s ORDER BY proposed_at", (group,)
                )
            ).fetchall()
        return [_rollout(r) for r in rows]

    async def switched(self, group: str, release: str, member: Member, *, pause: float) -> None:
        """``member`` switched in the rollout (verified): the next wave waits ``pause``; the
        rollout is done once no other member (live or lost) runs the release's primary."""
        async with self._store.transaction() as db:
            await db.execute(
                "UPDATE fleet_waves SET waves = waves + 1,"
                " next_at = now() + make_interval(secs => %s),"
                " status = CASE WHEN EXISTS (SELECT 1 FROM fleet_nodes WHERE grp = %s"
                " AND release = %s AND side = 'primary' AND NOT (node = %s AND target = %s))"
                " THEN status ELSE %s END WHERE grp = %s AND release = %s AND status IN (%s, %s)",
                (
                    pause,
                    group,
                    release,
                    member.node,
                    member.target,
                    DONE,
                    group,
                    release,
                    ROLLING,
                    DONE,
                ),
            )


async def latest(db: Any, group: str) -> tuple[Rollout, ...]:
    """The group's rollouts (``fleet status``)."""
    rows = await (
        await db.execute("SELECT * FROM fleet_waves WHERE grp = %s ORDER BY proposed_at", (group,))
    ).fetchall()
    return tuple(_rollout(r) for r in rows)


async def finish(store: FleetStore, group: str) -> None:
    """Rollouts with no member left on the release's primary and none switching: done. A lost
    member on the primary keeps its rollout going (after a partition it switches too)."""
    async with store.transaction() as db:
        await db.execute(
            "UPDATE fleet_waves w SET status = %s WHERE grp = %s AND status = %s"
            " AND NOT EXISTS (SELECT 1 FROM fleet_nodes n WHERE n.grp = w.grp"
            " AND n.release = w.release AND n.side = 'primary')"
            " AND NOT EXISTS (SELECT 1 FROM fleet_slots s WHERE s.grp = w.grp)",
            (DONE, group, ROLLING),
        )


def _rollout(row: dict[str, Any]) -> Rollout:
    return Rollout(
        group=row["grp"],
        release=row["release"],
        status=row["status"],
        reason=row["reason"],
        proposed_at=row["proposed_at"],
        approved_by=row["approved_by"],
        started_at=row["started_at"],
        next_at=row["next_at"],
        waves=int(row["waves"]),
    )

"""Fleet incidents: one per group and release while open, one message, one approval.

A member whose decision asks for something (a rollback, a proposal) joins the group's open
incident for its release, or opens it; the member that opened it owns the incident's one
message. A vote reaches any node and is judged here, in one transaction that locks the
incident's row, by the same pure rules as a local approval (``approval.judge``): the first
approval that reaches ``required`` decides for every member. Every change is told on the
fleet's channel, so the members act when it happens, without polling. An incident closes when
none of its members still waits or acts.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from watchdog import approval
from watchdog.fleet.store import FleetStore, _audit, _fetchone, notify
from watchdog.fleet.values import Member, News, Notice, Ticket

Row = dict[str, Any]
WAITING, ACTING, DONE, LEFT = "waiting", "acting", "done", "left"  # a member's part in one


class IncidentBook:
    """The fleet incidents of one store."""

    def __init__(self, store: FleetStore) -> None:
        self._store = store

    async def join(
        self,
        member: Member,
        *,
        group: str,
        release: str,
        verdict: str,
        asks: bool,
        required: int,
        wait: float,
        reason: str,
        local_incident: int | None,
        local_approval: int | None,
        linger: float = 1800.0,
    ) -> Ticket:
        """Join the group's open incident for ``release``, or open it (then this member owns
        its message). An incident stays joinable ``linger`` seconds after its last member is
        done (later failures of the release join it: one message). A decided one takes no new
        member that asks people: a denied or expired one is closed, and so is an approved one
        when a new member asks -- an approval covers the members people saw, never a later
        one (a member it covers, joining again after a restart, still joins it).
        Idempotent: joining again updates the member's local ids."""
        async with self._store.transaction() as db:
            await db.execute("SELECT 1 FROM fleet_groups WHERE name = %s FOR UPDATE", (group,))
            await db.execute(  # what a new member may not join any more
                "UPDATE fleet_incidents SET closed_at = now() WHERE grp = %s AND release = %s"
                " AND closed_at IS NULL AND (status IN ('denied', 'expired')"
                " OR quiet_since < now() - make_interval(secs => %s)"
                " OR (%s AND status = 'approved' AND NOT EXISTS (SELECT 1 FROM fleet_members m"
                " WHERE m.incident_id = fleet_incidents.id AND m.node = %s AND m.target = %s)))",
                (group, release, linger, asks, member.node, member.target),
            )
            head = await _fetchone(
                db,
                "SELECT * FROM fleet_incidents WHERE grp = %s AND release = %s"
                " AND closed_at IS NULL",
                (group, release),
            )
            opened = head is None
            if head is None:
                head = await _fetchone(
                    db,
                    "INSERT INTO fleet_incidents (grp, release, owner_node, owner_target, verdict,"
                    " asks, status, required, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
                    " CASE WHEN %s THEN now() + make_interval(secs => %s) END) RETURNING *",
                    (
                        group,
                        release,
                        member.node,
                        member.target,
                        verdict,
                        asks,
                        "pending" if asks else "acting",
                        required,
                        asks,
                        wait,
                    ),
                )
                assert head is not None  # noqa: S101 - INSERT ... RETURNING returns the row
                await _audit(db, group, member, "fleet incident opened", f"#{head['id']} {reason}")
            elif asks and not head["asks"]:  # it acted alone so far; now a member asks people
                head = await _fetchone(
                    db,
                    "UPDATE fleet_incidents SET asks = true, status = 'pending', verdict = %s,"
                    " required = %s, expires_at = now() + make_interval(secs => %s)"
                    " WHERE id = %s RETURNING *",
                    (verdict, required, wait, head["id"]),
                )
                assert head is not None  # noqa: S101 - the group's row lock keeps it
            added = await _fetchone(
                db,
                "INSERT INTO fleet_members (incident_id, node, target, reason, local_incident,"
                " local_approval) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (incident_id,"
                " node, target) DO UPDATE SET local_incident = excluded.local_incident,"
                " local_approval = excluded.local_approval,"
                " state = CASE WHEN fleet_members.state = 'left' THEN 'waiting'"
                " ELSE fleet_members.state END"
                " RETURNING (xmax = 0) AS inserted",
                (head["id"], member.node, member.target, reason, local_incident, local_approval),
            )
            new_member = bool(added and added["inserted"])
            await db.execute(  # a member waits in it again: not quiet
                "UPDATE fleet_incidents SET quiet_since = NULL WHERE id = %s", (head["id"],)
            )
            if new_member:
                if not opened:
                    await _audit(db, group, member, "joined fleet incident", f"#{head['id']}")
                await notify(db, Notice(group, News.JOINED, int(head["id"])))
            ticket = await _ticket(db, head)
        return _with(ticket, opened=opened, new_member=new_member)

    async def ticket(self, incident: int) -> Ticket | None:
        async with self._store.transaction() as db:
            head = await _fetchone(db, "SELECT * FROM fleet_incidents WHERE id = %s", (incident,))
            return None if head is None else await _ticket(db, head)

    async def vote(
        self,
        incident: int,
        vote: approval.Vote,
        rules: approval.Rules,
        *,
        group: str,
        nonce: str | None = None,
    ) -> tuple[approval.Ruling, Ticket | None]:
        """Judge one vote on a fleet incident of ``group`` (the first to reach ``required``
        decides for every member); journaled in the fleet's votes either way, a nonce counted
        once (two deliveries racing: one counts, the other is a replay)."""
        return await self._vote(incident, vote, rules, group=group, nonce=nonce)

    async def _vote(
        self,
        incident: int,
        vote: approval.Vote,
        rules: approval.Rules,
        *,
        group: str,
        nonce: str | None,
    ) -> tuple[approval.Ruling, Ticket | None]:
        who = next((name for name in vote.identities if name), "unknown")
        async with self._store.transaction() as db:
            if nonce is not None:  # the same click delivered twice at once: one after the other
                await db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (nonce,))
            if nonce is not None and await _fetchone(
                db, "SELECT 1 FROM fleet_votes WHERE nonce = %s", (nonce,)
            ):
                return approval.Ruling(
                    False,
                    approval.Status.PENDING,
                    "this exact request was already received; ignored",
                    refusal=approval.Refusal.REPLAY,
                ), None
            head = await _fetchone(
                db, "SELECT * FROM fleet_incidents WHERE id = %s FOR UPDATE", (incident,)
            )
            if head is None or not head["asks"] or head["grp"] != group:
                ruling = approval.Ruling(
                    False,
                    approval.Status.CANCELLED,
                    f"there is no fleet approval #{incident} in group {group}",
                    refusal=approval.Refusal.NOT_FOUND,
                )
                await _record_vote(db, incident, who, vote, ruling, nonce)
                return ruling, None
            if head["closed_at"] is not None and head["status"] == "pending":
                ruling = approval.Ruling(
                    False,
                    approval.Status.CANCELLED,
                    f"fleet approval #{incident} was closed: none of its members waits any more",
                    refusal=approval.Refusal.OVERTAKEN,
                )
                await _record_vote(db, incident, who, vote, ruling, nonce)
                return ruling, await _ticket(db, head)
            ruling = approval.judge(_request(head), vote, rules)
            await _record_vote(db, incident, who, vote, ruling, nonce)
            if ruling.counted:
                approved = list(head["approved_by"])
                if vote.approve and ruling.voter and ruling.voter not in approved:
                    approved.append(ruling.voter)
                decided = ruling.status is not approval.Status.PENDING
                head = await _fetchone(
                    db,
                    "UPDATE fleet_incidents SET status = %s, approved_by = %s,"
                    " decided_at = CASE WHEN %s THEN now() END,"
                    " decided_by = CASE WHEN %s THEN %s END, outcome = %s"
                    " WHERE id = %s RETURNING *",
                    (
                        ruling.status.value,
                        approved,
                        decided,
                        decided,
                        ruling.voter,
                        ruling.message,
                        incident,
                    ),
                )
                assert head is not None  # noqa: S101 - the row is locked: it is still there
                member = Member(ruling.voter or who, "")
                await _audit(db, head["grp"], member, "fleet vote", ruling.message)
                news = News.DECIDED if decided else News.VOTED
                await notify(db, Notice(head["grp"], news, incident))
            return ruling, await _ticket(db, head)

    async def expire_due(self, group: str, rules: approval.Rules) -> list[int]:
        """Settle the group's pending incidents whose time is up (any member may: the row lock
        makes it once); the ids settled."""
        settled = []
        async with self._store.transaction() as db:
            due = await (
                await db.execute(
                    "SELECT *, extract(epoch FROM now()) AS now_s FROM fleet_incidents"
                    " WHERE grp = %s AND status = 'pending' AND closed_at IS NULL"
                    " AND expires_at <= now() FOR UPDATE",
                    (group,),
                )
            ).fetchall()
            for head in due:
                ruling = approval.expiry(_request(head), float(head["now_s"]), rules)
                if ruling is None:
                    continue
                await db.execute(
                    "UPDATE fleet_incidents SET status = %s, decided_at = now(),"
                    " decided_by = 'rollback-watchdog', outcome = %s WHERE id = %s",
                    (ruling.status.value, ruling.message, head["id"]),
                )
                await _audit(
                    db, group, Member("rollback-watchdog", ""), "fleet expiry", ruling.message
                )
                await notify(db, Notice(group, News.DECIDED, int(head["id"])))
                settled.append(int(head["id"]))
        return settled

    async def take_over(self, incident: int, member: Member) -> Ticket | None:
        """``member`` owns the incident's message from now on, if its owner is lost (its lease
        ran out while the store ran, or it left the group) and ``member`` is one of its
        members; the incident as it stands then, None if not taken over."""
        async with self._store.transaction() as db:
            head = await _fetchone(
                db,
                "UPDATE fleet_incidents i SET owner_node = %s, owner_target = %s"
                " WHERE i.id = %s AND i.closed_at IS NULL"
                " AND NOT (i.owner_node = %s AND i.owner_target = %s)"
                " AND EXISTS (SELECT 1 FROM fleet_members m WHERE m.incident_id = i.id"
                " AND m.node = %s AND m.target = %s AND m.state <> 'left')"
                " AND NOT EXISTS (SELECT 1 FROM fleet_nodes n WHERE n.node = i.owner_node"
                " AND n.target = i.owner_target AND (n.lease_until >= now()"
                " OR pg_postmaster_start_time() + (n.lease_until - n.seen_at) >= now()))"
                " RETURNING *",
                (member.node, member.target, incident) + (member.node, member.target) * 2,
            )
            if head is None:
                return None
            await _audit(db, head["grp"], member, "took over the message", f"#{incident}")
            await notify(db, Notice(head["grp"], News.JOINED, incident))
            return await _ticket(db, head)

    async def remember_message(self, incident: int, channel: str, ts: str) -> None:
        """Where the owner posted the incident's one message (members reply in its thread)."""
        async with self._store.transaction() as db:
            done = await db.execute(
                "UPDATE fleet_incidents SET message_channel = %s, message_ts = %s"
                " WHERE id = %s AND message_ts IS NULL RETURNING grp",
                (channel, ts, incident),
            )
            row = await done.fetchone()
            if row is not None:
                await notify(db, Notice(row["grp"], News.MESSAGE, incident))

    async def member_state(self, incident: int, member: Member, state: str) -> None:
        """The member acts, is done, or left (its local incident ended); an incident none of
        whose members waits or acts any more is quiet (and closes once it lingered)."""
        async with self._store.transaction() as db:
            await db.execute(
                "UPDATE fleet_members SET state = %s WHERE incident_id = %s AND node = %s"
                " AND target = %s",
                (state, incident, member.node, member.target),
            )
            await db.execute(  # quiet: joinable a while yet (``join``'s linger)
                "UPDATE fleet_incidents SET quiet_since = CASE WHEN EXISTS (SELECT 1 FROM"
                " fleet_members WHERE incident_id = %s AND state IN ('waiting', 'acting'))"
                " THEN NULL ELSE now() END WHERE id = %s AND closed_at IS NULL",
                (incident, incident),
            )

    async def waiting(self, member: Member) -> list[tuple[Ticket, int | None, int | None]]:
        """The incidents (of the last day, closed or not) this member still waits in, with its
        local approval and incident in each: what a restarted or reconnected member catches up
        on (a decision it did not hear, an incident closed meanwhile)."""
        async with self._store.transaction() as db:
            rows = await (
                await db.execute(
                    "SELECT i.*, m.local_approval, m.local_incident FROM fleet_incidents i"
                    " JOIN fleet_members m ON m.incident_id = i.id"
                    " WHERE m.node = %s AND m.target = %s AND m.state = 'waiting'"
                    " AND i.opened_at > now() - interval '1 day'",
                    (member.node, member.target),
                )
            ).fetchall()
            return [
                (await _ticket(db, row), row["local_approval"], row["local_incident"])
                for row in rows
            ]


async def latest(db: AsyncConnection[Row], group: str, shown: int = 5) -> tuple[Ticket, ...]:
    """The group's open incidents, then its latest closed ones (``fleet status``)."""
    rows = await (
        await db.execute(
            "SELECT * FROM fleet_incidents WHERE grp = %s"
            " ORDER BY closed_at IS NULL DESC, id DESC LIMIT %s",
            (group, shown),
        )
    ).fetchall()
    return tuple([await _ticket(db, row) for row in rows])


async def _ticket(db: AsyncConnection[Row], head: Row) -> Ticket:
    members = await (
        await db.execute(
            "SELECT node, target FROM fleet_members WHERE incident_id = %s AND state <> 'left'"
            " ORDER BY joined_at, node",
            (head["id"],),
        )
    ).fetchall()
    return Ticket(
        id=int(head["id"]),
        group=head["grp"],
        release=head["release"],
        owner=Member(head["owner_node"], head["owner_target"]),
        asks=bool(head["asks"]),
        status=head["status"],
        closed=head["closed_at"] is not None,
        decided_by=head["decided_by"],
        required=int(head["required"]),
        approved_by=tuple(head["approved_by"]),
        expires_at=head["expires_at"],
        members=tuple(Member(r["node"], r["target"]) for r in members),
        message=(head["message_channel"], head["message_ts"]) if head["message_ts"] else None,
    )


def _with(ticket: Ticket, *, opened: bool, new_member: bool) -> Ticket:
    return dataclasses.replace(ticket, opened=opened, new_member=new_member)


def _request(head: Row) -> approval.Request:
    """The fleet incident as the pure approval rules read a request."""
    expires: datetime | None = head["expires_at"]
    return approval.Request(
        id=int(head["id"]),
        target=f"fleet group {head['grp']}",
        incident=None,
        requested_at=head["opened_at"].timestamp(),
        expires_at=expires.timestamp() if expires is not None else float("inf"),
        required=int(head["required"]),
        status=approval.Status(head["status"]),
        approved_by=tuple(head["approved_by"]),
        verdict=head["verdict"],
    )


async def _record_vote(
    db: AsyncConnection[Row],
    incident: int,
    who: str,
    vote: approval.Vote,
    ruling: approval.Ruling,
    nonce: str | None,
) -> None:
    await db.execute(
        "INSERT INTO fleet_votes (incident_id, voter, via, approve, counted, message, nonce)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            incident,
            ruling.voter or who,
            vote.via,
            vote.approve,
            ruling.counted,
            ruling.message,
            nonce,
        ),
    )

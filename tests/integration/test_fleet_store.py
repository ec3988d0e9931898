"""The fleet store on a real PostgreSQL (the lab's private cluster): migrations, leases, the
switch slots of a group under a race, a lost node's slot, a halted group."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from watchdog import approval, errors, model
from watchdog.fleet import schema
from watchdog.fleet.incidents import IncidentBook
from watchdog.fleet.store import FleetStore, listen, require_current
from watchdog.fleet.values import Member, News, Notice, RunRecord, Side, Slot, Ticket
from watchdog.fleet.waves import BadWhen, WaveBook
from watchdog_lab import postgres

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        postgres.unavailable_reason() is not None,
        reason=f"no private PostgreSQL here: {postgres.unavailable_reason()}",
    ),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[postgres.Cluster]:
    with postgres.running_postgres() as running:
        yield running


def db_name(request: pytest.FixtureRequest) -> str:
    return "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]


def store_dsn(cluster: postgres.Cluster, request: pytest.FixtureRequest) -> str:
    return cluster.dsn(db_name(request))


@pytest.fixture
async def store(
    cluster: postgres.Cluster, request: pytest.FixtureRequest
) -> AsyncIterator[FleetStore]:
    """A fresh database per test, migrated."""
    name = db_name(request)
    admin = await FleetStore.open(cluster.dsn())
    async with admin._pool.connection() as db:
        await db.set_autocommit(True)
        await db.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())
        await db.execute(f'CREATE DATABASE "{name}"'.encode())
    await admin.close()
    opened = await FleetStore.open(store_dsn(cluster, request), max_size=8)
    assert await opened.migrate() == len(schema.MIGRATIONS)
    yield opened
    await opened.close()


def m(node: str) -> Member:
    return Member(node, "lavalink")


async def beat(store: FleetStore, node: str, lease: float = 30) -> bool:
    return await store.heartbeat(m(node), group="g", side=Side.PRIMARY, release="v2", lease=lease)


async def test_migrations_run_once(store: FleetStore) -> None:
    assert await store.version() == len(schema.MIGRATIONS)
    assert await store.migrate() == len(schema.MIGRATIONS)  # again: nothing to do, no error


async def test_two_nodes_racing_for_the_last_slot_get_one_between_them(store: FleetStore) -> None:
    for node in ("a", "b", "c"):
        await beat(store, node)
    slot, _ = await store.take_slot(m("a"), group="g", max_parallel=2, reason="crash")
    assert slot is Slot.GRANTED
    answers = await asyncio.gather(
        *(store.take_slot(m(node), group="g", max_parallel=2, reason="crash") for node in "bc")
    )
    assert sorted(slot for slot, _ in answers) == sorted([Slot.GRANTED, Slot.FULL])
    slot, holders = await store.take_slot(m("a"), group="g", max_parallel=2, reason="crash")
    assert slot is Slot.HELD and len(holders) == 2  # a resumed switch keeps its slot
    status = await store.status("g")
    assert status is not None
    switching = [str(n.member) for n in status.nodes if n.switching]
    assert len(switching) == 2 and "a/lavalink" in switching
    assert await beat(store, "a") is True  # the heartbeat says it holds one
    summary = await store.summary("g")
    assert (summary.live, summary.switching, summary.halted) == (1, 2, False)


async def test_a_lost_nodes_slot_frees_when_its_lease_has_run_out(store: FleetStore) -> None:
    await beat(store, "dies", lease=0.5)
    await beat(store, "waits")
    assert (await store.take_slot(m("dies"), group="g", max_parallel=1, reason="x"))[
        0
    ] is Slot.GRANTED
    slot, holders = await store.take_slot(m("waits"), group="g", max_parallel=1, reason="x")
    assert slot is Slot.FULL and holders == (m("dies"),)
    await asyncio.sleep(0.8)  # "dies" stops heartbeating (kill -9): its lease runs out
    status = await store.status("g")
    assert status is not None
    assert {n.member.node: n.lost for n in status.nodes} == {"dies": True, "waits": False}
    assert (await store.take_slot(m("waits"), group="g", max_parallel=1, reason="x"))[
        0
    ] is Slot.GRANTED
    status = await store.status("g")
    assert status is not None
    assert [(a.member.node, a.event) for a in status.audit][-2:] == [
        ("dies", "slot freed"),
        ("waits", "slot taken"),
    ]


async def test_a_halted_group_grants_nothing_until_resumed(store: FleetStore) -> None:
    await beat(store, "a")
    assert await store.halt("g", by=m("a"), reason="verify failed on a") is True
    assert await store.halt("g", by=m("a"), reason="again") is False  # halted once
    assert (await store.take_slot(m("a"), group="g", max_parallel=1, reason="x"))[0] is Slot.HALTED
    assert (await store.summary("g")).halted
    assert await store.resume("g", by="alice") is True
    assert await store.resume("g", by="alice") is False  # not halted any more
    assert (await store.take_slot(m("a"), group="g", max_parallel=1, reason="x"))[0] is Slot.GRANTED
    assert await store.release_slot(m("a"), group="g", detail="done") is True
    assert await store.release_slot(m("a"), group="g", detail="done") is False
    status = await store.status("g")
    assert status is not None and not status.slots


async def test_a_release_wakes_listeners_and_runs_are_copied_once(
    store: FleetStore, cluster: postgres.Cluster, request: pytest.FixtureRequest
) -> None:
    dsn = store_dsn(cluster, request)
    heard: asyncio.Queue[Notice] = asyncio.Queue()
    listening = asyncio.create_task(listen(dsn, heard.put_nowait))
    await asyncio.sleep(0.5)  # LISTEN is in place
    await beat(store, "a")
    await store.take_slot(m("a"), group="g", max_parallel=1, reason="x")
    await store.release_slot(m("a"), group="g", detail="run #1 succeeded")
    assert await asyncio.wait_for(heard.get(), 5) == Notice("g", News.SLOT)
    listening.cancel()
    started = datetime(2026, 12, 7, tzinfo=UTC)
    run = RunRecord(m("a"), 1, model.Trigger.AUTO, model.RunStatus.RUNNING, "crash", started, None)
    await store.record_runs("g", [run])
    await store.record_runs("g", [dataclasses.replace(run, status=model.RunStatus.SUCCEEDED)])
    status = await store.status("g")
    assert status is not None
    assert [(r.run_id, r.status) for r in status.runs] == [(1, model.RunStatus.SUCCEEDED)]


async def test_an_unreachable_store_is_one_error_that_does_not_quote_the_dsn() -> None:
    dsn = "postgresql://fleet:s3cret-pw@127.0.0.1:1/fleet"  # nothing listens on port 1
    with pytest.raises(errors.FleetUnreachable) as caught:
        await FleetStore.open(dsn, limit=1)
    assert "s3cret" not in str(caught.value) and "127.0.0.1" not in str(caught.value)


async def test_two_migrators_at_once_leave_one_schema(
    cluster: postgres.Cluster, request: pytest.FixtureRequest
) -> None:
    name = db_name(request) + "_fresh"
    admin = await FleetStore.open(cluster.dsn())
    async with admin._pool.connection() as db:
        await db.set_autocommit(True)
        await db.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())
        await db.execute(f'CREATE DATABASE "{name}"'.encode())
    await admin.close()
    stores = [await FleetStore.open(cluster.dsn(name)) for _ in range(3)]
    try:
        assert await stores[0].version() == 0
        versions = await asyncio.gather(*(s.migrate() for s in stores))
        assert versions == [len(schema.MIGRATIONS)] * 3
    finally:
        for s in stores:
            await s.close()


RULES = approval.Rules(timeout=600, required=2, approvers=frozenset({"alice", "bob"}))


def ballot(who: str, *, approve: bool = True) -> approval.Vote:
    return approval.Vote(approve=approve, identities=(who,), via="api", at=time.time())


async def join(
    book: IncidentBook,
    node: str,
    *,
    approval_id: int | None = 1,
    release: str = "v2",
    required: int = 2,
    wait: float = 600,
    local_incident: int = 7,
    linger: float = 1800,
) -> Ticket:
    """``node`` joins the release's fleet incident; it asks people unless ``approval_id`` is
    None (automatic mode)."""
    return await book.join(
        m(node),
        group="g",
        release=release,
        verdict="rollback",
        asks=approval_id is not None,
        required=required,
        wait=wait,
        reason="crash loop",
        local_incident=local_incident,
        local_approval=approval_id,
        linger=linger,
    )


async def test_one_incident_per_release_and_one_approval_for_every_member(
    store: FleetStore,
) -> None:
    book = IncidentBook(store)
    for node in "abcd":
        await beat(store, node)
    first = await join(book, "a")
    assert first.opened and first.new_member and first.owner == m("a")
    second = await join(book, "b")
    assert second.id == first.id and not second.opened and second.new_member
    again = await join(book, "b")  # every tick joins again: no new member, no notice
    assert not again.new_member
    ruling, _ = await book.vote(first.id, ballot("mallory"), RULES, group="g")
    assert ruling.refusal is approval.Refusal.FORBIDDEN
    ruling, ticket = await book.vote(first.id, ballot("alice"), RULES, group="g", nonce="click-1")
    assert ruling.counted and ruling.status is approval.Status.PENDING
    replayed, _ = await book.vote(first.id, ballot("alice"), RULES, group="g", nonce="click-1")
    assert replayed.refusal is approval.Refusal.REPLAY
    twice, _ = await book.vote(first.id, ballot("alice"), RULES, group="g")
    assert twice.refusal is approval.Refusal.DUPLICATE  # two people, not one twice
    ruling, ticket = await book.vote(first.id, ballot("bob"), RULES, group="g")
    assert ruling.status is approval.Status.APPROVED
    assert ticket is not None and ticket.approved_by == ("alice", "bob") and ticket.decided
    assert [str(x) for x in ticket.members] == ["a/lavalink", "b/lavalink"]
    again = await join(book, "b", approval_id=5)  # b restarted: a member it covers
    assert again.id == first.id and again.status == "approved"
    acting = await join(book, "c", approval_id=None)  # automatic: joins, asks nobody
    assert acting.id == first.id and acting.status == "approved"
    late = await join(book, "d")  # asks people: an approval covers only whom people saw
    assert late.id != first.id and late.status == "pending" and late.opened
    old = await book.ticket(first.id)
    assert old is not None and old.closed and old.status == "approved"
    waiting = await book.waiting(m("d"))
    assert [(t.id, local_approval) for t, local_approval, _ in waiting] == [(late.id, 1)]
    elsewhere, _ = await book.vote(late.id, ballot("alice"), RULES, group="other")
    assert elsewhere.refusal is approval.Refusal.NOT_FOUND  # another group's node: not its own


async def test_a_denied_incident_closes_and_the_next_failure_asks_again(
    store: FleetStore,
) -> None:
    book = IncidentBook(store)
    await beat(store, "a")
    first = await join(book, "a")
    ruling, _ = await book.vote(first.id, ballot("bob", approve=False), RULES, group="g")
    assert ruling.status is approval.Status.DENIED
    assert (await book.vote(first.id, ballot("alice"), RULES, group="g"))[0].refusal is (
        approval.Refusal.DECIDED
    )
    second = await join(book, "a", approval_id=2)
    assert second.id != first.id and second.status == "pending" and second.opened


async def test_an_incident_whose_members_are_done_lingers_then_closes(
    store: FleetStore,
) -> None:
    book = IncidentBook(store)
    await beat(store, "a")
    first = await join(book, "a", approval_id=None)  # auto mode: nothing asked
    assert first.status == "acting" and not first.asks
    await book.member_state(first.id, m("a"), "done")
    kept = await join(book, "b", approval_id=None, local_incident=1, linger=30)
    assert kept.id == first.id  # quiet, but within the linger: one message for the release
    await book.member_state(first.id, m("b"), "done")
    await asyncio.sleep(1.1)
    fresh = await join(book, "b", approval_id=None, local_incident=2, linger=1)
    assert fresh.id != first.id


async def test_expiry_settles_a_pending_incident_once(store: FleetStore) -> None:
    book = IncidentBook(store)
    await beat(store, "a")
    ticket = await join(book, "a", required=1, wait=0.2, local_incident=1)
    assert await book.expire_due("g", RULES) == []  # not yet
    await asyncio.sleep(0.5)
    assert await book.expire_due("g", RULES) == [ticket.id]
    assert await book.expire_due("g", RULES) == []  # once
    found = await book.ticket(ticket.id)
    assert found is not None and found.status == "expired"
    proceed = approval.Rules(timeout=1, on_timeout="proceed", approvers=frozenset({"alice"}))
    other = await join(
        book, "a", approval_id=2, release="v3", required=1, wait=0.2, local_incident=2
    )
    await asyncio.sleep(0.5)
    assert await book.expire_due("g", proceed) == [other.id]
    found = await book.ticket(other.id)
    assert found is not None and found.status == "approved"


async def run(node: str, run_id: int, *, release: str = "v2", minutes_ago: float = 1) -> RunRecord:
    at = datetime.now(tz=UTC) - timedelta(minutes=minutes_ago)
    return RunRecord(
        m(node), run_id, model.Trigger.AUTO, model.RunStatus.SUCCEEDED, "crash", at, at, release
    )


async def test_the_release_is_bad_once_the_rule_holds_and_only_once(store: FleetStore) -> None:
    waves_book = WaveBook(store)
    for node in "abcdefghij":  # a group of ten
        await beat(store, node)
    rule = BadWhen(nodes=3, fraction=None, within=1800)
    await store.record_runs("g", [await run("a", 1), await run("b", 1)])
    assert await waves_book.judge("g", "v2", rule, auto=False, by=m("b")) is None  # 2 of 3
    await store.record_runs("g", [await run("c", 1, minutes_ago=45)])  # outside the window
    assert await waves_book.judge("g", "v2", rule, auto=False, by=m("c")) is None
    await store.record_runs("g", [await run("d", 1, release="v1")])  # another release
    assert await waves_book.judge("g", "v2", rule, auto=False, by=m("d")) is None
    by_share = BadWhen(nodes=None, fraction=0.2, within=1800)  # 2 of 10 is 20 %
    proposed = await waves_book.judge("g", "v2", by_share, auto=False, by=m("b"))
    assert proposed is not None and proposed.status == "proposed"
    assert "2 of 10 nodes" in proposed.reason
    assert await waves_book.judge("g", "v2", by_share, auto=False, by=m("b")) is None  # once
    assert await waves_book.approve("g", by="alice") == ["v2"]
    assert await waves_book.approve("g", by="alice") == []
    (rollout,) = await waves_book.rollouts("g")
    assert (rollout.status, rollout.approved_by) == ("rolling", "alice")
    # a wave slot waits for the pause; the first is due at once
    slot, _ = await store.take_slot(m("e"), group="g", max_parallel=1, reason="w", wave="v2")
    assert slot is Slot.GRANTED
    await store.release_slot(m("e"), group="g", detail="run #1 succeeded")
    await waves_book.switched("g", "v2", m("e"), pause=30)
    slot, _ = await store.take_slot(m("f"), group="g", max_parallel=1, reason="w", wave="v2")
    assert slot is Slot.PAUSED


async def test_peers_on_the_fallback_that_see_the_same_signal(store: FleetStore) -> None:
    await store.heartbeat(
        m("a"), group="g", side=Side.PRIMARY, release="v2", lease=30, firing=["SourceDown"]
    )
    await store.heartbeat(
        m("b"),
        group="g",
        side=Side.FALLBACK,
        release="v2",
        lease=30,
        firing=["SourceDown", "Other"],
    )
    await store.heartbeat(
        m("c"), group="g", side=Side.FALLBACK, release="v2", lease=30, firing=["Other"]
    )
    await store.heartbeat(
        m("d"), group="g", side=Side.FALLBACK, release="v2", lease=0.1, firing=["SourceDown"]
    )  # lost: its word no longer counts
    await asyncio.sleep(0.3)
    peers = await store.peers_firing("g", m("a"), ["SourceDown"])
    assert peers == [(m("b"), ("SourceDown",))]
    assert await store.peers_firing("g", m("a"), ["Latency"]) == []


def readme_sql() -> list[str]:
    """The SQL blocks of the README's "Fleet mode" section, in order."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Fleet mode", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)


async def test_the_readmes_role_and_grants_are_enough_and_no_more(
    cluster: postgres.Cluster,
) -> None:
    superuser, admin_grants = readme_sql()
    async with await psycopg.AsyncConnection.connect(cluster.dsn(), autocommit=True) as db:
        await db.execute("DROP DATABASE IF EXISTS rollback_watchdog")
        for role in ("watchdog", "watchdog_admin"):
            await db.execute(f"DROP ROLE IF EXISTS {role}".encode())
        for statement in statements(superuser):
            await db.execute(statement.encode())
    admin_dsn = cluster.dsn("rollback_watchdog", user="watchdog_admin")
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as db:
        for statement in statements(admin_grants):
            await db.execute(statement.encode())
    admin = await FleetStore.open(admin_dsn)
    try:
        assert await admin.migrate() == len(schema.MIGRATIONS)  # the owner migrates
    finally:
        await admin.close()
    node = await FleetStore.open(cluster.dsn("rollback_watchdog", user="watchdog"))
    try:  # every kind of call a daemon makes, as the daemons' role
        await require_current(node)
        await node.heartbeat(m("a"), group="g", side=Side.PRIMARY, release="v2", lease=30)
        assert (await node.take_slot(m("a"), group="g", max_parallel=1, reason="x"))[0] is (
            Slot.GRANTED
        )
        await node.record_runs("g", [await run("a", 1)])
        book = IncidentBook(node)
        ticket = await join(book, "a")
        await book.vote(ticket.id, ballot("alice"), RULES, group="g", nonce="n1")
        await book.member_state(ticket.id, m("a"), "done")
        await WaveBook(node).judge("g", "v2", BadWhen(1, None, 600), auto=True, by=m("a"))
        await node.release_slot(m("a"), group="g", detail="done")
        assert await node.halt("g", by=m("a"), reason="x")
        assert await node.resume("g", by="alice")
        assert await node.status("g") is not None
        async with node._pool.connection() as db:  # and no more: no schema changes
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await db.execute("CREATE TABLE fleet_mine (x int)")
    finally:
        await node.close()


def statements(block: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in block.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def test_tls_verify_full_against_the_servers_ca() -> None:
    with postgres.running_postgres(tls=True) as secure:
        verified = f"{secure.dsn()} sslmode=verify-full sslrootcert={secure.ca_file}"
        store = await FleetStore.open(verified)
        try:
            async with store._pool.connection() as db:
                row = await (
                    await db.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                ).fetchone()
            assert row is not None and row["ssl"] is True
        finally:
            await store.close()
        wrong_ca = secure.folder / "tls" / "server.pem"  # not the CA that signed it
        with pytest.raises(errors.FleetUnreachable):
            await FleetStore.open(
                f"{secure.dsn()} sslmode=verify-full sslrootcert={wrong_ca}", limit=2
            )


async def test_an_incident_that_acted_alone_asks_people_once_a_member_asks(
    store: FleetStore,
) -> None:
    book = IncidentBook(store)
    for node in "ab":
        await beat(store, node)
    alone = await join(book, "a", approval_id=None)  # auto mode: it acts, nothing asked
    assert (alone.asks, alone.status) == (False, "acting")
    asked = await join(book, "b", approval_id=3)  # a proposal elsewhere asks people
    assert asked.id == alone.id and (asked.asks, asked.status) == (True, "pending")
    ruling, ticket = await book.vote(asked.id, ballot("alice"), RULES, group="g")
    assert ruling.counted and ticket is not None and ticket.approved_by == ("alice",)


async def test_one_click_delivered_twice_at_once_counts_once(store: FleetStore) -> None:
    book = IncidentBook(store)
    await beat(store, "a")
    ticket = await join(book, "a")
    rulings = await asyncio.gather(
        *(book.vote(ticket.id, ballot("alice"), RULES, group="g", nonce="same") for _ in range(4))
    )
    counted = [r for r, _ in rulings if r.counted]
    assert len(counted) == 1
    assert all(r.refusal is approval.Refusal.REPLAY for r, _ in rulings if not r.counted)


async def test_a_failed_switch_the_store_learns_of_late_halts_the_group(store: FleetStore) -> None:
    await beat(store, "a")
    now = datetime.now(tz=UTC)
    restored = RunRecord(
        m("a"), 3, model.Trigger.AUTO, model.RunStatus.RESTORED, "crash", now, now, "v2"
    )
    assert await store.record_runs("g", [restored]) is True
    status = await store.status("g")
    assert status is not None and status.halt_reason == "a/lavalink: run #3 restored (told late)"
    assert await store.resume("g", by="alice")
    assert await store.record_runs("g", [restored]) is False  # known: no second halt
    old = dataclasses.replace(restored, run_id=4, ended_at=now - timedelta(days=2))
    assert await store.record_runs("g", [old]) is False  # history, not news


async def test_a_member_takes_the_message_over_only_from_a_lost_owner(store: FleetStore) -> None:
    book = IncidentBook(store)
    await beat(store, "a", lease=0.5)  # the owner: it stops heartbeating (kill -9)
    await beat(store, "b")
    await beat(store, "c")
    first = await join(book, "a")
    await join(book, "b")
    await book.remember_message(first.id, "C0FLEET", "1796.0001")
    assert await book.take_over(first.id, m("b")) is None  # the owner is alive
    await asyncio.sleep(0.8)
    assert await book.take_over(first.id, m("c")) is None  # not a member
    taken = await book.take_over(first.id, m("b"))
    assert taken is not None and taken.owner == m("b")
    assert taken.message == ("C0FLEET", "1796.0001")  # the same message, updated from now on
    assert await book.take_over(first.id, m("b")) is None  # once

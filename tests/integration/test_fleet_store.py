"""The fleet store on a real PostgreSQL (the lab's private cluster): migrations, leases, the
switch slots of a group under a race, a lost node's slot, a halted group."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from watchdog import errors, model
from watchdog.fleet import schema
from watchdog.fleet.store import FleetStore, listen
from watchdog.fleet.values import Member, News, Notice, RunRecord, Side, Slot
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

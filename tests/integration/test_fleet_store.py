"""The fleet store on a real PostgreSQL (the lab's private cluster): migrations, leases, the
switch slots of a group under a race, a lost node's slot, a halted group."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from watchdog.fleet import schema
from watchdog.fleet.store import FleetStore, Slot
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


@pytest.fixture
async def store(
    cluster: postgres.Cluster, request: pytest.FixtureRequest
) -> AsyncIterator[FleetStore]:
    """A fresh database per test, migrated."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]
    admin = await FleetStore.open(cluster.dsn())
    async with admin._pool.connection() as db:
        await db.set_autocommit(True)
        await db.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())
        await db.execute(f'CREATE DATABASE "{name}"'.encode())
    await admin.close()
    opened = await FleetStore.open(cluster.dsn(name), max_size=8)
    assert await opened.migrate() == len(schema.MIGRATIONS)
    yield opened
    await opened.close()


async def test_migrations_run_once(store: FleetStore) -> None:
    assert await store.migrate() == len(schema.MIGRATIONS)  # again: nothing to do, no error


async def test_two_nodes_racing_for_the_last_slot_get_one_between_them(store: FleetStore) -> None:
    for node in ("a", "b", "c"):
        await store.heartbeat(node, group="g", target="lavalink", release="4.0.1", lease=30)
    assert await store.take_slot("a", group="g", max_parallel=2) is Slot.GRANTED
    answers = await asyncio.gather(
        *(store.take_slot(node, group="g", max_parallel=2) for node in ("b", "c"))
    )
    assert sorted(answers) == sorted([Slot.GRANTED, Slot.FULL])
    assert await store.take_slot("a", group="g", max_parallel=2) is Slot.HELD  # resumed
    switching = [n.name for n in await store.nodes("g") if n.switching]
    assert len(switching) == 2 and "a" in switching


async def test_a_lost_nodes_slot_frees_when_its_lease_has_run_out(store: FleetStore) -> None:
    await store.heartbeat("dies", group="g", target="lavalink", release="4.0.1", lease=0.5)
    await store.heartbeat("waits", group="g", target="lavalink", release="4.0.1", lease=30)
    assert await store.take_slot("dies", group="g", max_parallel=1) is Slot.GRANTED
    assert await store.take_slot("waits", group="g", max_parallel=1) is Slot.FULL
    await asyncio.sleep(0.8)  # "dies" stops heartbeating (kill -9): its lease runs out
    lost = {n.name: n.lost for n in await store.nodes("g")}
    assert lost == {"dies": True, "waits": False}
    assert await store.take_slot("waits", group="g", max_parallel=1) is Slot.GRANTED


async def test_a_halted_group_grants_nothing_until_resumed(store: FleetStore) -> None:
    await store.heartbeat("a", group="g", target="lavalink", release="4.0.1", lease=30)
    await store.halt("g", by="a", reason="verify failed on a")
    assert await store.take_slot("a", group="g", max_parallel=1) is Slot.HALTED
    assert await store.resume("g") is True
    assert await store.resume("g") is False  # not halted any more
    assert await store.take_slot("a", group="g", max_parallel=1) is Slot.GRANTED
    await store.release_slot("a", group="g")
    assert not any(n.switching for n in await store.nodes("g"))

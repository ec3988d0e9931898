"""The fleet's commands: ``migrate`` (the store's schema) and ``fleet status|resume``.

They talk to the fleet's PostgreSQL directly, as every daemon of the group does, so they work
with no daemon running. An unreachable store is exit 2 with its kind named, never a traceback
(the driver's own message may quote the DSN).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from watchdog import config, errors
from watchdog.cli.common import _fail, _unreachable

if TYPE_CHECKING:
    from watchdog.fleet.store import FleetStore

EXIT_OK = 0
EXIT_HALTED = 1  # fleet status: the group is halted (automatic switches stopped)
_T = TypeVar("_T")


def _fleet_settings(args: argparse.Namespace) -> config.FleetSettings:
    settings = config.load(args.config)
    if settings.fleet is None:
        raise errors.ConfigError(f"{args.config}: no fleet: section (fleet mode is off)")
    return settings.fleet


def _with_store(fleet: config.FleetSettings, work: Callable[[FleetStore], Awaitable[_T]]) -> _T:
    from watchdog.fleet import dsn
    from watchdog.fleet.store import FleetStore

    secret = dsn.read(fleet)

    async def go() -> _T:
        store = await FleetStore.open(secret, max_size=1, limit=fleet.timeout)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _migrate(args: argparse.Namespace) -> int:
    fleet = _fleet_settings(args)
    try:
        before_after = _with_store(fleet, _migrated)
    except errors.FleetUnreachable as exc:  # did not answer: exit 3, as for Prometheus
        return _unreachable(f"migrate: {exc}")
    except errors.FleetError as exc:
        return _fail(f"migrate: {exc}")
    before, after = before_after
    if before == after:
        print(f"the fleet store's schema is at version {after}; nothing to do")
    else:
        print(f"the fleet store's schema migrated from version {before} to {after}")
    return EXIT_OK


async def _migrated(store: FleetStore) -> tuple[int, int]:
    before = await store.version()
    return before, await store.migrate()


def _fleet(args: argparse.Namespace) -> int:
    from watchdog.fleet import render
    from watchdog.fleet.store import require_current
    from watchdog.fleet.values import GroupStatus
    from watchdog.fleet.waves import WaveBook

    fleet = _fleet_settings(args)
    group = args.group or fleet.group

    async def act(store: FleetStore) -> object:
        await require_current(store)  # a schema this version does not know: exit 2, said so
        if group not in await store.groups():
            raise errors.InputError(
                f"fleet {args.action}: no group {group!r} in the store (no member has joined yet)"
            )
        if args.action == "resume":
            return await store.resume(group, by=args.by)
        if args.action == "approve-waves":
            return await WaveBook(store).approve(group, by=args.by)
        return await store.status(group)

    try:
        done = _with_store(fleet, act)
    except errors.FleetUnreachable as exc:
        return _unreachable(f"fleet {args.action}: {exc}")
    except errors.FleetError as exc:
        return _fail(f"fleet {args.action}: {exc}")
    if args.action == "resume":
        print(
            f"fleet group {group} resumed: automatic switches allowed again"
            if done
            else f"fleet group {group} is not halted; nothing changed"
        )
        return EXIT_OK
    if args.action == "approve-waves":
        started = done if isinstance(done, list) else []
        if not started:
            print(f"fleet group {group} has no proposed rollout; nothing changed")
        for release in started:
            print(f"rollout of {release} started: the rest of its nodes switch in waves")
        return EXIT_OK
    if not isinstance(done, GroupStatus):
        return _fail(f"fleet status: no group {group!r} in the store")
    if args.json:
        print(json.dumps(render.as_dict(done, group), indent=2))
    else:
        print(render.as_text(done))
    return EXIT_HALTED if done.halted_at is not None else EXIT_OK

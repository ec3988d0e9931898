"""Fleet mode's link to PostgreSQL: heartbeats, the group's slots and halt, LISTEN, partitions.

One ``FleetLink`` per daemon. It heartbeats each target as a member of ``fleet.group`` (which
unit runs, its lease), answers the pipeline's ``Admission`` (a switch slot, or why to wait),
gives the slot back when a run ends and halts the group when a switch failed its verification.
For the gate (``gate.FleetGate``) it joins each incident to the group's fleet incident for the
release, takes votes for it from any node, and remembers what the fleet decided. ``LISTEN``
wakes the guards when a slot frees, the group resumes or a fleet incident is decided, so a
waiting member acts at once and nobody polls. Cut off from the store, each target still guards
itself on local evidence (``fleet.admission``); when the store is back the link copies the
runs it made into the store, so the store and the local journals agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from watchdog import approval, config, decision, errors, gate, journal, model, telemetry
from watchdog.fleet import admission, waves
from watchdog.fleet.incidents import DONE, LEFT, IncidentBook
from watchdog.fleet.store import CHANNEL, FleetStore, listen, require_current
from watchdog.fleet.values import Member, News, Notice, RunRecord, Side, Slot, Ticket
from watchdog.fleet.waves import ROLLING, BadWhen, WaveBook
from watchdog.runtime.guard import Guard
from watchdog.runtime.link import _pause

log = structlog.get_logger("watchdog.fleet")

_FAILED_SWITCH = frozenset({model.RunStatus.RESTORED, model.RunStatus.FAILED})
_SYNCED_RUNS = 20  # each member's latest runs copied into the store after a partition


class FleetLink:
    """This node's place in its fleet group."""

    def __init__(
        self,
        settings: config.FleetSettings,
        dsn: str,
        recorder: telemetry.Recorder,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._dsn = dsn
        self._recorder = recorder
        self._clock = clock
        self._store: FleetStore | None = None
        self._guards: dict[str, Guard] = {}
        self._reachable: bool | None = None  # None: not yet known
        self._cut_switches = 0  # switches made while cut off (bounded)
        self._admitted: dict[str, float] = {}  # target -> monotonic time a slot was taken
        self._book: IncidentBook | None = None
        self._gate: gate.Gate | None = None
        self._tickets: dict[int, Ticket] = {}  # fleet incidents a target of ours is in
        self._linked: dict[tuple[str, int], int] = {}  # (target, local approval) -> fleet id
        self._joined: dict[tuple[str, int], int] = {}  # (target, local incident) -> fleet id
        self._tasks: set[asyncio.Task[None]] = set()
        self._firing: dict[str, tuple[str, ...]] = {}  # target -> what fired at its last tick
        self._sides: dict[str, Side] = {}  # target -> which unit ran at the last heartbeat
        self._waves: WaveBook | None = None
        self._in_wave: dict[str, str] = {}  # target -> the release whose rollout it switches in
        self._held: dict[str, str] = {}  # target -> why an automatic rollout passes it by
        # runs that ended, in order, not yet told to the store (cut off)
        self._ended: list[tuple[str, model.RunOutcome, str | None]] = []
        self._rolling = asyncio.Lock()  # one look at the rollouts at a time (beat, NOTIFY)
        self._telling = asyncio.Lock()  # runs' ends told one at a time, in order
        self._refreshing = asyncio.Lock()  # a newer look at an incident is never overwritten
        self._schema_checked = False  # cut off at start: checked once the store answers

    def member(self, target: str) -> Member:
        return Member(self.settings.node, target)

    @property
    def group(self) -> str:
        return self.settings.group

    @property
    def reachable(self) -> bool:
        return bool(self._reachable)

    def release(self, target: str) -> str:
        """What a fleet incident is about: the configured release, else the primary's unit."""
        if self.settings.release is not None:
            return self.settings.release
        guard = self._guards.get(target)
        return guard.target.settings.primary.unit if guard is not None else target

    async def open(self) -> None:
        """Connect and check the schema. Unreachable: start cut off (guard locally) and keep
        trying. A schema behind this version stops the start unless allowed to migrate."""
        # the pool's own warnings repeat every reconnect attempt: the link says it once
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        try:
            self._store = await FleetStore.open(self._dsn, limit=self.settings.timeout)
        except errors.FleetUnreachable as exc:
            self._cut(str(exc))
            self._store = await FleetStore.open(self._dsn, limit=self.settings.timeout, wait=False)
            self._book, self._waves = IncidentBook(self._store), WaveBook(self._store)
            return
        self._book, self._waves = IncidentBook(self._store), WaveBook(self._store)
        try:
            await self._check_schema(self._store)
        except errors.FleetError as exc:  # reached, then lost: the heartbeat checks it later
            self._cut(str(exc))

    async def _check_schema(self, store: FleetStore) -> None:
        """Migrate (when allowed) or require the schema this version needs: ``ConfigError``."""
        if self.settings.migrate_at_start:
            version = await store.migrate()
            log.info("fleet store migrated", version=version)
        else:
            await require_current(store)
        self._schema_checked = True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._store is not None:
            await self._store.close()

    def attach(self, guards: Sequence[Guard], gatekeeper: gate.Gate | None = None) -> None:
        """The guards whose targets are members (woken by LISTEN, asked which unit runs), and
        the gate whose message follows the fleet incidents it owns."""
        self._guards = {guard.target.name: guard for guard in guards}
        self._gate = gatekeeper

    # -- the pipeline's Admission ------------------------------------------------------------

    def observed(self, target: str, evaluated: model.Evaluation) -> None:
        self._firing[target] = admission.firing_names(evaluated)

    async def admit(self, target: str, evaluated: model.Evaluation) -> str | None:
        """Upstream or the release? Then a slot of the group, or why to wait; cut off, local
        evidence only, once."""
        store = self._opened()
        await self._tell_ended()  # a halt of ours not yet told comes first
        if any(
            o.status in _FAILED_SWITCH or o.status is model.RunStatus.INTERRUPTED
            for _, o, _ in self._ended
        ):
            return "a failed switch of this node is not yet told to the fleet store: waiting"
        try:
            suspects = admission.upstream_suspects(evaluated)
            if suspects:  # YouTube down for everyone is not the release's fault
                peers = await store.peers_firing(self.group, self.member(target), suspects)
                upstream = admission.upstream_answer(peers)
                if upstream is not None:
                    log.warning("upstream", target=target, reason=upstream)
                    return upstream
            self._admitted[target] = time.monotonic()  # before the slot: never seen as stale
            slot, holders = await store.take_slot(
                self.member(target),
                group=self.group,
                max_parallel=self.settings.max_parallel,
                reason=_reason(evaluated),
            )
            halt = await self._halt_why(store) if slot is Slot.HALTED else None
        except errors.FleetBusy as exc:
            self._admitted.pop(target, None)
            return f"{exc}; asking again next time"
        except errors.FleetUnreachable as exc:
            self._admitted.pop(target, None)
            self._cut(str(exc))
            answer = admission.cut_off_answer(evaluated, self._cut_switches)
            if answer is None:
                self._cut_switches += 1
                log.warning(
                    "switching while cut off from the fleet store, on local evidence",
                    target=target,
                    signals=list(admission.local_evidence(evaluated)),
                )
            return answer
        self._back()
        answer = admission.slot_answer(
            slot, holders, max_parallel=self.settings.max_parallel, halt_reason=halt
        )
        if answer is None:
            log.warning("fleet slot taken", target=target, slot=slot.value, group=self.group)
        else:
            self._admitted.pop(target, None)
            log.info("fleet says wait", target=target, reason=answer)
        return answer

    async def withdraw(self, target: str) -> None:
        await self._release(target, "the switch did not start")

    # -- a run's end -------------------------------------------------------------------------

    async def ended(self, target: str, outcome: model.RunOutcome) -> None:
        """Give the slot back; a switch that failed its verification halts the group. Told
        in order, and kept until the store has it: cut off, it is told when the store is back
        (a halt is never lost to a partition)."""
        if outcome.status is model.RunStatus.INTERRUPTED and await self._paused(target, outcome):
            return  # still open: the restart resumes it and keeps the slot
        self._ended.append((target, outcome, self._in_wave.pop(target, None)))
        await self._tell_ended()

    async def _paused(self, target: str, outcome: model.RunOutcome) -> bool:
        """An interrupted run still open (paused for a stop: it resumes), not one closed as
        too old to resume -- that one touched the units and is a failed switch."""
        guard = self._guards.get(target)
        if guard is None:
            return True
        run = await asyncio.to_thread(guard.target.store.run, outcome.run_id)
        return run.finished_at is None

    async def _tell_ended(self) -> None:
        async with self._telling:
            while self._ended:
                target, outcome, wave = self._ended[0]
                try:
                    await self._told_ended(target, outcome, wave)
                except errors.FleetError as exc:
                    log.warning("a run's end is not yet told to the fleet store", error=str(exc))
                    return
                self._ended.pop(0)

    async def _told_ended(self, target: str, outcome: model.RunOutcome, wave: str | None) -> None:
        store, member = self._opened(), self.member(target)
        detail = f"run #{outcome.run_id} {outcome.status.value}"
        if outcome.status in _FAILED_SWITCH or outcome.status is model.RunStatus.INTERRUPTED:
            reason = f"{member}: {detail}: {outcome.detail}"
            if await store.halt(self.group, by=member, reason=reason):
                log.error("fleet group halted: a switch failed", target=target, run=outcome.run_id)
        await self._sync(store, [target])
        if wave is not None and outcome.succeeded:
            await self._rollouts().switched(
                self.group, wave, member, pause=self.settings.wave_pause
            )
        if outcome.succeeded and wave is None:
            await self._judge_release(target)
        for fleet_id in self._incidents_of(target):
            await self._incidents().member_state(fleet_id, member, DONE)
        self._admitted.pop(target, None)
        await store.release_slot(member, group=self.group, detail=detail)

    async def _release(self, target: str, detail: str) -> None:
        self._admitted.pop(target, None)
        if self._store is None:
            return
        try:
            await self._store.release_slot(self.member(target), group=self.group, detail=detail)
        except errors.FleetError:  # the heartbeat frees it once the store answers
            log.warning("fleet slot not released yet: the store did not answer", target=target)

    # -- loops -------------------------------------------------------------------------------

    async def keep(self, stop: asyncio.Event) -> None:
        """Heartbeat every ``fleet.heartbeat``; after a partition, copy the runs made."""
        while not stop.is_set():
            begun = time.monotonic()
            try:
                await self.beat()
            except Exception:  # the heartbeat outlives any one bad round
                log.exception("fleet heartbeat failed")
            await _pause(stop, self.settings.heartbeat - (time.monotonic() - begun))

    async def beat(self) -> None:
        """One heartbeat of every member; a slot held with no run going is given back."""
        store = self._store
        if store is None:
            return
        was_reachable = self._reachable
        try:
            if not self._schema_checked:
                try:
                    await self._check_schema(store)
                except errors.ConfigError as exc:  # never a silent half fleet: say it, guard alone
                    self._cut(str(exc))
                    return
            for name, guard in self._guards.items():
                side = self._sides[name] = _side(guard, self._clock())
                holds = await store.heartbeat(
                    self.member(name),
                    group=self.group,
                    side=side,
                    release=self.release(name),
                    lease=self.settings.lease,
                    firing=self._firing.get(name, ()),
                )
                if holds and await self._stale(name, guard):
                    await store.release_slot(
                        self.member(name), group=self.group, detail="no run of it is going"
                    )
            if was_reachable is not True:
                await self._sync(store, list(self._guards))
                await self._catch_up()
            await self._tell_ended()
            self._back()
            await self._leave_closed()
            await self._share_messages()
            await self._adopt_messages()
            await self._roll_waves()
            if self._gate is not None:
                await self._incidents().expire_due(self.group, self._gate.rules)
            counts = await store.summary(self.group)
            members = self._recorder.fleet_members
            members.labels(self.group, "live").set(counts.live)
            members.labels(self.group, "lost").set(counts.lost)
            members.labels(self.group, "switching").set(counts.switching)
            self._recorder.fleet_slots.labels(self.group).set(counts.switching)
            self._recorder.fleet_halted.labels(self.group).set(1 if counts.halted else 0)
            by_status = dict(counts.rollouts)
            for status in ("proposed", "rolling", "done"):
                self._recorder.fleet_rollouts.labels(self.group, status).set(
                    by_status.get(status, 0)
                )
            self._recorder.fleet_wave_switches.labels(self.group).set(counts.wave_switches)
        except errors.FleetBusy as exc:
            log.info("fleet heartbeat: the store was busy", error=str(exc))
        except errors.FleetUnreachable as exc:
            self._cut(str(exc))
        self._recorder.fleet_reachable.set(1 if self._reachable else 0)

    async def _stale(self, target: str, guard: Guard) -> bool:
        """A slot held while no run goes here: left by a crash before the run began."""
        if guard.in_flight() or guard.reconciling():
            return False
        if any(name == target for name, _, _ in self._ended):
            return False  # its run ended and is being told: that gives the slot back
        taken = self._admitted.get(target)
        if taken is not None and time.monotonic() - taken <= 2 * self.settings.heartbeat:
            return False  # taken a moment ago: its run is about to start
        # a run the journal holds open (waiting to be adopted or resumed) keeps its slot
        return await asyncio.to_thread(guard.target.store.running_run, target) is None

    async def listen(self, stop: asyncio.Event) -> None:
        """LISTEN for the group's news (a slot freed, the group resumed): wake the guards."""
        backoff = 1.0
        while not stop.is_set():
            try:
                listening = asyncio.create_task(
                    listen(
                        self._dsn,
                        self._heard,
                        limit=self.settings.timeout,
                        ready=lambda: self._spawn(self._catch_up_soon()),
                    )
                )
                stopping = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait(
                    {listening, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in (listening, stopping):
                    task.cancel()
                if listening in done and not listening.cancelled():
                    listening.result()  # raises what ended it
                backoff = 1.0
            except errors.FleetError:
                log.debug("fleet LISTEN connection lost; reconnecting", channel=CHANNEL)
                await _pause(stop, backoff)
                backoff = min(backoff * 2, self.settings.heartbeat)
            except Exception:
                log.exception("fleet LISTEN failed; reconnecting")
                await _pause(stop, backoff)

    def _heard(self, notice: Notice) -> None:
        if notice.group != self.group:
            return
        if notice.incident is not None:
            self._spawn(self._refresh(notice.incident, notice.news))
        else:
            self._wake_all()
            self._news(notice)

    def _news(self, notice: Notice) -> None:
        if notice.news in (News.WAVE, News.SLOT, News.RESUMED):
            self._spawn(self._roll_waves_now())

    def _wake_all(self) -> None:
        for guard in self._guards.values():
            guard.wake()

    async def _refresh(self, fleet_id: int, news: News) -> None:
        """A fleet incident changed: the latest of it, the owner's message, and the members
        woken when it was decided (they act now)."""
        if fleet_id not in self._tickets and news is not News.JOINED:
            return  # none of ours
        async with self._refreshing:  # one at a time: what is read last is the newest
            try:
                ticket = await self._incidents().ticket(fleet_id)
            except errors.FleetError:
                return  # the catch-up after the partition reads it
            if ticket is None:
                return
            self._took(ticket)

    def _took(self, ticket: Ticket) -> None:
        """The newest look at a fleet incident: kept if one of ours is in it."""
        if not any(m.node == self.settings.node for m in ticket.members):
            return
        self._tickets[ticket.id] = ticket
        if self._gate is not None:
            self._gate.fleet_changed(ticket)  # the owner's message follows; a former owner stops
        if ticket.decided:
            for target in sorted({t for (t, _), fid in self._linked.items() if fid == ticket.id}):
                self._spawn(self._settle(target))  # act now, not at the next tick
            self._wake_all()

    async def _settle(self, target: str) -> None:
        """The gate settles the target's requests now: a decided fleet approval acts at once
        (the next tick would too; the journal lets only one of them launch)."""
        if self._gate is None:
            return
        try:
            await self._gate.settle(target)
        except Exception:  # the tick settles it anyway
            log.exception("settling after a fleet decision failed", target=target)

    async def _catch_up_soon(self) -> None:
        with contextlib.suppress(errors.FleetError):  # the next connection catches up
            await self._catch_up()

    async def _catch_up(self) -> None:
        """The fleet incidents our targets wait in, as the store has them now (after a restart
        or a partition: notifications sent meanwhile were not heard)."""
        decided = False
        for name in self._guards:
            for ticket, local_approval, local_incident in await self._incidents().waiting(
                self.member(name)
            ):
                self._tickets[ticket.id] = ticket
                if local_approval is not None:
                    self._linked[(name, local_approval)] = ticket.id
                if local_incident is not None:
                    self._joined[(name, local_incident)] = ticket.id
                decided = decided or ticket.decided
        if decided:
            self._wake_all()

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the gate's FleetGate ------------------------------------------------------------------

    async def join(
        self, decided: model.Decision, incident: int, request: journal.ApprovalRow | None
    ) -> Ticket | None:
        """Join the group's fleet incident for this release (once per local incident and
        request); None while cut off: the local incident's own message goes out then."""
        if decided.action not in (model.Action.ROLLBACK, model.Action.PROPOSE):
            return None  # a notice (a warning, missing data) stays the node's own
        target = decided.target
        known = self._joined.get((target, incident))
        if known is not None and (request is None or (target, request.id) in self._linked):
            return self._tickets.get(known)
        try:
            ticket = await self._incidents().join(
                self.member(target),
                group=self.group,
                release=self.release(target),
                verdict=request.verdict if request is not None else decided.action.value,
                asks=request is not None,
                required=request.required if request is not None else 1,
                wait=max(1.0, request.expires_at - decided.at) if request is not None else 0.0,
                reason=decided.reason[:500],
                local_incident=incident,
                local_approval=request.id if request is not None else None,
                linger=self.settings.release_bad_when.within,
            )
        except errors.FleetError as exc:  # the local incident's own message goes out instead
            if isinstance(exc, errors.FleetUnreachable):
                self._cut(str(exc))
            return None
        self._joined[(target, incident)] = ticket.id
        if request is not None:
            self._linked[(target, request.id)] = ticket.id
        self._tickets[ticket.id] = ticket
        if ticket.new_member:
            log.warning(
                "opened fleet incident" if ticket.opened else "joined fleet incident",
                target=target,
                fleet_incident=ticket.id,
                release=ticket.release,
                members=[str(m) for m in ticket.members],
            )
        return ticket

    def owns(self, ticket: Ticket) -> bool:
        return ticket.owner.node == self.settings.node and ticket.owner.target in self._guards

    def ticket_of(self, target: str, incident: int) -> Ticket | None:
        fleet_id = self._joined.get((target, incident))
        return None if fleet_id is None else self._tickets.get(fleet_id)

    def ruling(self, target: str, approval_id: int) -> Ticket | None:
        fleet_id = self._linked.get((target, approval_id))
        return None if fleet_id is None else self._tickets.get(fleet_id)

    async def vote(
        self, incident: int, vote: approval.Vote, rules: approval.Rules, nonce: str | None
    ) -> tuple[approval.Ruling, Ticket | None]:
        try:
            ruling, ticket = await self._incidents().vote(
                incident, vote, rules, group=self.group, nonce=nonce
            )
        except errors.FleetError:
            return approval.Ruling(
                False,
                approval.Status.PENDING,
                "the fleet store did not answer this node: try again",
                refusal=approval.Refusal.UNAVAILABLE,
            ), None
        if ticket is not None and ticket.id in self._tickets:
            self._tickets[ticket.id] = ticket
        return ruling, ticket

    async def admit_approved(self, target: str) -> str | None:
        """A slot for a run the fleet approved; cut off, it waits (a fleet decision needs the
        fleet's view of its slots)."""
        try:
            self._admitted[target] = time.monotonic()  # before the slot: never seen as stale
            slot, holders = await self._opened().take_slot(
                self.member(target),
                group=self.group,
                max_parallel=self.settings.max_parallel,
                reason="approved for the fleet",
            )
            halt = await self._halt_why(self._opened()) if slot is Slot.HALTED else None
        except errors.FleetError as exc:
            self._admitted.pop(target, None)
            if isinstance(exc, errors.FleetUnreachable):
                self._cut(str(exc))
            return "the fleet store did not answer: a fleet approval acts once it does"
        self._back()
        answer = admission.slot_answer(
            slot, holders, max_parallel=self.settings.max_parallel, halt_reason=halt
        )
        if answer is not None:
            self._admitted.pop(target, None)
        return answer

    async def left(self, target: str, approval_id: int) -> None:
        """The member's request ended without a run (cancelled, denied, expired): it leaves
        the fleet incident; if the store does not answer, the heartbeat's look at the local
        incident makes it leave later."""
        fleet_id = self._linked.get((target, approval_id))
        if fleet_id is None:
            return
        try:
            await self._incidents().member_state(fleet_id, self.member(target), LEFT)
        except errors.FleetError:
            log.warning("the fleet store did not answer: leaving the incident later", target=target)
            return
        self._linked.pop((target, approval_id), None)

    async def _leave_closed(self) -> None:
        """A member whose local incident closed with no run going leaves its fleet incident."""
        for (target, incident), fleet_id in list(self._joined.items()):
            guard = self._guards.get(target)
            if guard is None or guard.in_flight():
                continue
            if await asyncio.to_thread(guard.target.store.incident_open, incident):
                continue
            ticket = self._tickets.get(fleet_id)
            ran = ticket is not None and ticket.status in ("approved", "acting")
            await self._incidents().member_state(  # raises: tried again at the next heartbeat
                fleet_id, self.member(target), DONE if ran else LEFT
            )
            del self._joined[(target, incident)]
            self._tickets.pop(fleet_id, None)

    async def _share_messages(self) -> None:
        """The messages this node posted for fleet incidents it owns, told to the store."""
        for (target, incident), fleet_id in list(self._joined.items()):
            ticket = self._tickets.get(fleet_id)
            guard = self._guards.get(target)
            if ticket is None or ticket.message is not None or not self.owns(ticket) or not guard:
                continue
            ref = await asyncio.to_thread(guard.target.store.message_ref, incident)
            if ref is not None:
                await self._incidents().remember_message(fleet_id, *ref)
                self._tickets[fleet_id] = dataclasses.replace(ticket, message=ref)

    # -- the release is bad: the rest in waves ------------------------------------------------

    async def _judge_release(self, target: str) -> None:
        """After a switch of ours: is the release bad for the group now?"""
        if self.settings.on_bad_release == "off":
            return
        rule = self.settings.release_bad_when
        started = await self._rollouts().judge(
            self.group,
            self.release(target),
            BadWhen(rule.nodes, rule.fraction, rule.within),
            auto=self.settings.on_bad_release == "auto",
            by=self.member(target),
        )
        if started is not None:
            log.error(
                "release bad: rollout of the rest " + started.status,
                release=started.release,
                reason=started.reason,
            )

    async def _roll_waves_now(self) -> None:
        with contextlib.suppress(errors.FleetError):
            await self._roll_waves()

    async def _roll_waves(self) -> None:
        """Our members still on a release being rolled out: each switches when it gets a slot
        (and the pause between waves is over); never one already switched or switching."""
        async with self._rolling:
            await self._roll_waves_locked()

    async def _roll_waves_locked(self) -> None:
        candidates = [
            name
            for name, guard in self._guards.items()
            if self._sides.get(name) is Side.PRIMARY
            and not guard.in_flight()
            and not guard.reconciling()
            and name not in self._in_wave
        ]
        if not candidates or self._gate is None:
            await waves.finish(self._opened(), self.group)
            return
        rolling = {
            r.release: r for r in await self._rollouts().rollouts(self.group) if r.status == ROLLING
        }
        for name in candidates:
            rollout = rolling.get(self.release(name))
            if rollout is None:
                continue
            guard = self._guards[name]
            if not await asyncio.to_thread(guard.target.store.armed, name):
                continue  # rolled back already (or disarmed by an operator): never twice
            target = guard.target
            held = decision.not_automatic(target.state, target.policy, target.clock())
            if held is not None and not rollout.approved_by:
                # an automatic rollout switches no member its own guard holds back
                if self._held.get(name) != held:
                    log.warning("rollout wave skips a member", target=name, reason=held)
                    self._held[name] = held
                continue
            self._admitted[name] = time.monotonic()  # before the slot: never seen as stale
            slot, holders = await self._opened().take_slot(
                self.member(name),
                group=self.group,
                max_parallel=self.settings.max_parallel,
                reason=f"rollout of {rollout.release}",
                wave=rollout.release,
            )
            if admission.slot_answer(slot, holders, max_parallel=self.settings.max_parallel):
                self._admitted.pop(name, None)
                continue  # a slot frees (NOTIFY) or the pause ends (the next heartbeat)
            self._in_wave[name] = rollout.release
            by = rollout.approved_by or "rollback-watchdog"
            order = gate.Order(
                None,
                model.Trigger.APPROVED if rollout.approved_by else model.Trigger.AUTO,
                f"fleet rollout ({by})",
                f"{rollout.reason}; wave {rollout.waves + 1}",
            )
            launched = self._gate.launch(name, order)
            log.warning("rollout wave", target=name, release=rollout.release, launch=str(launched))
            if not launched.going:
                self._in_wave.pop(name, None)
                await self._release(name, f"the wave's switch did not start: {launched}")

    async def approve_waves(self, by: str) -> list[str]:
        return await self._rollouts().approve(self.group, by=by)

    def _rollouts(self) -> WaveBook:
        if self._waves is None:
            raise RuntimeError("FleetLink.open() was not awaited")
        return self._waves

    async def _adopt_messages(self) -> None:
        """A fleet incident whose owner is lost keeps its one message: a member takes it over
        (the first to ask wins; the store decides)."""
        for (target, incident), fleet_id in list(self._joined.items()):
            ticket = self._tickets.get(fleet_id)
            if ticket is None or ticket.closed or self.owns(ticket):
                continue
            taken = await self._incidents().take_over(fleet_id, self.member(target))
            if taken is None:
                continue
            self._tickets[fleet_id] = taken
            log.warning(
                "took over the fleet incident's message: its owner is lost",
                target=target,
                fleet_incident=fleet_id,
                owner_was=str(ticket.owner),
            )
            if self._gate is not None:
                await self._gate.adopt_fleet_message(taken, incident)

    def _incidents_of(self, target: str) -> list[int]:
        return sorted({fid for (name, _), fid in self._joined.items() if name == target})

    # -- status ------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """What the HTTP API shows under ``fleet``: the group, as the store has it now."""
        from watchdog.fleet import render

        if self._store is None:
            return {"group": self.group, "node": self.settings.node, "reachable": False}
        try:
            found = await self._store.status(self.group)
        except errors.FleetError as exc:
            return {
                "group": self.group,
                "node": self.settings.node,
                "reachable": False,
                "error": str(exc),
            }
        shown = render.as_dict(found, self.group) if found else {"group": self.group}
        return {**shown, "node": self.settings.node, "reachable": True}

    async def resume(self, by: str) -> bool:
        return await self._opened().resume(self.group, by=by)

    # -- internals ---------------------------------------------------------------------------

    def _opened(self) -> FleetStore:
        if self._store is None:
            raise RuntimeError("FleetLink.open() was not awaited")
        return self._store

    def _incidents(self) -> IncidentBook:
        if self._book is None:
            raise RuntimeError("FleetLink.open() was not awaited")
        return self._book

    async def _halt_why(self, store: FleetStore) -> str | None:
        found = await store.status(self.group)
        return found.halt_reason if found else None

    async def _sync(self, store: FleetStore, targets: Sequence[str]) -> None:
        """Copy these targets' latest runs from the local journal into the store."""
        records = []
        for name in targets:
            guard = self._guards.get(name)
            if guard is None:
                continue
            rows = await asyncio.to_thread(guard.target.store.runs, target=name, limit=_SYNCED_RUNS)
            records += [
                RunRecord(
                    member=self.member(name),
                    run_id=row.id,
                    trigger=row.trigger,
                    status=row.status,
                    reason=row.reason,
                    started_at=_instant(row.started_at),
                    ended_at=None if row.finished_at is None else _instant(row.finished_at),
                    release=self.release(name),
                )
                for row in rows
            ]
        await store.record_runs(self.group, records)

    def _cut(self, why: str) -> None:
        if self._reachable is not False:
            log.error("cut off from the fleet store: guarding on local evidence only", error=why)
        self._reachable = False

    def _back(self) -> None:
        if self._reachable is False:
            log.warning("the fleet store is back", switched_while_cut_off=self._cut_switches)
        self._reachable = True
        self._cut_switches = 0


def _side(guard: Guard, now: float) -> Side:
    """Which unit runs, as the systemd watch last read them."""
    watch = guard.target.watch
    if watch is None:
        return Side.UNKNOWN
    latest = watch.latest(now)
    primary, fallback = guard.target.settings.primary.unit, guard.target.settings.fallback.unit
    read_primary, read_fallback = latest.get(primary), latest.get(fallback)
    if read_primary is None or read_fallback is None:
        return Side.UNKNOWN
    if read_primary.active:
        return Side.PRIMARY
    if read_fallback.active:
        return Side.FALLBACK
    return Side.NEITHER


def _reason(evaluated: model.Evaluation) -> str:
    firing = [
        s.name
        for s in evaluated.signals
        if s.state is model.SignalState.FIRING and s.rule.severity is model.Severity.CRITICAL
    ]
    return "critical: " + (", ".join(firing) if firing else "-")


def _instant(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)

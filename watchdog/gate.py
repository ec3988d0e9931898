"""The gate: what turns a decision or a person's order into a run of the runbook, and tells people.

Three ways reach the executor, and all pass here: an automatic rollback (``auto`` mode), an
approved request (``approve`` mode, or a ``propose`` in any acting mode), and an operator's order
(``POST /api/v1/rollback``). The gate journals every request and vote (who, when, through what)
before acting, refuses what must not happen (a second switch of a rolled-back target, a vote on
a decided request, a voter off the allowlist) with words that say why, settles requests that
time out or are overtaken, and keeps one message per incident up to date through the notifier.

The approval rules themselves are pure (``approval``); the journal applies a vote in the same
transaction it reads the request in. The runs are the daemon's (``Launcher``): the gate only
asks it to start one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from watchdog import approval, config, journal, model, notify, timefmt
from watchdog.fleet.values import Ticket

log = structlog.get_logger("watchdog.gate")

STARTED = model.Launch.STARTED  # the words journaled as a decision's outcome
JOINED = model.Launch.JOINED
_SHOWN_SIGNALS = 10  # a message lists the worst few; the journal has them all


@dataclass(frozen=True, slots=True)
class Order:
    """Start the runbook: for which incident, on whose word, and whom to tell as it goes."""

    incident: int | None
    trigger: model.Trigger
    initiated_by: str
    reason: str
    observer: Observer | None = None
    on_end: Callable[[model.RunOutcome], None] | None = None


Observer = Callable[[model.StepEvent], None]
"""Told of each step as the run goes (the CLI's live view, the incident's message)."""


class Launcher(Protocol):
    """Starts (or joins) a target's rollback run: the one way into the executor. The daemon
    provides one per target; the gate wraps it (``Gate.launcher``) so every order, whoever
    gives it, is followed on the incident's message."""

    def blocked(self) -> str | None:
        """Why a run cannot start now (no executor, a run being reconciled), or None."""

    def in_flight(self) -> bool:
        """Whether a run of this target is already going (a new order joins it)."""

    def __call__(self, order: Order) -> model.Launched:
        """Start or join a run; ``REFUSED`` with why if it could not after all."""


@dataclass(frozen=True, slots=True)
class _Followed:
    """A target's launcher as the pipeline sees it: through the gate, so the incident's
    message follows the run whichever way it was ordered."""

    gate: Gate
    target: str

    def blocked(self) -> str | None:
        launcher = self.gate._launchers.get(self.target)
        return "no executor is connected" if launcher is None else launcher.blocked()

    def in_flight(self) -> bool:
        launcher = self.gate._launchers.get(self.target)
        return launcher is not None and launcher.in_flight()

    def __call__(self, order: Order) -> model.Launched:
        return self.gate.launch(self.target, order)


class FleetGate(Protocol):
    """Fleet mode's part in the gate (``runtime.fleet.FleetLink``): one incident, one message
    and one approval per group and release, and the group's slots for approved runs."""

    async def join(
        self, decided: model.Decision, incident: int, request: journal.ApprovalRow | None
    ) -> Ticket | None:
        """Join (or open) the fleet incident of this decision; None while cut off."""

    def owns(self, ticket: Ticket) -> bool:
        """Whether this daemon posts and updates the fleet incident's message."""

    def ticket_of(self, target: str, incident: int) -> Ticket | None:
        """The fleet incident a local incident joined, as last heard (no I/O)."""

    def ruling(self, target: str, approval_id: int) -> Ticket | None:
        """The fleet incident a local approval request belongs to, as last heard (no I/O)."""

    async def vote(
        self, incident: int, vote: approval.Vote, rules: approval.Rules, nonce: str | None
    ) -> tuple[approval.Ruling, Ticket | None]:
        """Judge a vote on a fleet incident (any node may take it)."""

    async def admit_approved(self, target: str) -> str | None:
        """A slot for an approved run, or why to wait (cut off: fleet approvals wait too)."""

    async def left(self, target: str, approval_id: int) -> None:
        """The local request ended without a run: the member leaves the fleet incident."""


@dataclass(frozen=True, slots=True)
class RollbackOrder:
    """An operator's ``POST /api/v1/rollback``, validated."""

    target: str | None
    reason: str
    category: str  # manual | security
    by: str  # the operator the request's token names
    via: str = "api"
    nonce: str | None = None


class Gate:
    """The one gate of the daemon, for every target."""

    def __init__(
        self,
        settings: config.Settings,
        store: journal.Journal,
        notifier: notify.Notifier | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.notifier: notify.Notifier = notifier if notifier is not None else notify.Silent()
        self.rules = approval.Rules(
            timeout=settings.approval.timeout,
            on_timeout=settings.approval.on_timeout,
            required=settings.approval.required_approvals,
            approvers=frozenset(settings.approval.approvers),
        )
        self._clock = clock
        self._targets = {t.name: t for t in settings.targets}
        self._launchers: dict[str, Launcher] = {}
        self._cards: dict[int, notify.Card] = {}  # the latest card of each incident
        self._refusals_shown: set[tuple[int, str, approval.Refusal]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.fleet: FleetGate | None = None  # fleet mode (set by the daemon)
        self._fleet_cards: dict[int, int] = {}  # fleet incident -> the local incident's card
        self._muted: set[int] = set()  # local incidents whose message another node owns now

    def reconfigure(self, settings: config.Settings) -> None:
        """New approval settings from a reload; requests already open keep their deadline."""
        self.settings = settings
        self.rules = approval.Rules(
            timeout=settings.approval.timeout,
            on_timeout=settings.approval.on_timeout,
            required=settings.approval.required_approvals,
            approvers=frozenset(settings.approval.approvers),
        )

    def attach(self, target: str, launcher: Launcher) -> None:
        """The daemon's runner for ``target``."""
        self._launchers[target] = launcher

    def launcher(self, target: str) -> Launcher:
        """``target``'s way into the executor, through this gate (what the pipeline holds)."""
        return _Followed(self, target)

    # -- from the pipeline ---------------------------------------------------------------

    def asks(self, decided: model.Decision, mode: model.Mode) -> journal.ApprovalAsk | None:
        """Whether this decision needs people: a rollback in approve mode, or a proposal in any
        mode that acts. The ask is journaled with the decision, atomically."""
        action = decided.action
        needs_people = (action is model.Action.ROLLBACK and mode is model.Mode.APPROVE) or (
            action is model.Action.PROPOSE and mode is not model.Mode.OBSERVE
        )
        if not needs_people:
            return None
        return journal.ApprovalAsk(
            expires_at=decided.at + self.rules.timeout, required=self.rules.required
        )

    def asked_outcome(self) -> str:
        who = ", ".join(sorted(self.rules.approvers)) or "nobody (approval.approvers is empty)"
        return (
            f"approval requested: {self.rules.required} of {who} within "
            f"{timefmt.format_duration(self.rules.timeout)}"
        )

    async def decided(
        self,
        evaluated: model.Evaluation,
        decided: model.Decision,
        incident: int | None,
        *,
        mode: model.Mode,
        outcome: str,
    ) -> None:
        """Tell people about a decision that asked for something (its incident's message)."""
        if incident is None or decided.action is model.Action.NONE:
            return
        pending = await asyncio.to_thread(
            self.store.approvals, target=decided.target, status="pending", limit=1
        )
        request = pending[0] if pending and pending[0].incident_id == incident else None
        target = self._targets[decided.target]
        card = notify.Card(
            incident=incident,
            target=decided.target,
            primary=target.primary.unit,
            fallback=target.fallback.unit,
            verdict=decided.verdict.value,
            score=decided.score,
            reason=decided.reason,
            mode=mode.value,
            signals=_signal_lines(evaluated),
            status=approval.progress(request.request()) if request else _status_of(outcome),
            approval=request.id if request else None,
            history=(*self._history(incident), self._line(decided.at, outcome)),
        )
        if self.fleet is not None:
            ticket = await self.fleet.join(decided, incident, request)
            if ticket is not None:
                if not self.fleet.owns(ticket):
                    return  # one message per fleet incident: its owner's
                self._fleet_cards[ticket.id] = incident
                card = _fleet_card(card, ticket)
        self._publish(card)

    def fleet_changed(self, ticket: Ticket) -> None:
        """A fleet incident this daemon's message speaks for changed (a member joined, a vote
        counted, a decision): the message follows -- unless another node took it over."""
        if self.fleet is not None and not self.fleet.owns(ticket):
            lost = self._fleet_cards.pop(ticket.id, None)
            if lost is not None:
                self._muted.add(lost)  # one writer per message: the new owner
            return
        incident = self._fleet_cards.get(ticket.id)
        card = self._cards.get(incident) if incident is not None else None
        if card is None:
            return
        self._publish(_fleet_card(card, ticket))

    async def adopt_fleet_message(self, ticket: Ticket, incident: int) -> None:
        """This daemon took over a fleet incident's message (its owner is lost): the message
        is the local incident's from now on, and follows the fleet incident again."""
        if ticket.message is not None:
            await asyncio.to_thread(self.store.remember_message, incident, *ticket.message)
        self._fleet_cards[ticket.id] = incident
        self._muted.discard(incident)
        await self._recall_card(incident)  # never posted yet: the next decision posts it
        card = self._cards.get(incident)
        if card is not None:
            self._publish(_fleet_card(card, ticket))

    async def settle(self, target: str) -> int:
        """Each tick: time out, cancel or launch what the approval requests of ``target`` say;
        how many still wait for people."""
        now = self._clock()
        arming = await asyncio.to_thread(self.store.arming, target)
        observing = self.settings.mode is model.Mode.OBSERVE  # a reload may have switched
        for row in await asyncio.to_thread(self.store.approvals, target=target, status="pending"):
            if observing:
                await self._end(row, approval.Status.CANCELLED, "the watchdog now only observes")
            elif not arming.armed:
                await self._end(
                    row, approval.Status.CANCELLED, "the target was rolled back meanwhile"
                )
            elif not await self._incident_open(row):
                await self._end(
                    row, approval.Status.CANCELLED, "the incident resolved before anyone decided"
                )
            elif self.fleet is not None and (ticket := self.fleet.ruling(target, row.id)):
                if ticket.decided:  # the fleet decided for every member (its clock, its votes)
                    status, words = _FLEET_STATUS[ticket.status], _fleet_words(ticket)
                    if _clock_approved(ticket) and row.verdict == model.Verdict.PROPOSE.value:
                        # a proposal is a person's call: the fleet's clock never approves it
                        status = approval.Status.EXPIRED
                        words = "nobody decided in time; a proposal never proceeds"
                    await self._end(row, status, words)
            elif (expired := approval.expiry(row.request(), now, self.rules)) is not None:
                await self._end(row, expired.status, expired.message)
        for row in await asyncio.to_thread(self.store.approvals, target=target, status="approved"):
            if row.launched:
                continue
            if not await self._incident_open(row):
                why = "not started: the incident resolved before the run could start"
                await asyncio.to_thread(self.store.mark_launched, row.id, why)
                self._update(row.incident_id, why, buttons=False)
            else:
                await self._launch_approved(row)
        waiting = await asyncio.to_thread(self.store.approvals, target=target, status="pending")
        return len(waiting)

    async def _incident_open(self, row: journal.ApprovalRow) -> bool:
        if row.incident_id is None:
            return True
        return await asyncio.to_thread(self.store.incident_open, row.incident_id)

    async def _end(self, row: journal.ApprovalRow, status: approval.Status, why: str) -> None:
        by = "rollback-watchdog"
        if self.fleet is not None and (ticket := self.fleet.ruling(row.target, row.id)):
            if ticket.status == "approved":  # the fleet's approvers decided (or its clock)
                by = ", ".join(ticket.approved_by) or ticket.decided_by or by
            elif ticket.decided_by:
                by = ticket.decided_by
        ended = await asyncio.to_thread(
            self.store.settle, row.id, status, at=self._clock(), by=by, outcome=why
        )
        if not ended:
            return  # someone decided first
        if self.fleet is not None and status is not approval.Status.APPROVED:
            await self.fleet.left(row.target, row.id)
        log.warning("approval settled", approval=row.id, target=row.target, status=status, why=why)
        await self._recall_card(row.incident_id)
        self._update(row.incident_id, f"approval #{row.id} {status.value}: {why}", buttons=False)
        if status is approval.Status.APPROVED:
            fresh = await asyncio.to_thread(self.store.approval, row.id)
            if fresh is not None:
                await self._launch_approved(fresh)

    # -- from people -----------------------------------------------------------------------

    async def fleet_vote(
        self, incident: int, vote: approval.Vote, *, nonce: str | None = None
    ) -> tuple[approval.Ruling, Ticket | None]:
        """Count one approve/deny on a fleet incident (any node takes it; the store decides,
        and the members act when they hear it)."""
        if self.fleet is None:
            ruling = approval.Ruling(
                False,
                approval.Status.CANCELLED,
                "fleet mode is off on this node: it has no fleet approvals",
                refusal=approval.Refusal.NOT_FOUND,
            )
            return ruling, None
        ruling, ticket = await self.fleet.vote(incident, vote, self.rules, nonce)
        who = ruling.voter or next((name for name in vote.identities if name), "unknown")
        log.warning(
            "fleet vote counted" if ruling.counted else "fleet vote refused",
            fleet_incident=incident,
            by=who,
            via=vote.via,
            now=ruling.status.value,
            refusal=ruling.refusal.value if ruling.refusal else None,
            why=ruling.message,
        )
        return ruling, ticket

    async def vote(
        self, approval_id: int, vote: approval.Vote, *, nonce: str | None = None
    ) -> tuple[approval.Ruling, journal.ApprovalRow | None]:
        """Count one approve/deny (journaled either way), and act on the request's new state."""
        ruling, row = await asyncio.to_thread(
            self.store.vote, approval_id, vote, self.rules, nonce=nonce
        )
        who = ruling.voter or next((name for name in vote.identities if name), "unknown")
        if ruling.refusal is not None:
            log.warning(
                "vote refused",
                approval=approval_id,
                by=who,
                via=vote.via,
                refusal=ruling.refusal.value,
                why=ruling.message,
            )
            shown = (approval_id, who, ruling.refusal)  # once each: clicks must not flood Slack
            replayed = ruling.refusal is approval.Refusal.REPLAY
            if row is not None and not replayed and shown not in self._refusals_shown:
                self._refusals_shown.add(shown)
                await self._recall_card(row.incident_id)
                self._update(row.incident_id, f"refused: {ruling.message}")
            return ruling, row
        log.warning("vote counted", approval=approval_id, by=who, via=vote.via, now=ruling.status)
        if row is not None:
            await self._recall_card(row.incident_id)
            pending = ruling.status is approval.Status.PENDING
            status = approval.progress(row.request())
            self._update(row.incident_id, ruling.message, status=status, buttons=pending)
            if ruling.status is approval.Status.APPROVED:
                await self._launch_approved(row)
        return ruling, row

    async def rollback(self, order: RollbackOrder) -> approval.Answer:
        """An operator's order: a critical incident of category ``manual`` or ``security``,
        run at once in any mode (a person decided) -- in approve mode only if that person is an
        approver -- never on a target already rolled back."""
        at = self._clock()
        refusal: approval.Refusal | None = None
        try:
            target = self.settings.target(order.target)
        except Exception as exc:  # an unknown or ambiguous target name
            target, refusal, why = None, approval.Refusal.NOT_FOUND, str(exc)
        if target is not None:
            launcher = self._launchers.get(target.name)
            arming = await asyncio.to_thread(self.store.arming, target.name)
            if self.settings.mode is model.Mode.APPROVE and order.by not in self.rules.approvers:
                refusal = approval.Refusal.FORBIDDEN  # the approvers decide in approve mode
                why = (
                    f"{order.by} is not on approval.approvers: in approve mode only an "
                    "approver may order a rollback"
                )
            elif not arming.armed:
                refusal = approval.Refusal.DISARMED
                why = f"{target.name} was already rolled back; re-arm it first (rearm)"
            elif launcher is None:
                refusal, why = approval.Refusal.UNAVAILABLE, "this daemon cannot run rollbacks"
            elif launcher.in_flight():
                refusal, why = approval.Refusal.IN_FLIGHT, f"a rollback of {target.name} is running"
            elif (blocked := launcher.blocked()) is not None:
                refusal, why = approval.Refusal.UNAVAILABLE, f"cannot start now: {blocked}"
        name = target.name if target is not None else order.target
        accepted = refusal is None and target is not None
        detail = f"{order.category}: {order.reason}" if accepted else why
        fresh = await asyncio.to_thread(
            self.store.audit,
            at=at,
            via=order.via,
            actor=order.by,
            action="rollback",
            accepted=accepted,
            detail=detail,
            target=name,
            nonce=order.nonce,
        )
        if not fresh:
            return approval.Answer(
                False, "this request was already received; ignored", approval.Refusal.REPLAY
            )
        if refusal is not None or target is None:
            log.warning("rollback order refused", target=name, by=order.by, why=why)
            return approval.Answer(False, why, refusal)
        incident = await asyncio.to_thread(
            self.store.open_manual_incident,
            target.name,
            reason=order.reason,
            at=at,
            category=order.category,
            by=order.by,
            via=order.via,
        )
        reason = f"{order.category}: {order.reason} (ordered by {order.by} via {order.via})"
        card = notify.Card(
            incident=incident,
            target=target.name,
            primary=target.primary.unit,
            fallback=target.fallback.unit,
            verdict=model.Verdict.ROLLBACK.value,
            score=0.0,
            reason=reason,
            mode=self.settings.mode.value,
            signals=(),
            status="Rolling back",
            history=(self._line(at, f"rollback ordered by {order.by} via {order.via}"),),
        )
        self._cards[incident] = card
        started = self.launch(
            target.name,
            Order(incident, model.Trigger.MANUAL, order.by, f"{order.category}: {order.reason}"),
        )
        if not started.going:
            self._update(incident, str(started), status="Not started", buttons=False)
            return approval.Answer(False, str(started), approval.Refusal.UNAVAILABLE, incident)
        self._publish(card)
        log.warning("rollback ordered", target=target.name, by=order.by, incident=incident)
        return approval.Answer(True, str(started), None, incident)

    # -- starting runs ---------------------------------------------------------------------

    def launch(self, target: str, order: Order) -> model.Launched:
        """Ask the daemon to run the runbook; the gate follows it on the incident's message."""
        launcher = self._launchers.get(target)
        if launcher is None:
            return model.Launched(model.Launch.REFUSED, "no executor is connected")
        if order.incident is not None:
            incident = order.incident
            order = dataclasses.replace(
                order,
                observer=order.observer or self._step_observer(incident),
                on_end=order.on_end or self._end_observer(incident),
            )
        return launcher(order)

    async def _launch_approved(self, row: journal.ApprovalRow) -> None:
        arming = await asyncio.to_thread(self.store.arming, row.target)
        why = None
        if not arming.armed:  # rolled back another way meanwhile: never switch twice
            why = "not started: the target was already rolled back"
        elif self.settings.mode is model.Mode.OBSERVE:
            why = "not started: the watchdog now only observes"
        elif not await self._incident_open(row):
            why = "not started: the incident resolved before the run could start"
        await self._recall_card(row.incident_id)
        if why is not None:
            await asyncio.to_thread(self.store.mark_launched, row.id, why)
            self._update(row.incident_id, why, buttons=False)
            return
        launcher = self._launchers.get(row.target)
        blocked = "no executor is connected" if launcher is None else launcher.blocked()
        if blocked is None and self.fleet is not None and not launcher_in_flight(launcher):
            blocked = await self.fleet.admit_approved(row.target)  # the group's slots
        if blocked is not None:
            log.error("approved rollback waits", approval=row.id, why=blocked)
            return  # the next tick tries again
        by = ", ".join(row.approvers) or "nobody (timed out with on_timeout: proceed)"
        if not row.approvers and row.decided_by not in (None, "rollback-watchdog"):
            by = str(row.decided_by)  # approved for the fleet: by the fleet's approvers
        order = Order(row.incident_id, model.Trigger.APPROVED, by, row.reason)
        started = self.launch(row.target, order)
        if started.going:
            await asyncio.to_thread(self.store.mark_launched, row.id, str(started))
            self._update(row.incident_id, str(started), status="Rolling back", buttons=False)
        else:
            log.error("approved rollback not started", approval=row.id, why=str(started))

    def _step_observer(self, incident: int) -> Observer:
        def observe(event: model.StepEvent) -> None:
            if event.progress:  # a live view's ticker: too frequent for a chat message
                return
            if event.status is model.StepStatus.RUNNING:
                status = f"Rolling back: step {event.seq}/{event.total} {event.name}"
                self._update(incident, None, status=status, buttons=False)
            else:
                took = f" ({event.seconds:.1f}s)" if event.seconds else ""
                line = f"{event.name} {event.status}{took}: {event.detail}".rstrip(": ")
                self._update(incident, line, buttons=False)

        return observe

    def _end_observer(self, incident: int) -> Callable[[model.RunOutcome], None]:
        def ended(outcome: model.RunOutcome) -> None:
            status = f"Rollback {outcome.status}: {outcome.detail}"
            self._update(
                incident,
                f"run #{outcome.run_id} {outcome.status}",
                status=status,
                buttons=False,
                final=True,
            )

        return ended

    # -- the incident's message ------------------------------------------------------------

    async def attach_document(
        self, incident: int | None, title: str, body: str, *, target: str | None = None
    ) -> None:
        """A document for the incident's message (the rollback report); in fleet mode, under
        the fleet incident's one message when another node owns it."""
        if incident is None:
            return
        thread = None
        if self.fleet is not None and target is not None:
            ticket = self.fleet.ticket_of(target, incident)
            if ticket is not None and not self.fleet.owns(ticket):
                if ticket.message is None:
                    log.info("document kept local: the fleet message is not known", title=title)
                    return
                thread = ticket.message
        await self.notifier.attach(incident, title, body, thread=thread)

    async def note(
        self, incident: int | None, line: str, *, status: str | None = None, final: bool = False
    ) -> None:
        """A line on the incident's message from elsewhere (a resumed run, the watch after)."""
        await self._recall_card(incident)
        self._update(incident, line, status=status, buttons=False, final=final)

    def _update(
        self,
        incident: int | None,
        line: str | None,
        *,
        status: str | None = None,
        buttons: bool | None = None,
        final: bool = False,
    ) -> None:
        if incident is None:
            return
        card = self._cards.get(incident)
        if card is None:
            return  # nothing was posted for it by this process; the journal has the story
        history = card.history if line is None else (*card.history, self._line(self._clock(), line))
        self._publish(
            dataclasses.replace(
                card,
                history=history,
                status=status if status is not None else card.status,
                approval=card.approval if buttons in (None, True) else None,
                final=final or card.final,
            )
        )

    async def _recall_card(self, incident: int | None) -> None:
        """After a restart the cards are gone: rebuild an incident's from the journal, so its
        message keeps being updated (votes, expiry, the run)."""
        if incident is None or incident in self._cards:
            return
        if await asyncio.to_thread(self.store.message_ref, incident) is None:
            return  # never posted: nothing to update
        report = await asyncio.to_thread(self.store.incident_report, incident)
        if report is None or report["target"] not in self._targets:
            return
        if self.fleet is not None:  # a fleet incident's message is its owner's alone
            ticket = self.fleet.ticket_of(report["target"], incident)
            if ticket is not None and not self.fleet.owns(ticket):
                self._muted.add(incident)
                return
        target = self._targets[report["target"]]
        pending = [a for a in report["approvals"] if a["status"] == "pending"]
        self._cards[incident] = notify.Card(
            incident=incident,
            target=target.name,
            primary=target.primary.unit,
            fallback=target.fallback.unit,
            verdict=report["verdict"],
            score=0.0,
            reason=report["reason"],
            mode=self.settings.mode.value,
            signals=(),
            status="Awaiting approval" if pending else report["status"].capitalize(),
            approval=pending[-1]["id"] if pending else None,
        )

    def _history(self, incident: int) -> tuple[str, ...]:
        card = self._cards.get(incident)
        return card.history if card is not None else ()

    def _line(self, at: float, text: str) -> str:
        return f"{timefmt.format_instant(at)[11:19]}Z {text}"

    def _publish(self, card: notify.Card) -> None:
        if card.incident in self._muted:
            return  # another node owns this fleet incident's message now
        self._cards[card.incident] = card
        self._spawn(self.notifier.publish(card))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Let the last messages go out (briefly), then close the notifier."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        await self.notifier.aclose()


_FLEET_STATUS = {
    "approved": approval.Status.APPROVED,
    "denied": approval.Status.DENIED,
    "expired": approval.Status.EXPIRED,
}


def _clock_approved(ticket: Ticket) -> bool:
    """The fleet incident was approved by its timeout (``on_timeout: proceed``), not people."""
    return (
        ticket.status == "approved"
        and ticket.decided_by == "rollback-watchdog"
        and not ticket.approved_by  # a voter of that name still leaves their name here
    )


def _fleet_words(ticket: Ticket) -> str:
    who = ", ".join(ticket.approved_by)
    said = f" by {who}" if who and ticket.status == "approved" else ""
    return f"{ticket.status}{said} for fleet incident #{ticket.id} (group {ticket.group})"


def _fleet_card(card: notify.Card, ticket: Ticket) -> notify.Card:
    """The card as the fleet incident's one message: every member, the fleet's approval."""
    pending = ticket.asks and ticket.status == "pending"
    if pending:
        status = (
            f"Awaiting approval ({len(ticket.approved_by)} of {ticket.required}) for every node"
        )
    elif ticket.status == "approved":
        status = f"Approved by {', '.join(ticket.approved_by) or 'the timeout'}: every node acts"
    elif ticket.decided:
        status = f"Fleet approval {ticket.status}"
    else:
        status = card.status
    return dataclasses.replace(
        card,
        fleet=notify.FleetLine(
            ticket.id,
            ticket.group,
            ticket.release,
            tuple(str(m) for m in ticket.members),
            asking=pending,
        ),
        approval=None,  # the local request is answered through the fleet's, never directly
        status=status,
    )


def launcher_in_flight(launcher: Launcher | None) -> bool:
    return launcher is not None and launcher.in_flight()


def _signal_lines(evaluated: model.Evaluation) -> tuple[notify.SignalLine, ...]:
    order = {
        model.SignalState.FIRING: 0,
        model.SignalState.PENDING: 1,
        model.SignalState.ERROR: 2,
        model.SignalState.NODATA: 3,
    }
    shown = sorted(
        (s for s in evaluated.signals if s.state in order),
        key=lambda s: (order[s.state], s.rule.severity is not model.Severity.CRITICAL),
    )
    return tuple(
        notify.SignalLine(
            name=s.name,
            state=s.state.value,
            severity=s.rule.severity.value,
            category=s.rule.category.value,
            value=s.value,
            threshold=s.rule.threshold,
            summary=s.rule.summary,
        )
        for s in shown[:_SHOWN_SIGNALS]
    )


def _status_of(outcome: str) -> str:
    return outcome[:1].upper() + outcome[1:]

"""What arrives from outside while the daemon runs: Alertmanager's deliveries, approval channels'
clicks and the operator API's votes and orders, handed to the journal and the gate.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from watchdog import (
    approval,
    gate,
    journal,
    logs,
    model,
    telemetry,
)
from watchdog.notify import channel, slack
from watchdog.runtime.guard import Guard
from watchdog.sources import alertmanager

log = structlog.get_logger("watchdog.runtime")


class Intake:
    """What the listener hands its validated requests to (``server.Orders``): alerts go to the
    journal and wake the evaluation, votes and orders go to the gate."""

    def __init__(
        self,
        gatekeeper: gate.Gate,
        guards: list[Guard],
        recorder: telemetry.Recorder,
        clock: Callable[[], float],
    ) -> None:
        self._gate = gatekeeper
        self._guards = guards
        self._recorder = recorder
        self._clock = clock
        self._starting: list[alertmanager.Destination] = []
        # unrouted and dropped alerts: the first of each name logged, the rest counted
        self._alert_tally = logs.Tally("alerts not taken", log=log.info)

    def route_before_start(self, destinations: Sequence[alertmanager.Destination]) -> None:
        """Where alerts go until the loops exist (the listener opens first)."""
        self._starting = list(destinations)

    def flush(self) -> None:
        """Log what was counted of alerts not taken (the heartbeat calls it now and then)."""
        self._alert_tally.flush()

    async def ingest(self, delivery: alertmanager.Delivery) -> None:
        """Keep the alerts routed to a target (and wake its evaluation if one is new), and
        the unrouted ones apart, each with its reason: never a decision."""
        destinations = [
            alertmanager.Destination(
                g.target.name, g.target.settings.alert_matchers, g.target.rules
            )
            for g in self._guards
        ] or self._starting
        if delivery.truncated_alerts:
            log.warning(
                "Alertmanager left alerts out of a notification (max_alerts)",
                truncated=delivery.truncated_alerts,
            )
        routed, unrouted = alertmanager.route(delivery, destinations)
        at = self._clock()
        settings = self._gate.settings.alertmanager
        store = self._gate.store
        ingested = await asyncio.to_thread(
            store.ingest_alerts,
            [_record(r) for r in routed],
            at=at,
            limit=settings.max_alerts,
            forget_before=at - settings.forget_after,
        )
        let_go = await asyncio.to_thread(
            store.record_unrouted,
            [_unrouted_record(u) for u in unrouted],
            at=at,
            limit=settings.max_alerts,
        )
        recorder = self._recorder
        recorder.alerts.labels("new").inc(len(ingested.new_firing))
        recorder.alerts.labels("repeated").inc(ingested.repeated)
        recorder.alerts.labels("resolved").inc(ingested.resolved)
        for reason in model.Unrouted:
            count = sum(1 for u in unrouted if u.reason is reason)
            if count:
                recorder.alerts_unrouted.labels(reason.value).inc(count)
        if ingested.dropped:
            recorder.alerts_dropped.labels("routed").inc(ingested.dropped)
            self._alert_tally.add(f"routed alerts dropped: {settings.max_alerts} already kept")
        if let_go:
            recorder.alerts_dropped.labels("unrouted").inc(let_go)
        for one in unrouted:  # keyed by reason only: names are the sender's, and unbounded
            self._alert_tally.add(f"unrouted alerts ({one.reason.value}; see status)")
        fresh = {alert.target for alert in ingested.new_firing}
        if fresh:
            log.warning(
                "alerts from Alertmanager",
                new=[f"{a.target}/{a.alertname}" for a in ingested.new_firing][:10],
                repeated=ingested.repeated,
                resolved=ingested.resolved,
            )
        for guard in self._guards:
            if guard.target.name in fresh:
                guard.wake()

    async def click(self, click: channel.Click) -> None:
        """An approval channel's click, as a vote of the person the channel names."""
        vote = approval.Vote(
            approve=click.approve, identities=(click.identity,), via=click.via, at=self._clock()
        )
        if click.fleet:  # a fleet incident's button: the store decides for every member
            ruling, _ = await self._gate.fleet_vote(click.approval, vote, nonce=click.nonce)
        else:
            ruling, _ = await self._gate.vote(click.approval, vote, nonce=click.nonce)
        self._count(ruling, click.via)

    async def interaction(self, interaction: slack.Interaction) -> None:
        """A Slack click that came over Socket Mode (no HTTP request to verify)."""
        await self.click(interaction.click())

    async def vote(
        self, approval_id: int, vote: approval.Vote, nonce: str | None
    ) -> tuple[approval.Ruling, dict[str, Any] | None]:
        ruling, row = await self._gate.vote(approval_id, vote, nonce=nonce)
        self._count(ruling, vote.via)
        if row is None:
            return ruling, None
        return ruling, {**dataclasses.asdict(row), "approved_by": list(row.approvers)}

    async def fleet_vote(
        self, incident: int, vote: approval.Vote, nonce: str | None
    ) -> tuple[approval.Ruling, dict[str, Any] | None]:
        ruling, ticket = await self._gate.fleet_vote(incident, vote, nonce=nonce)
        self._count(ruling, vote.via)
        if ticket is None:
            return ruling, None
        return ruling, {
            "id": ticket.id,
            "group": ticket.group,
            "release": ticket.release,
            "status": ticket.status,
            "required": ticket.required,
            "approved_by": list(ticket.approved_by),
            "members": [str(m) for m in ticket.members],
        }

    async def rollback(self, order: gate.RollbackOrder) -> approval.Answer:
        return await self._gate.rollback(order)

    async def incident(self, incident_id: int) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._gate.store.incident_report, incident_id)

    def _count(self, ruling: approval.Ruling, via: str) -> None:
        result = "counted" if ruling.refusal is None else ruling.refusal.value
        self._recorder.votes.labels(via, result).inc()


def _record(routed: alertmanager.Routed) -> journal.AlertRecord:
    return journal.AlertRecord(
        fingerprint=routed.alert.fingerprint,
        starts_at=routed.alert.starts_at,
        target=routed.target,
        alertname=routed.rule.name,
        status=routed.alert.status,
        labels=routed.alert.labels,
        annotations=routed.alert.annotations,
    )


def _unrouted_record(unrouted: alertmanager.Unrouted) -> journal.UnroutedRecord:
    return journal.UnroutedRecord(
        fingerprint=unrouted.alert.fingerprint,
        starts_at=unrouted.alert.starts_at,
        alertname=unrouted.alert.name,
        status=unrouted.alert.status,
        reason=unrouted.reason,
        detail=unrouted.detail,
        labels=unrouted.alert.labels,
        target=unrouted.target,
    )

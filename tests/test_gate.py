"""The approval gate and operator orders over a real journal: a tick asks, people vote, time
runs out, the journal survives a restart; and Alertmanager's alerts feed the same decision."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.test_pipeline import BROKEN, DOWN, HEALTHY, TARGET, Client, make_target
from watchdog import approval, config, gate, journal, model, notify, pipeline
from watchdog.approval import Refusal, Status


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Runner:
    """The daemon's runner as the gate sees it: records each order it was given."""

    def __init__(self) -> None:
        self.orders: list[gate.Order] = []
        self.blocked_by: str | None = None
        self.running = False

    def blocked(self) -> str | None:
        return self.blocked_by

    def in_flight(self) -> bool:
        return self.running

    def __call__(self, order: gate.Order) -> model.Launched:
        self.orders.append(order)
        return model.Launched(model.Launch.STARTED)


class Cards:
    """A notifier that keeps every card it was given (what Slack would have shown)."""

    def __init__(self) -> None:
        self.cards: list[notify.Card] = []

    async def publish(self, card: notify.Card) -> None:
        self.cards.append(card)

    async def aclose(self) -> None:
        pass


def settings(
    mode: model.Mode = model.Mode.APPROVE, *, required: int = 2, on_timeout: str = "deny"
) -> config.Settings:
    return config.Settings(
        mode=mode,
        targets=[TARGET],
        approval=config.ApprovalSettings(
            timeout=600,
            on_timeout=on_timeout,  # type: ignore[arg-type]
            required_approvals=required,
            approvers=["alice", "bob", "U0CAROL"],
        ),
    )


def wired(
    tmp_path: Path,
    answers: dict[str, float | None],
    *,
    mode: model.Mode = model.Mode.APPROVE,
    required: int = 2,
    on_timeout: str = "deny",
) -> tuple[pipeline.Target, gate.Gate, Runner, Cards, Clock]:
    clock = Clock()
    target = make_target(tmp_path, Client(answers), mode=mode)
    target.clock = clock
    cards = Cards()
    gatekeeper = gate.Gate(
        settings(mode, required=required, on_timeout=on_timeout),
        target.store,
        cards,
        clock=clock,
    )
    runner = Runner()
    gatekeeper.attach("lavalink", runner)
    target.gatekeeper = gatekeeper
    if mode is model.Mode.AUTO:  # as the daemon wires it: through the gate
        target.launch = gatekeeper.launcher("lavalink")
    return target, gatekeeper, runner, cards, clock


def vote(who: str, *, approve: bool = True, at: float = 10_010.0) -> approval.Vote:
    return approval.Vote(approve=approve, identities=(who,), via="api", at=at)


async def settled() -> None:
    await asyncio.sleep(0)  # let the published cards' tasks run


async def test_approve_mode_asks_once_and_a_two_person_rule_starts_the_run(
    tmp_path: Path,
) -> None:
    target, gatekeeper, runner, cards, _ = wired(tmp_path, BROKEN)
    made = await target.tick(budget=5)
    assert made.action is model.Action.ROLLBACK
    [asked] = target.store.approvals(status="pending")
    assert asked.required == 2 and asked.verdict == "rollback"
    assert target.store.decisions()[0].outcome.startswith(
        "approval requested: 2 of U0CAROL, alice, bob within 10m"
    )
    await target.tick(budget=5)  # same incident: not asked twice
    assert len(target.store.approvals()) == 1 and runner.orders == []
    await settled()
    assert cards.cards[0].approval == asked.id and cards.cards[0].status.startswith("Awaiting")

    refused, _ = await gatekeeper.vote(asked.id, vote("mallory"))
    assert refused.refusal is Refusal.FORBIDDEN
    first, row = await gatekeeper.vote(asked.id, vote("alice"))
    assert first.counted and row is not None and row.status == "pending"
    twice, _ = await gatekeeper.vote(asked.id, vote("alice"))
    assert twice.refusal is Refusal.DUPLICATE
    assert runner.orders == []
    second, row = await gatekeeper.vote(asked.id, vote("bob"))
    assert second.status is Status.APPROVED
    [order] = runner.orders
    assert (order.trigger, order.initiated_by, order.incident) == (
        "approved",
        "alice, bob",
        asked.incident_id,
    )
    assert order.observer is not None and order.on_end is not None  # the message follows it
    late, _ = await gatekeeper.vote(asked.id, vote("U0CAROL"))
    assert late.refusal is Refusal.DECIDED
    assert target.store.approval(asked.id).launched == 1  # type: ignore[union-attr]

    trail = [(a.actor, a.action, a.accepted) for a in reversed(target.store.audit_trail())]
    assert trail == [
        ("mallory", "approve", 0),
        ("alice", "approve", 1),
        ("alice", "approve", 0),
        ("bob", "approve", 1),
        ("U0CAROL", "approve", 0),
    ]
    await target.tick(budget=5)  # the approved request is not launched again
    assert len(runner.orders) == 1


async def test_a_pending_request_survives_a_restart(tmp_path: Path) -> None:
    target, _, _, _, _ = wired(tmp_path, BROKEN, required=1)
    await target.tick(budget=5)
    [asked] = target.store.approvals(status="pending")
    target.store.close()

    again, gatekeeper, runner, _, _ = wired(tmp_path, BROKEN, required=1)  # a new process
    ruling, _ = await gatekeeper.vote(asked.id, vote("bob"))
    assert ruling.status is Status.APPROVED and [o.trigger for o in runner.orders] == ["approved"]
    assert again.store.approval(asked.id).decided_by == "bob"  # type: ignore[union-attr]


async def test_one_deny_keeps_the_service_and_nothing_runs(tmp_path: Path) -> None:
    target, gatekeeper, runner, _, _ = wired(tmp_path, BROKEN)
    await target.tick(budget=5)
    [asked] = target.store.approvals(status="pending")
    denied, _ = await gatekeeper.vote(asked.id, vote("bob", approve=False))
    assert denied.status is Status.DENIED
    await target.tick(budget=5)
    assert runner.orders == [] and target.store.approvals(status="pending") == []


@pytest.mark.parametrize(("on_timeout", "runs"), [("deny", 0), ("proceed", 1)])
async def test_a_request_nobody_decides_ends_as_on_timeout_says(
    tmp_path: Path, on_timeout: str, runs: int
) -> None:
    target, gatekeeper, runner, _, clock = wired(tmp_path, BROKEN, on_timeout=on_timeout)
    await target.tick(budget=5)
    [asked] = target.store.approvals()
    clock.now += 599
    await target.tick(budget=5)
    assert target.store.approval(asked.id).status == "pending"  # type: ignore[union-attr]
    clock.now += 1
    await target.tick(budget=5)
    ended = target.store.approval(asked.id)
    assert ended is not None and ended.status == ("expired" if runs == 0 else "approved")
    assert f"on_timeout: {on_timeout}" in ended.outcome
    assert len(runner.orders) == runs
    late, _ = await gatekeeper.vote(asked.id, vote("alice", at=clock.now))
    assert late.refusal is Refusal.DECIDED


async def test_a_resolved_incident_cancels_its_request(tmp_path: Path) -> None:
    target, gatekeeper, runner, _, _ = wired(tmp_path, BROKEN)
    await target.tick(budget=5)
    [asked] = target.store.approvals()
    target.source = make_target(tmp_path / "other", Client(HEALTHY)).source
    assert (await target.tick(budget=5)).verdict is model.Verdict.HOLD
    cancelled = target.store.approval(asked.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert "resolved before anyone decided" in cancelled.outcome
    refused, _ = await gatekeeper.vote(asked.id, vote("alice"))
    assert refused.refusal is Refusal.DECIDED and runner.orders == []


async def test_the_same_click_twice_counts_once(tmp_path: Path) -> None:
    target, gatekeeper, _, _, _ = wired(tmp_path, BROKEN)
    await target.tick(budget=5)
    [asked] = target.store.approvals()
    nonce = "slack:U0CAROL:1700000000.123:1"
    first, _ = await gatekeeper.vote(asked.id, vote("U0CAROL"), nonce=nonce)
    replay, _ = await gatekeeper.vote(asked.id, vote("U0CAROL"), nonce=nonce)
    assert first.counted and replay.refusal is Refusal.REPLAY
    assert target.store.approval(asked.id).approvers == ("U0CAROL",)  # type: ignore[union-attr]


async def test_a_vote_on_no_such_request_is_refused_and_journaled(tmp_path: Path) -> None:
    target, gatekeeper, _, _, _ = wired(tmp_path, HEALTHY)
    ruling, row = await gatekeeper.vote(99, vote("alice"))
    assert (ruling.refusal, row) == (Refusal.NOT_FOUND, None)
    assert target.store.audit_trail()[0].detail == "there is no approval #99"


async def test_a_proposal_needs_people_even_in_auto_mode(tmp_path: Path) -> None:
    target, _, runner, _, _ = wired(tmp_path, HEALTHY, mode=model.Mode.AUTO)
    assert (
        gate.Gate.asks(
            target.gatekeeper,  # type: ignore[arg-type]
            model.Decision("lavalink", 1.0, model.Verdict.PROPOSE, model.Action.PROPOSE, "x"),
            model.Mode.AUTO,
        )
        is not None
    )
    made = model.Decision("lavalink", 1.0, model.Verdict.ROLLBACK, model.Action.ROLLBACK, "x")
    assert target.gatekeeper.asks(made, model.Mode.AUTO) is None  # type: ignore[union-attr]
    assert target.gatekeeper.asks(made, model.Mode.OBSERVE) is None  # type: ignore[union-attr]
    assert runner.orders == []


def order(**changes: object) -> gate.RollbackOrder:
    values: dict[str, object] = {
        "target": None,
        "reason": "CVE-2026-1234 in the Rust build",
        "category": "security",
        "by": "alice",
    }
    values.update(changes)
    return gate.RollbackOrder(**values)  # type: ignore[arg-type]


async def test_an_operator_order_opens_a_critical_incident_and_runs(tmp_path: Path) -> None:
    target, gatekeeper, runner, cards, _ = wired(tmp_path, HEALTHY, mode=model.Mode.OBSERVE)
    answer = await gatekeeper.rollback(order(nonce="api:req-1"))
    assert answer.accepted and answer.incident is not None
    [run] = runner.orders
    assert (run.trigger, run.initiated_by, run.incident) == ("manual", "alice", answer.incident)
    incident = target.store.incidents()[0]
    assert (incident.verdict, incident.reason) == (
        "rollback",
        "security: CVE-2026-1234 in the Rust build",
    )
    assert target.store.decisions()[0].outcome == "ordered by alice via api"
    replay = await gatekeeper.rollback(order(nonce="api:req-1"))
    assert replay.refusal is Refusal.REPLAY and len(runner.orders) == 1
    await settled()
    assert cards.cards[0].reason.startswith("security: CVE-2026-1234")


@pytest.mark.parametrize(
    ("setup", "refusal", "words"),
    [
        ("disarmed", Refusal.DISARMED, "already rolled back; re-arm it first"),
        ("running", Refusal.IN_FLIGHT, "is running"),
        ("blocked", Refusal.UNAVAILABLE, "cannot start now: no executor is connected"),
        ("unknown", Refusal.NOT_FOUND, "no target named 'nope'"),
    ],
)
async def test_an_order_that_must_not_run_is_refused_and_journaled(
    tmp_path: Path, setup: str, refusal: Refusal, words: str
) -> None:
    target, gatekeeper, runner, _, _ = wired(tmp_path, HEALTHY)
    changes: dict[str, object] = {}
    if setup == "disarmed":
        target.store.set_armed("lavalink", False, at=1, by="executor", note="rolled back")
    elif setup == "running":
        runner.running = True
    elif setup == "blocked":
        runner.blocked_by = "no executor is connected"
    else:
        changes["target"] = "nope"
    answer = await gatekeeper.rollback(order(**changes))
    assert not answer.accepted and answer.refusal is refusal and words in answer.message
    assert runner.orders == [] and target.store.incidents() == []
    [line] = target.store.audit_trail()
    assert (line.actor, line.action, line.accepted) == ("alice", "rollback", 0)


async def test_in_approve_mode_only_an_approver_may_order_a_rollback(tmp_path: Path) -> None:
    target, gatekeeper, runner, _, _ = wired(tmp_path, HEALTHY, mode=model.Mode.APPROVE)
    answer = await gatekeeper.rollback(order(by="mallory"))
    assert not answer.accepted and answer.refusal is Refusal.FORBIDDEN
    assert answer.message == (
        "mallory is not on approval.approvers: in approve mode only an approver may order a "
        "rollback"
    )
    assert runner.orders == [] and target.store.incidents() == []
    [line] = target.store.audit_trail()
    assert (line.actor, line.accepted, line.detail) == ("mallory", 0, answer.message)
    allowed = await gatekeeper.rollback(order(by="bob"))  # an approver: a person decided
    assert allowed.accepted and [o.initiated_by for o in runner.orders] == ["bob"]


async def test_in_auto_mode_any_operator_may_order_a_rollback(tmp_path: Path) -> None:
    _, gatekeeper, runner, _, _ = wired(tmp_path, HEALTHY, mode=model.Mode.AUTO)
    assert (await gatekeeper.rollback(order(by="mallory"))).accepted
    assert [o.initiated_by for o in runner.orders] == ["mallory"]


# -- Alertmanager's alerts in the decision --------------------------------------------------


def alert(
    status: str = "firing", *, starts_at: float = 9_000.0, name: str = DOWN.name
) -> journal.AlertRecord:
    return journal.AlertRecord(
        fingerprint=f"fp-{name}",
        starts_at=starts_at,
        target="lavalink",
        alertname=name,
        status=status,
        labels={
            "alertname": name,
            "severity": "critical",
            "instance": "node1",
            "job": "lavalink-rust",
        },
        annotations={"summary": "down"},
    )


NO_DATA = {'up{job="lavalink-rust"}': None, DOWN.expr: None}  # Prometheus has no series at all


async def test_an_alertmanager_alert_rolls_back_while_prometheus_has_no_data(
    tmp_path: Path,
) -> None:
    target, _, _, _, _ = wired(tmp_path, NO_DATA, mode=model.Mode.OBSERVE)
    target.alerts_forget_after = 3600
    ingested = target.store.ingest_alerts([alert()], at=9_990)
    assert [a.alertname for a in ingested.new_firing] == [DOWN.name]
    made = await target.tick(budget=5)
    assert made.action is model.Action.ROLLBACK
    assert made.reason == (
        "critical: Down firing, threshold > 1, since 1970-01-01T02:30:00Z, firing in Alertmanager"
    )
    assert target.store.decisions()[0].outcome == "would roll back (observe mode)"

    repeat = target.store.ingest_alerts([alert()], at=9_995)  # Alertmanager's repeat or HA peer
    assert (repeat.new_firing, repeat.repeated) == ((), 1)
    still = await target.tick(budget=5)  # the evidence holds, the incident acted once
    assert (still.verdict, still.action) == (model.Verdict.ROLLBACK, model.Action.NONE)
    assert len(target.store.decisions()) == 1

    target.store.set_armed("lavalink", True, at=9_996, by="alice", note="re-armed")
    target.store.ingest_alerts([alert()], at=9_997)  # the same alert, delivered again
    after = await target.tick(budget=5)  # no data of its own, and the alert is spent
    assert (after.verdict, after.action) == (model.Verdict.INCONCLUSIVE, model.Action.NONE)
    assert len(target.store.decisions()) == 1


async def test_the_watchdogs_own_fresh_ok_beats_a_stale_alert(tmp_path: Path) -> None:
    """A notification can be minutes old; when the watchdog's own query says ok, that wins."""
    target, _, _, _, _ = wired(tmp_path, HEALTHY, mode=model.Mode.OBSERVE)
    target.alerts_forget_after = 3600
    target.store.ingest_alerts([alert()], at=9_990)
    made = await target.tick(budget=5)
    assert (made.verdict, made.action) == (model.Verdict.HOLD, model.Action.NONE)


async def test_a_resolved_alert_never_acts_and_stays_resolved(tmp_path: Path) -> None:
    target, _, _, _, _ = wired(tmp_path, HEALTHY, mode=model.Mode.OBSERVE)
    target.alerts_forget_after = 3600
    target.store.ingest_alerts([alert("resolved")], at=9_990)
    assert (await target.tick(budget=5)).verdict is model.Verdict.HOLD
    late_retry = target.store.ingest_alerts([alert("firing")], at=9_991)  # out of order
    assert late_retry.new_firing == ()
    assert (await target.tick(budget=5)).verdict is model.Verdict.HOLD
    assert target.store.decisions() == []


async def test_a_stale_alert_is_forgotten(tmp_path: Path) -> None:
    target, _, _, _, _ = wired(tmp_path, NO_DATA, mode=model.Mode.OBSERVE)
    target.alerts_forget_after = 60
    target.store.ingest_alerts([alert()], at=10_000 - 61)  # never re-sent nor resolved since
    assert (await target.tick(budget=5)).verdict is model.Verdict.INCONCLUSIVE


async def test_a_new_instance_of_an_alert_counts_again(tmp_path: Path) -> None:
    target, _, _, _, _ = wired(tmp_path, NO_DATA, mode=model.Mode.OBSERVE)
    target.alerts_forget_after = 3600
    target.store.ingest_alerts([alert()], at=9_990)
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK
    target.store.set_armed("lavalink", True, at=9_999, by="alice", note="re-armed")
    again = target.store.ingest_alerts([alert(starts_at=9_998)], at=9_999)  # fired anew
    assert len(again.new_firing) == 1
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK


async def test_after_a_rearm_an_old_alert_that_never_acted_starts_nothing(
    tmp_path: Path,
) -> None:
    # the attack trial's case: rolled back (disarmed), then an alert arrives and keeps firing;
    # it never drove an action (disarmed), so it is not spent. A re-arm must not make it act.
    target, _, runner, _, clock = wired(tmp_path, NO_DATA, mode=model.Mode.AUTO)
    target.alerts_forget_after = 3600
    target.store.set_armed("lavalink", False, at=9_000, by="rollback", note="run #1")
    target.state = target.store.target_state("lavalink")  # as the daemon reads it at start
    target.store.ingest_alerts([alert(starts_at=9_100)], at=9_100)
    disarmed = await target.tick(budget=5)
    assert disarmed.action is model.Action.NONE and disarmed.reason.startswith("disarmed")
    target.store.set_armed("lavalink", True, at=10_000, by="alice", note="re-armed")
    clock.now = 10_004  # four seconds after the re-arm: neither re-sent nor resolved
    after = await target.tick(budget=5)
    assert after.action is model.Action.NONE, after
    assert "re-armed at 1970-01-01T02:46:40Z: evidence from before ignored (Down)" in after.reason
    assert runner.orders == [] and target.store.incidents() == []
    # Alertmanager re-sends it (repeat_interval): fresh evidence that it still fires
    target.store.ingest_alerts([alert(starts_at=9_100)], at=10_010)
    clock.now = 10_011
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK
    assert len(runner.orders) == 1


async def test_an_alert_kept_before_routing_by_labels_is_no_evidence(tmp_path: Path) -> None:
    # kept for "the only target" by a release that routed by name: its labels say otherwise
    target, _, runner, _, _ = wired(tmp_path, NO_DATA, mode=model.Mode.AUTO)
    target.alerts_forget_after = 3600
    foreign = journal.AlertRecord(
        fingerprint="fp-pg",
        starts_at=9_900.0,
        target="lavalink",
        alertname="PostgresDown",
        status="firing",
        labels={
            "alertname": "PostgresDown",
            "job": "postgres",
            "severity": "critical",
            "rollback_category": "instability",
        },
        annotations={},
    )
    target.store.ingest_alerts([foreign], at=9_990)
    made = await target.tick(budget=5)
    assert made.verdict is model.Verdict.INCONCLUSIVE and made.action is model.Action.NONE
    assert runner.orders == []
    target.store.ingest_alerts([alert()], at=9_995)  # one whose labels do name the target
    assert (await target.tick(budget=5)).action is model.Action.ROLLBACK


async def test_a_proposal_never_proceeds_on_timeout(tmp_path: Path) -> None:
    target, gatekeeper, runner, _, clock = wired(
        tmp_path, HEALTHY, mode=model.Mode.AUTO, on_timeout="proceed"
    )
    proposal = model.Decision(
        "lavalink",
        clock.now,
        model.Verdict.PROPOSE,
        model.Action.PROPOSE,
        "warnings add up",
        incident=model.IncidentChange.OPEN,
    )
    evaluated = model.Evaluation("lavalink", clock.now, ())
    ask = gatekeeper.asks(proposal, model.Mode.AUTO)
    target.store.record(evaluated, proposal, mode=model.Mode.AUTO, outcome="asked", ask=ask)
    clock.now += 600
    await gatekeeper.settle("lavalink")
    [ended] = target.store.approvals()
    assert (ended.status, ended.outcome) == (
        "expired",
        "nobody decided in time; a proposal never proceeds",
    )
    assert runner.orders == []


async def test_a_vote_after_the_incident_resolved_is_refused_and_runs_nothing(
    tmp_path: Path,
) -> None:
    target, gatekeeper, runner, _, _ = wired(tmp_path, BROKEN, required=1)
    await target.tick(budget=5)
    [asked] = target.store.approvals()
    target.source = make_target(tmp_path / "other", Client(HEALTHY)).source
    target.gatekeeper = None  # the tick closes the incident; its settle has not run yet
    await target.tick(budget=5)
    ruling, row = await gatekeeper.vote(asked.id, vote("bob"))
    assert ruling.refusal is Refusal.OVERTAKEN and "its incident has resolved" in ruling.message
    assert row is not None and row.status == "cancelled" and runner.orders == []


async def test_a_vote_after_the_target_was_rolled_back_is_refused(tmp_path: Path) -> None:
    target, gatekeeper, runner, _, _ = wired(tmp_path, BROKEN, required=1)
    await target.tick(budget=5)
    [asked] = target.store.approvals()
    target.store.set_armed("lavalink", False, at=10_001, by="executor", note="rolled back")
    ruling, _ = await gatekeeper.vote(asked.id, vote("bob"))
    assert ruling.refusal is Refusal.DISARMED and runner.orders == []


async def test_an_operators_incident_is_not_closed_by_a_healthy_evaluation(
    tmp_path: Path,
) -> None:
    target, gatekeeper, _, _, _ = wired(tmp_path, BROKEN, mode=model.Mode.OBSERVE)
    await target.tick(budget=5)  # the decision's own incident
    answer = await gatekeeper.rollback(order())
    assert answer.accepted and answer.incident is not None
    target.source = make_target(tmp_path / "other", Client(HEALTHY)).source
    assert (await target.tick(budget=5)).verdict is model.Verdict.HOLD
    assert target.store.incident_open(answer.incident)  # it ends with its run, not a metric
    own = [i for i in target.store.incidents() if i.origin == "decision"]
    assert [i.status for i in own] == ["resolved"]


async def test_switched_to_observe_a_pending_request_is_cancelled_and_nothing_runs(
    tmp_path: Path,
) -> None:
    target, gatekeeper, runner, _, clock = wired(tmp_path, BROKEN, on_timeout="proceed")
    await target.tick(budget=5)
    [asked] = target.store.approvals()
    gatekeeper.reconfigure(settings(model.Mode.OBSERVE, on_timeout="proceed"))  # a reload
    clock.now += 601  # past the timeout that would otherwise proceed
    await gatekeeper.settle("lavalink")
    ended = target.store.approval(asked.id)
    assert ended is not None and ended.status == "cancelled"
    assert "only observes" in ended.outcome and runner.orders == []


class ClockFleet:
    """A fleet whose incident was decided by its clock or by people (``ruling`` only): the
    gate's side of it; the real FleetLink is tested in tests/integration/test_fleet_daemons.py."""

    def __init__(self, decided_by: str) -> None:
        from watchdog.fleet.values import Member, Ticket

        self.ticket = Ticket(
            id=1,
            group="g",
            release="r",
            owner=Member("n1", "lavalink"),
            asks=True,
            status="approved",
            required=1,
            approved_by=() if decided_by == "rollback-watchdog" else (decided_by,),
            expires_at=None,
            members=(Member("n1", "lavalink"),),
            decided_by=decided_by,
        )

    async def join(self, *_: object) -> None:
        return None

    def owns(self, *_: object) -> bool:
        return False

    def ticket_of(self, *_: object) -> None:
        return None

    def ruling(self, *_: object) -> object:
        return self.ticket

    async def vote(self, *_: object) -> object:
        raise AssertionError("no vote in this test")

    async def admit_approved(self, *_: object) -> None:
        return None

    async def left(self, *_: object) -> None:
        return None


@pytest.mark.parametrize(
    ("decided_by", "ends", "runs"), [("rollback-watchdog", "expired", 0), ("alice", "approved", 1)]
)
async def test_a_fleet_timeout_never_approves_a_guarded_proposal(
    tmp_path: Path, decided_by: str, ends: str, runs: int
) -> None:
    target, gatekeeper, runner, _, clock = wired(tmp_path, BROKEN, on_timeout="proceed")
    failed = target.store.open_run(
        "lavalink",
        incident_id=None,
        trigger=model.Trigger.MANUAL,
        initiated_by="ops",
        reason="drill",
        at=clock.now - 600,
    )
    target.store.finish_run(failed, model.RunStatus.RESTORED, "fallback failed", at=clock.now - 500)
    made = await target.tick(budget=5)
    assert (made.verdict, made.action) == (model.Verdict.ROLLBACK, model.Action.PROPOSE)
    [asked] = target.store.approvals(status="pending")
    assert asked.verdict == "propose"
    gatekeeper.fleet = ClockFleet(decided_by)  # type: ignore[assignment]
    await gatekeeper.settle("lavalink")
    [row] = target.store.approvals()
    assert row.status == ends
    assert len(runner.orders) == runs

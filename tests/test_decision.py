"""Decision: the policy of docs/architecture.md, table-driven; safety properties by hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import rule, signal
from watchdog import decision, model

V, A, C = model.Verdict, model.Action, model.IncidentChange
POLICY = model.Policy(escalate_score=3, inconclusive_after=300, warmup=120, cooldown=3600)

CRASH = rule("CrashLoop", severity="critical", category="instability", threshold=">= 3")
LATENCY = rule(
    "LatencyHigh", severity="critical", category="performance", for_=300, threshold="> 0.5"
)
CPU = rule("CpuHigh", severity="warning", category="minor_performance", weight=1)
SOURCE = rule("SourceFailing", severity="warning", category="single_source", weight=2)
METRICS = rule("MetricsMissing", severity="warning", category="monitoring", weight=1)


def ev(at: float, *signals: model.Signal, activated_at: float | None = None) -> model.Evaluation:
    return model.Evaluation("lavalink", at, tuple(signals), activated_at=activated_at)


def decide(evaluation: model.Evaluation, state: model.TargetState | None = None) -> model.Decision:
    return decision.decide(evaluation, POLICY, state or model.TargetState())[0]


@pytest.mark.parametrize(
    ("signals", "verdict", "action", "score"),
    [
        ((signal(CRASH, "ok"), signal(CPU, "ok")), V.HOLD, A.NONE, 0),
        ((signal(CRASH, "pending"),), V.HOLD, A.NONE, 0),
        ((signal(CRASH, "firing"),), V.ROLLBACK, A.ROLLBACK, 0),
        ((signal(CPU, "firing"),), V.WARN, A.NOTIFY, 1),
        ((signal(CPU, "firing"), signal(SOURCE, "firing")), V.PROPOSE, A.PROPOSE, 3),
        ((signal(CPU, "firing"), signal(METRICS, "firing")), V.WARN, A.NOTIFY, 2),
        # critical beats any score
        (
            (signal(CPU, "firing"), signal(SOURCE, "firing"), signal(CRASH, "firing")),
            V.ROLLBACK,
            A.ROLLBACK,
            3,
        ),
        # missing data is no evidence: inconclusive, and no action before inconclusive_after
        ((signal(CRASH, "nodata"), signal(CPU, "nodata")), V.INCONCLUSIVE, A.NONE, 0),
        ((signal(CRASH, "error"), signal(CPU, "ok")), V.INCONCLUSIVE, A.NONE, 0),
        # a firing warning outranks missing data elsewhere
        ((signal(CRASH, "error"), signal(CPU, "firing")), V.WARN, A.NOTIFY, 1),
    ],
)
def test_verdicts(signals: tuple[model.Signal, ...], verdict: V, action: A, score: float) -> None:
    made = decide(ev(1000, *signals))
    assert (made.verdict, made.action, made.score) == (verdict, action, score)


def test_reason_names_signal_value_and_threshold() -> None:
    made = decide(
        ev(1000, model.Signal(LATENCY, model.SignalState.FIRING, value=0.8123, active_since=100))
    )
    assert "LatencyHigh firing" in made.reason
    assert "value 0.8123" in made.reason
    assert "threshold > 0.5 for 5m" in made.reason
    assert "since 1970-01-01T00:01:40Z" in made.reason


def test_propose_reason_explains_the_score() -> None:
    made = decide(ev(1000, signal(CPU, "firing"), signal(SOURCE, "firing")))
    assert "warnings score 3 >= escalate_score 3" in made.reason
    assert "CpuHigh" in made.reason and "SourceFailing" in made.reason


def test_inconclusive_notifies_once_after_delay() -> None:
    state = model.TargetState()
    actions = []
    for at in range(0, 700, 15):
        made, state = decision.decide(ev(at, signal(CRASH, "nodata")), POLICY, state)
        assert made.verdict is V.INCONCLUSIVE
        actions.append((at, made.action))
    notified = [at for at, action in actions if action is A.NOTIFY]
    assert notified == [300]


class TestWarmup:
    def test_only_instability_acts_during_warmup(self) -> None:
        latency = decide(ev(1060, signal(LATENCY, "firing", since=700), activated_at=1000))
        assert latency.verdict is V.HOLD
        assert latency.ignored == ("LatencyHigh",)
        assert "warm-up until" in latency.reason
        crash = decide(ev(1060, signal(CRASH, "firing", since=1030), activated_at=1000))
        assert crash.verdict is V.ROLLBACK

    def test_warnings_wait_for_warmup_too(self) -> None:
        assert (
            decide(ev(1060, signal(CPU, "firing", since=1000), activated_at=1000)).verdict is V.HOLD
        )

    def test_problem_seen_in_warmup_must_last_its_for_after_warmup(self) -> None:
        # activated at 1000, warm-up ends 1120; LatencyHigh (for 5m) active since 1010
        early = decide(ev(1120 + 299, signal(LATENCY, "firing", since=1010), activated_at=1000))
        assert early.verdict is V.HOLD
        later = decide(ev(1120 + 300, signal(LATENCY, "firing", since=1010), activated_at=1000))
        assert later.verdict is V.ROLLBACK

    def test_problem_after_warmup_counts_normally(self) -> None:
        made = decide(ev(5000, signal(LATENCY, "firing", since=4000), activated_at=1000))
        assert made.verdict is V.ROLLBACK


class TestIncidents:
    def test_acts_once_per_level_and_escalates(self) -> None:
        state = model.TargetState()
        made, state = decision.decide(ev(0, signal(CPU, "firing")), POLICY, state)
        assert (made.action, made.incident) == (A.NOTIFY, C.OPEN)
        made, state = decision.decide(ev(15, signal(CPU, "firing")), POLICY, state)
        assert (made.action, made.incident) == (A.NONE, C.NONE)
        made, state = decision.decide(ev(30, signal(CRASH, "firing")), POLICY, state)
        assert (made.action, made.incident) == (A.ROLLBACK, C.ESCALATE)
        made, state = decision.decide(ev(45, signal(CRASH, "firing")), POLICY, state)
        assert made.action is A.NONE  # one run per incident
        made, state = decision.decide(ev(60, signal(CRASH, "ok")), POLICY, state)
        assert (made.verdict, made.incident) == (V.HOLD, C.CLOSE)
        assert state.incident is None
        assert state.last_closed_verdict is V.ROLLBACK

    def test_cooldown_silences_repeats_but_not_escalation(self) -> None:
        state = model.TargetState(last_closed_at=0, last_closed_verdict=V.WARN)
        made, state = decision.decide(ev(600, signal(CPU, "firing")), POLICY, state)
        assert (made.action, made.incident) == (A.NONE, C.OPEN)
        assert "cooldown until 1970-01-01T01:00:00Z" in made.reason
        made, state = decision.decide(ev(615, signal(CRASH, "firing")), POLICY, state)
        assert made.action is A.ROLLBACK

    def test_after_cooldown_the_same_level_acts_again(self) -> None:
        state = model.TargetState(last_closed_at=0, last_closed_verdict=V.WARN)
        made, _ = decision.decide(ev(3600, signal(CPU, "firing")), POLICY, state)
        assert made.action is A.NOTIFY

    def test_disarmed_never_acts_but_still_judges(self) -> None:
        made, state = decision.decide(
            ev(0, signal(CRASH, "firing")), POLICY, model.TargetState(armed=False)
        )
        assert made.verdict is V.ROLLBACK
        assert made.action is A.NONE
        assert made.reason.startswith("disarmed")
        assert not state.armed


# -- properties -----------------------------------------------------------------------------

RULES = [CRASH, LATENCY, CPU, SOURCE, METRICS]
any_state = st.sampled_from(list(model.SignalState))
missing_state = st.sampled_from(
    [
        model.SignalState.OK,
        model.SignalState.NODATA,
        model.SignalState.ERROR,
        model.SignalState.PENDING,
    ]
)
states_strategy = st.builds(
    model.TargetState,
    armed=st.booleans(),
    incident=st.one_of(
        st.none(),
        st.builds(
            model.IncidentState,
            opened_at=st.floats(0, 1000),
            verdict=st.sampled_from(list(V)),
            acted=st.one_of(st.none(), st.sampled_from(list(V))),
        ),
    ),
    last_closed_at=st.one_of(st.none(), st.floats(0, 5000)),
    last_closed_verdict=st.one_of(st.none(), st.sampled_from(list(V))),
    inconclusive_since=st.one_of(st.none(), st.floats(0, 5000)),
)


def _signals(states: list[model.SignalState]) -> list[model.Signal]:
    return [signal(r, s.value) for r, s in zip(RULES, states, strict=False)]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.lists(missing_state, min_size=5, max_size=5), min_size=1, max_size=30),
    states_strategy,
    st.one_of(st.none(), st.floats(0, 10000)),
)
def test_nodata_and_error_alone_never_roll_back(
    steps: list[list[model.SignalState]], state: model.TargetState, activated: float | None
) -> None:
    for i, states in enumerate(steps):
        made, state = decision.decide(
            ev(5000 + i * 15, *_signals(states), activated_at=activated), POLICY, state
        )
        assert made.verdict in (V.HOLD, V.INCONCLUSIVE)
        assert made.action in (A.NONE, A.NOTIFY)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.lists(any_state, min_size=5, max_size=5), min_size=1, max_size=30),
    states_strategy,
    st.one_of(st.none(), st.floats(0, 10000)),
)
def test_disarmed_targets_never_yield_an_action(
    steps: list[list[model.SignalState]], state: model.TargetState, activated: float | None
) -> None:
    state = model.TargetState(
        armed=False,
        incident=state.incident,
        last_closed_at=state.last_closed_at,
        last_closed_verdict=state.last_closed_verdict,
    )
    for i, states in enumerate(steps):
        made, state = decision.decide(
            ev(5000 + i * 15, *_signals(states), activated_at=activated), POLICY, state
        )
        assert made.action is A.NONE
        assert not state.armed


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(any_state, min_size=5, max_size=5), min_size=1, max_size=40))
def test_one_rollback_action_per_incident(steps: list[list[model.SignalState]]) -> None:
    state = model.TargetState()
    rollbacks_in_incident = 0
    for i, states in enumerate(steps):
        made, state = decision.decide(ev(i * 15.0, *_signals(states)), POLICY, state)
        if made.incident in (C.OPEN, C.CLOSE):
            rollbacks_in_incident = 0
        if made.action is A.ROLLBACK:
            rollbacks_in_incident += 1
            assert made.verdict is V.ROLLBACK
        assert rollbacks_in_incident <= 1


class TestActivationTime:
    """The activation query can fail or go quiet; warm-up must not silently switch off."""

    def test_a_failed_activation_query_keeps_the_last_known_activation(self) -> None:
        state = model.TargetState()
        _, state = decision.decide(
            ev(1000, signal(LATENCY, "ok"), activated_at=1000), POLICY, state
        )
        failed = model.Evaluation(
            "lavalink", 1015, (signal(LATENCY, "firing", since=700),), activation_failed=True
        )
        made, state = decision.decide(failed, POLICY, state)
        assert made.verdict is V.HOLD  # still inside warm-up (1000 + 120)
        assert made.ignored == ("LatencyHigh",)
        assert state.activated_at == 1000

    def test_never_known_and_failing_means_only_instability_counts(self) -> None:
        failed = model.Evaluation(
            "lavalink",
            5000,
            (signal(LATENCY, "firing", since=700), signal(CPU, "firing")),
            activation_failed=True,
        )
        made = decide(failed)
        assert made.verdict is V.HOLD
        assert "the activation time is known again" in made.reason
        crash = model.Evaluation(
            "lavalink", 5000, (signal(CRASH, "firing"),), activation_failed=True
        )
        assert decide(crash).verdict is V.ROLLBACK

    def test_no_activation_metric_at_all_means_no_warmup(self) -> None:
        made = decide(ev(5000, signal(LATENCY, "firing", since=700)))
        assert made.verdict is V.ROLLBACK


def test_keep_firing_cannot_carry_a_warmup_problem_past_warmup() -> None:
    kept = model.Rule(
        "SlowStart",
        "x > 1",
        model.Severity.CRITICAL,
        model.Category.PERFORMANCE,
        for_seconds=60,
        keep_firing_for_seconds=600,
        threshold="> 1",
    )
    # true 0..110 s, kept firing since 110 s; warm-up ends at 120 s
    kept_signal = model.Signal(
        kept, model.SignalState.FIRING, value=2, active_since=0, kept_since=110
    )
    made = decide(ev(300, kept_signal, activated_at=0))
    assert made.verdict is V.HOLD
    assert made.ignored == ("SlowStart",)
    # the same problem still true well after warm-up counts
    still = model.Signal(kept, model.SignalState.FIRING, value=2, active_since=0)
    assert decide(ev(300, still, activated_at=0)).verdict is V.ROLLBACK


WINDOWED = model.Rule(  # changes(x[15m]) >= 3: no `for`, but reads 15 minutes back
    "CrashLoopWindowed",
    "changes(x[15m]) >= 3",
    model.Severity.CRITICAL,
    model.Category.INSTABILITY,
    lookback_seconds=900.0,
)


@pytest.mark.parametrize(
    ("rule_", "since", "at", "fresh"),
    [
        (CRASH, 500.0, 1000.0, True),  # an instant expression, seen after the re-arm
        (CRASH, 500.0, 999.0, False),  # the clock before the re-arm: nothing new yet
        (LATENCY, 500.0, 1299.0, False),  # `for` 5m: not yet held for 5m after the re-arm
        (LATENCY, 500.0, 1300.0, True),
        (LATENCY, 1100.0, 1300.0, False),  # became true after the re-arm: its own `for`
        (LATENCY, 1100.0, 1400.0, True),
        (WINDOWED, 500.0, 1000.0, False),  # its 15m window still holds the old restarts
        (WINDOWED, 500.0, 1899.0, False),
        (WINDOWED, 500.0, 1900.0, True),  # only data from after the re-arm
        (WINDOWED, 1950.0, 1950.0, True),  # became true well after: counts at once
    ],
)
def test_after_a_rearm_only_evidence_newer_than_it_counts(
    rule_: model.Rule, since: float, at: float, fresh: bool
) -> None:
    state = model.TargetState(armed_at=1000.0)
    made = decide(ev(at, signal(rule_, "firing", since=since)), state)
    assert (made.verdict is V.ROLLBACK) is fresh, made.reason
    if not fresh:
        assert f"evidence from before ignored ({rule_.name})" in made.reason


def test_after_a_rearm_an_alert_must_begin_or_be_delivered_again() -> None:
    state = model.TargetState(armed_at=1000.0)
    alert_rule = rule("FromAlertmanager")

    def delivered(starts: float, last_seen: float) -> model.Signal:
        return model.Signal(
            alert_rule, model.SignalState.FIRING, active_since=starts, evidence_at=last_seen
        )

    assert decide(ev(1010, delivered(500, 900)), state).verdict is V.HOLD  # neither
    assert decide(ev(1010, delivered(500, 1005)), state).verdict is V.ROLLBACK  # sent again
    assert decide(ev(1010, delivered(1002, 1002)), state).verdict is V.ROLLBACK  # began after
    assert decide(ev(1010, delivered(500, 900)), model.TargetState()).verdict is V.ROLLBACK

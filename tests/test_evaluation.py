"""Evaluation: Prometheus's alert state machine, nodata and error, table-driven and by property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ABSENT, PRESENT, observation, rule
from watchdog import evaluation, model

S = model.SignalState


def run(r: model.Rule, steps: list[tuple[float, object]], **kwargs: object) -> list[model.Signal]:
    """Evaluate one rule over (time, result) steps; return its signal at each step."""
    memory: model.EvaluationMemory = model.EMPTY_MEMORY
    out = []
    for at, value in steps:
        ev, memory = evaluation.evaluate(
            "t", [r], observation(at, {r.name: value}, **kwargs), memory
        )  # type: ignore[dict-item,arg-type]
        out.append(ev.signals[0])
    return out


@pytest.mark.parametrize(
    ("for_", "keep", "values", "expected"),
    [
        # no `for`: fires on the first true evaluation, as Prometheus does
        (0, 0, [None, 5, 5, None], [S.OK, S.FIRING, S.FIRING, S.OK]),
        # for 30s at a 15s step: pending, pending, firing (30s after first seen)
        (30, 0, [5, 5, 5, 5], [S.PENDING, S.PENDING, S.FIRING, S.FIRING]),
        # a gap while pending resets the clock
        (
            30,
            0,
            [5, 5, None, 5, 5, 5],
            [S.PENDING, S.PENDING, S.OK, S.PENDING, S.PENDING, S.FIRING],
        ),
        # resolved as soon as the condition is false, without keep_firing_for
        (15, 0, [5, 5, None, None], [S.PENDING, S.FIRING, S.OK, S.OK]),
        # keep_firing_for 30s: keeps firing for two more evaluations after the condition clears
        (0, 30, [5, None, None, None, None], [S.FIRING, S.FIRING, S.FIRING, S.OK, S.OK]),
        # keep_firing_for resets when the condition comes back
        (
            0,
            30,
            [5, None, 5, None, None, None],
            [S.FIRING, S.FIRING, S.FIRING, S.FIRING, S.FIRING, S.OK],
        ),
        # keep_firing_for does not keep a merely pending alert
        (60, 60, [5, None], [S.PENDING, S.OK]),
    ],
)
def test_state_machine(
    for_: float, keep: float, values: list[float | None], expected: list[S]
) -> None:
    r = rule(for_=for_, keep=keep)
    states = [s.state for s in run(r, [(i * 15.0, v) for i, v in enumerate(values)])]
    assert states == expected


def test_each_series_has_its_own_clock() -> None:
    r = rule(for_=30)
    memory: model.EvaluationMemory = model.EMPTY_MEMORY
    series_a = model.Point((("source", "youtube"),), 1.0)
    series_b = model.Point((("source", "soundcloud"),), 1.0)
    steps = [(0.0, (series_a,)), (15.0, (series_a, series_b)), (30.0, (series_a, series_b))]
    for at, points in steps:
        obs = observation(at, {"R": model.QueryResult(points=points)})
        ev, memory = evaluation.evaluate("t", [r], obs, memory)
    signal = ev.signals[0]
    assert signal.state is S.FIRING
    assert signal.labels == (("source", "youtube"),)  # the one active longest speaks
    assert not memory["R"][(("source", "soundcloud"),)].firing


def test_signal_carries_value_and_since() -> None:
    signals = run(rule(for_=15), [(100.0, 7.5), (115.0, 8.5)])
    assert signals[-1].value == 8.5
    assert signals[-1].active_since == 100.0


def test_no_presence_makes_every_signal_nodata_and_forgets_pending() -> None:
    r = rule(for_=30)
    memory: model.EvaluationMemory = model.EMPTY_MEMORY
    ev, memory = evaluation.evaluate("t", [r], observation(0, {"R": 5}), memory)
    assert ev.signals[0].state is S.PENDING
    ev, memory = evaluation.evaluate("t", [r], observation(15, {"R": 5}, presence=ABSENT), memory)
    assert ev.signals[0].state is S.NODATA
    assert "no data" in ev.signals[0].detail
    ev, memory = evaluation.evaluate("t", [r], observation(30, {"R": 5}), memory)
    assert ev.signals[0].state is S.PENDING  # the `for` clock restarted after the gap
    assert ev.signals[0].active_since == 30


def test_failed_query_is_error_and_keeps_state() -> None:
    r = rule(for_=30)
    failed = model.QueryResult(error="Prometheus at http://x is unreachable")
    signals = run(r, [(0, 5), (15, failed), (30, 5)])
    assert [s.state for s in signals] == [S.PENDING, S.ERROR, S.FIRING]
    assert "unreachable" in signals[1].detail


def test_failed_presence_query_is_error_for_all() -> None:
    failed = model.QueryResult(error="boom")
    ev, _ = evaluation.evaluate(
        "t",
        [rule("A"), rule("B")],
        observation(0, {"A": 5, "B": None}, presence=failed),
        model.EMPTY_MEMORY,
    )
    assert {s.state for s in ev.signals} == {S.ERROR}
    assert all("presence query failed: boom" in s.detail for s in ev.signals)


def test_nan_value_is_a_series_like_in_prometheus() -> None:
    signals = run(rule(), [(0, math.nan)])
    assert signals[0].state is S.FIRING
    assert signals[0].value is not None and math.isnan(signals[0].value)


# -- properties -----------------------------------------------------------------------------

conditions = st.lists(
    st.one_of(st.none(), st.just(1.0), st.just("error"), st.just("absent")), min_size=1, max_size=40
)


def _step(value: object) -> tuple[object, dict[str, object]]:
    if value == "error":
        return model.QueryResult(error="x"), {}
    if value == "absent":
        return 1.0, {"presence": ABSENT}
    return value, {}


@settings(max_examples=300, deadline=None)
@given(conditions, st.sampled_from([0, 15, 30, 60, 120]), st.sampled_from([0, 15, 60]))
def test_never_fires_before_for_elapsed(values: list[object], for_: float, keep: float) -> None:
    """A signal starts firing only once its condition was seen true continuously for `for`
    (a failed query keeps state, as in Prometheus; no data or a false condition resets it)."""
    r = rule(for_=for_, keep=keep)
    memory: model.EvaluationMemory = model.EMPTY_MEMORY
    streak_start: float | None = None
    was_firing = False
    for i, value in enumerate(values):
        at = i * 15.0
        result, extra = _step(value)
        obs = observation(at, {"R": result}, **extra)  # type: ignore[dict-item,arg-type]
        ev, memory = evaluation.evaluate("t", [r], obs, memory)
        state = ev.signals[0].state
        if value == 1.0:
            streak_start = at if streak_start is None else streak_start
        elif value in (None, "absent"):
            streak_start = None
        firing_now = any(a.firing for a in memory["R"].values())
        if firing_now and not was_firing:  # the moment it starts firing
            assert value == 1.0
            assert streak_start is not None
            assert at - streak_start >= for_
        was_firing = firing_now
        if value == "error":
            assert state is S.ERROR
        if value == "absent":
            assert state is S.NODATA


@settings(max_examples=200, deadline=None)
@given(conditions)
def test_firing_requires_a_true_condition_or_keep(values: list[object]) -> None:
    """Without keep_firing_for, firing means the condition is true right now."""
    r = rule(for_=15)
    memory: model.EvaluationMemory = model.EMPTY_MEMORY
    for i, value in enumerate(values):
        result, extra = _step(value)
        ev, memory = evaluation.evaluate(
            "t", [r], observation(i * 15.0, {"R": result}, **extra), memory
        )  # type: ignore[dict-item,arg-type]
        if ev.signals[0].state is S.FIRING:
            assert value == 1.0


def test_series_that_collide_without_their_name_are_an_error() -> None:
    r = rule(for_=0)
    twins = model.QueryResult(
        points=(model.Point((("job", "a"),), 1.0), model.Point((("job", "a"),), 2.0))
    )
    ev, memory = evaluation.evaluate("t", [r], observation(0, {"R": twins}), model.EMPTY_MEMORY)
    assert ev.signals[0].state is S.ERROR
    assert "same labels" in ev.signals[0].detail
    assert memory["R"] == {}


def test_kept_firing_signal_says_since_when_the_condition_is_false() -> None:
    signals = run(rule(for_=0, keep=60), [(0, 5), (15, None), (30, None)])
    assert [s.state for s in signals] == [S.FIRING, S.FIRING, S.FIRING]
    assert signals[0].kept_since is None
    assert signals[1].kept_since == 15 and signals[2].kept_since == 15


def test_activation_failure_is_passed_on() -> None:
    obs = model.Observation(
        at=0, results={"R": model.QueryResult()}, presence=PRESENT, activation_failed=True
    )
    ev, _ = evaluation.evaluate("t", [rule()], obs, model.EMPTY_MEMORY)
    assert ev.activation_failed

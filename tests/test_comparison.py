"""The comparison with the fallback's baseline: outcomes, words and signals, whole."""

from __future__ import annotations

import dataclasses
import math

import pytest

from watchdog import comparison, decision, model

C = comparison
CRITERIA = C.Criteria(alpha=0.01, min_samples=10, quantile=0.95, minor_ratio=1.5, critical_ratio=3)
CRITICAL, MINOR = C.rules(CRITERIA)
JAVA = [0.030 + 0.001 * i for i in range(20)]  # 30..49 ms


def judge(primary: list[float], baseline: list[float] = JAVA, **kwargs: object) -> C.Finding:
    return C.judge(
        "basic endpoints latency",
        C.Unit.SECONDS,
        primary,
        baseline,
        CRITERIA,
        fallback="lavalink-java",
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_large_significant_regression_is_critical_in_the_runbooks_words() -> None:
    rust = [0.400 + 0.001 * i for i in range(15)]
    found = judge(rust)
    assert found.outcome is C.Outcome.CRITICAL
    assert found.words == (
        "p95 basic endpoints latency 413 ms vs 48 ms on lavalink-java (8.6x, p < 0.001)"
    )
    assert (found.n_primary, found.n_baseline) == (15, 20)
    assert found.primary == pytest.approx(0.4133)
    assert found.baseline == pytest.approx(0.04805)
    assert found.ratio == pytest.approx(0.4133 / 0.04805)
    assert found.p_value is not None and found.p_value < 0.001
    assert found.effect == 1.0


def test_a_smaller_significant_regression_is_minor() -> None:
    found = judge([0.080 + 0.001 * i for i in range(15)])
    assert found.outcome is C.Outcome.MINOR
    assert found.words.startswith("p95 basic endpoints latency 93 ms vs 48 ms")


def test_a_metric_that_may_not_be_critical_stays_minor() -> None:
    found = judge([0.400 + 0.001 * i for i in range(15)], critical=False)
    assert found.outcome is C.Outcome.MINOR


@pytest.mark.parametrize(
    ("primary", "why"),
    [
        # better than Java: the rank test says no (one-sided)
        ([0.010 + 0.001 * i for i in range(15)], "better"),
        # a little worse, significantly: below the minor ratio
        ([0.045 + 0.001 * i for i in range(15)], "small"),
        # much higher p95 from a few outliers, but the ranks do not say worse
        ([0.030 + 0.001 * i for i in range(13)] + [0.9, 0.9], "outliers"),
    ],
)
def test_not_worse(primary: list[float], why: str) -> None:
    assert judge(primary).outcome is C.Outcome.NOT_WORSE, why


def test_the_significance_and_ratio_bounds() -> None:
    # the same ranks with an alpha the samples cannot reach: not worse, however large
    strict = C.Criteria(alpha=1e-12, min_samples=10)
    rust = [0.4] * 10
    found = C.judge("m", C.Unit.SECONDS, rust, JAVA, strict, fallback="java")
    assert found.outcome is C.Outcome.NOT_WORSE
    # exactly the critical ratio is critical; just below is minor
    base = [1.0] * 5 + [1.0 + 0.01 * i for i in range(5)]  # p95 1.0355
    q = 1.0355
    at = C.judge("m", C.Unit.NUMBER, [3 * q] * 10, base, C.Criteria(min_samples=10), fallback="j")
    assert at.outcome is C.Outcome.CRITICAL and at.ratio == pytest.approx(3.0)
    below = C.judge(
        "m", C.Unit.NUMBER, [2.99 * q] * 10, base, C.Criteria(min_samples=10), fallback="j"
    )
    assert below.outcome is C.Outcome.MINOR
    minor = C.judge(
        "m", C.Unit.NUMBER, [1.5 * q] * 10, base, C.Criteria(min_samples=10), fallback="j"
    )
    assert minor.outcome is C.Outcome.MINOR
    none = C.judge(
        "m", C.Unit.NUMBER, [1.49 * q] * 10, base, C.Criteria(min_samples=10), fallback="j"
    )
    assert none.outcome is C.Outcome.NOT_WORSE


def test_missing_data_is_nodata_never_failure() -> None:
    assert judge([0.4] * 15, baseline=[]) == C.Finding(
        "basic endpoints latency",
        C.Outcome.NODATA,
        "basic endpoints latency: no baseline from lavalink-java",
        missing="no baseline from lavalink-java",
    )
    assert judge([0.4] * 9) == C.Finding(
        "basic endpoints latency",
        C.Outcome.NODATA,
        "basic endpoints latency: too few samples (9 of the primary, 20 of lavalink-java; "
        "10 needed)",
        missing="too few samples yet",
        n_primary=9,
        n_baseline=20,
    )
    # NaN and infinities are no samples
    nan = judge([0.4] * 9 + [math.nan, math.inf], baseline=[*JAVA, math.nan])
    assert nan.outcome is C.Outcome.NODATA and (nan.n_primary, nan.n_baseline) == (9, 20)
    few_java = judge([0.4] * 15, baseline=JAVA[:9])
    assert few_java.outcome is C.Outcome.NODATA


@pytest.mark.parametrize(
    ("unit", "value", "text"),
    [
        (C.Unit.SECONDS, 0.0412, "41 ms"),
        (C.Unit.SECONDS, 12.5, "12.5 s"),
        (C.Unit.BYTES, 734003200, "700 MiB"),
        (C.Unit.RATIO, 0.125, "12.5 %"),
        (C.Unit.NUMBER, 1234.5678, "1235"),
    ],
)
def test_amounts_in_words(unit: C.Unit, value: float, text: str) -> None:
    found = C.judge("m", unit, [value] * 10, [value / 10] * 10, CRITERIA, fallback="j")
    assert found.words.startswith(f"p95 m {text} vs ")


def test_from_nothing_to_something() -> None:
    found = C.judge("failures", C.Unit.RATIO, [0.5] * 10, [0.0] * 10, CRITERIA, fallback="j")
    # from nothing, a ratio says nothing about size: a warning at most (the absolute rules
    # judge failures); otherwise 0.8 % of failing probes against a clean hour could roll back
    assert found.outcome is C.Outcome.MINOR
    assert found.words == "p95 failures 50.0 % vs 0.0 % on j (from none, p < 0.001)"
    same = C.judge("failures", C.Unit.RATIO, [0.0] * 10, [0.0] * 10, CRITERIA, fallback="j")
    assert same.outcome is C.Outcome.NOT_WORSE and same.ratio == 1.0
    assert same.words == "p95 failures 0.0 % vs 0.0 % on j (1.0x, p = 1.000)"


def test_a_small_share_against_a_clean_baseline_is_not_critical() -> None:
    # 6 minutes in 60 with 1 of 12 probes failing, against a perfect Java hour: a ratio "from
    # none", significant at 0.01 -- but the ranks barely say worse (effect 0.55)
    rust = [1 / 12] * 6 + [0.0] * 54
    found = C.judge("failures", C.Unit.RATIO, rust, [0.0] * 60, CRITERIA, fallback="j")
    assert found.p_value is not None and found.p_value < 0.01
    assert found.effect == pytest.approx(0.55)
    assert found.outcome is C.Outcome.NOT_WORSE


def test_signals_whole() -> None:
    crit = judge([0.400 + 0.001 * i for i in range(15)])
    crit2 = C.Finding("resident memory", C.Outcome.CRITICAL, "mem words", ratio=20.0)
    minor = C.Finding("CPU load", C.Outcome.MINOR, "cpu words", ratio=2.0)
    fine = C.Finding("probe failures", C.Outcome.NOT_WORSE, "fine words", ratio=1.0)
    critical, warning = C.signals([crit, minor, fine, crit2], CRITERIA)
    assert critical == model.Signal(
        CRITICAL,
        model.SignalState.FIRING,
        value=20.0,
        labels=(("metric", "resident memory"),),
        detail="mem words; " + crit.words,
    )
    assert warning == model.Signal(
        MINOR,
        model.SignalState.FIRING,
        value=2.0,
        labels=(("metric", "CPU load"),),
        detail="cpu words",
    )
    none = C.Finding("x", C.Outcome.NODATA, "x: no baseline", missing="no baseline")
    quiet = C.signals([fine, none], CRITERIA)
    assert quiet == (
        model.Signal(CRITICAL, model.SignalState.OK),
        model.Signal(MINOR, model.SignalState.OK),
    )
    few = C.Finding("y", C.Outcome.NODATA, "y: 3 samples", missing="too few samples yet")
    blind = C.signals([none, few, dataclasses.replace(none, metric="z")], CRITERIA)
    assert blind[0] == model.Signal(
        CRITICAL,
        model.SignalState.NODATA,
        detail="no baseline (x, z); too few samples yet (y)",  # each cause once
    )
    assert C.signals([], CRITERIA)[1] == model.Signal(
        MINOR, model.SignalState.NODATA, detail="no metrics to compare"
    )


def test_no_baseline_never_makes_the_verdict_inconclusive() -> None:
    blind = C.signals(
        [C.Finding("x", C.Outcome.NODATA, "x: no baseline", missing="no baseline")], CRITERIA
    )
    evaluated = model.Evaluation("t", 1_765_000_000.0, blind)
    made = decision.decide(evaluated, model.Policy(), model.TargetState())[0]
    assert made.verdict is model.Verdict.HOLD
    assert made.reason == ("all 0 signals quiet; not compared with the fallback: no baseline (x)")


def test_a_critical_finding_reads_in_the_decisions_reason() -> None:
    found = judge([0.400 + 0.001 * i for i in range(15)])
    evaluated = model.Evaluation("t", 1_765_000_000.0, C.signals([found], CRITERIA))
    made = decision.decide(evaluated, model.Policy(), model.TargetState())[0]
    assert made.verdict is model.Verdict.ROLLBACK
    assert made.reason == (
        'critical: WorseThanFallback firing {metric="basic endpoints latency"}, value 8.601, '
        "threshold p95 >= 3x the fallback's, rank test p < 0.01, "
        "p95 basic endpoints latency 413 ms vs 48 ms on lavalink-java (8.6x, p < 0.001)"
    )


def test_the_significance_boundaries() -> None:
    # 30 against 30 with U = 630 of 900: the effect is exactly 0.7, p about 0.004
    baseline = [float(i) for i in range(30)]
    primary = [i + 6.5 for i in range(30)]
    primary[0] = 12.5
    loose = C.Criteria(min_samples=10, minor_ratio=1.1, critical_ratio=100)
    found = C.judge("m", C.Unit.NUMBER, primary, baseline, loose, fallback="j")
    assert found.effect == 0.7 and found.p_value is not None and found.p_value < 0.01
    assert found.outcome is C.Outcome.MINOR  # the least effect is enough
    # at a p-value exactly alpha the test is not significant
    exact = dataclasses.replace(loose, alpha=found.p_value)
    assert C.judge("m", C.Unit.NUMBER, primary, baseline, exact, fallback="j").outcome is (
        C.Outcome.NOT_WORSE
    )


def test_ten_seconds_read_as_seconds() -> None:
    found = C.judge("m", C.Unit.SECONDS, [10.0] * 10, [1.0] * 10, CRITERIA, fallback="j")
    assert found.words.startswith("p95 m 10.0 s vs 1000 ms")

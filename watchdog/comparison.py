"""Is the primary "significantly worse than the Java version"? The runbook's relative reason.

The absolute rules judge the primary against fixed limits (500 ms, 2 GiB); this judges it
against the fallback's own baseline, the way Kayenta judges a canary: per metric, the samples of
the primary since warm-up against the fallback's samples from its last period of service, by a
rank test (``stats.worse``: Mann-Whitney U, one-sided, larger is worse) and a ratio of
quantiles for the size. A significant regression whose quantile ratio reaches
``critical_ratio`` is critical (``performance``), a significant one from ``minor_ratio`` is a
warning (``minor_performance``); too few samples on either side, or no baseline at all, is
``nodata`` -- never a failure, and never enough to make the verdict inconclusive (origin
``baseline``): the absolute rules still judge a primary that has nothing to be compared with.

Pure: samples in, findings and signals out; ``sources.baseline`` fetches the samples.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from watchdog import model, stats


class Unit(enum.StrEnum):
    """How a metric's values read in words."""

    SECONDS = "seconds"
    BYTES = "bytes"
    RATIO = "ratio"  # 0..1, said as a percentage
    NUMBER = "number"


@dataclass(frozen=True, slots=True)
class Criteria:
    """When a difference counts (``targets[].baseline`` in the config)."""

    alpha: float = 0.01  # the rank test's one-sided significance level
    # and the ranks must say it clearly: P(primary sample > baseline sample) at least this
    # (the test runs every step over overlapping samples, so alpha alone says too little)
    min_effect: float = 0.7
    min_samples: int = 10  # fewer on either side: nodata
    quantile: float = 0.95  # the quantile whose ratio sizes the regression
    minor_ratio: float = 1.5  # significant and at least this much larger: a warning
    critical_ratio: float = 3.0  # significant and at least this much larger: critical


@dataclass(frozen=True, slots=True)
class Baseline:
    """The fallback's samples of one metric from the ``window`` before one activation of the
    primary (journaled once, when first fetched); ``error`` if Prometheus could not say."""

    metric: str
    activation: float
    start: float
    end: float
    samples: tuple[float, ...] = ()
    error: str | None = None


class Outcome(enum.StrEnum):
    """What one metric's comparison came to."""

    CRITICAL = "critical"
    MINOR = "minor"
    NOT_WORSE = "not_worse"
    NODATA = "nodata"


@dataclass(frozen=True, slots=True)
class Finding:
    """One metric, primary against the fallback's baseline, with the numbers as fields."""

    metric: str
    outcome: Outcome
    words: str  # e.g. "p95 basic endpoints latency 412 ms vs 38 ms on lavalink-java (10.8x, ...)"
    missing: str = ""  # nodata: why, in a few words ("no baseline", "too few samples", ...)
    primary: float | None = None  # the quantile of the primary's samples
    baseline: float | None = None  # the quantile of the baseline's samples
    ratio: float | None = None
    p_value: float | None = None
    effect: float | None = None  # P(primary sample > baseline sample); 0.5: no difference
    n_primary: int = 0
    n_baseline: int = 0


def rules(criteria: Criteria) -> tuple[model.Rule, model.Rule]:
    """The comparison's two signals' rules, their thresholds in the criteria's numbers."""
    return (
        _rule(
            "WorseThanFallback",
            model.Severity.CRITICAL,
            model.Category.PERFORMANCE,
            "significantly worse than the fallback's own baseline",
            criteria.critical_ratio,
            criteria,
        ),
        _rule(
            "WorseThanFallbackMinor",
            model.Severity.WARNING,
            model.Category.MINOR_PERFORMANCE,
            "somewhat worse than the fallback's own baseline",
            criteria.minor_ratio,
            criteria,
        ),
    )


def _rule(
    name: str,
    severity: model.Severity,
    category: model.Category,
    summary: str,
    ratio: float,
    criteria: Criteria,
) -> model.Rule:
    label = f"p{_percent(criteria.quantile)}"
    return model.Rule(
        name=name,
        expr="(rank test against the fallback's baseline)",
        severity=severity,
        category=category,
        summary=summary,
        threshold=f"{label} >= {ratio:g}x the fallback's, rank test p < {criteria.alpha:g}",
        origin=model.Origin.BASELINE,
    )


def judge(
    metric: str,
    unit: Unit,
    primary: Sequence[float],
    baseline: Sequence[float],
    criteria: Criteria,
    *,
    fallback: str,
    critical: bool = True,
) -> Finding:
    """Compare one metric's samples; NaN and infinite samples are dropped (no data).
    ``critical=False``: its regression is a warning at most."""
    ours = [v for v in primary if math.isfinite(v)]
    theirs = [v for v in baseline if math.isfinite(v)]
    if not theirs:
        return Finding(
            metric,
            Outcome.NODATA,
            f"{metric}: no baseline from {fallback}",
            missing=f"no baseline from {fallback}",
        )
    if len(ours) < criteria.min_samples or len(theirs) < criteria.min_samples:
        return Finding(
            metric,
            Outcome.NODATA,
            f"{metric}: too few samples ({len(ours)} of the primary, {len(theirs)} of "
            f"{fallback}; {criteria.min_samples} needed)",
            missing="too few samples yet",
            n_primary=len(ours),
            n_baseline=len(theirs),
        )
    test = stats.worse(ours, theirs)
    ours_q = stats.quantile(ours, criteria.quantile)
    theirs_q = stats.quantile(theirs, criteria.quantile)
    ratio = _ratio(ours_q, theirs_q)
    significant = test.p_value < criteria.alpha and test.effect >= criteria.min_effect
    # from nothing at all, a ratio says nothing about size: a warning at most (a zero baseline
    # of failures is what the absolute rules judge)
    if significant and ratio >= criteria.critical_ratio and critical and theirs_q > 0:
        outcome = Outcome.CRITICAL
    elif significant and ratio >= criteria.minor_ratio:
        outcome = Outcome.MINOR
    else:
        outcome = Outcome.NOT_WORSE
    label = f"p{_percent(criteria.quantile)}"
    words = (
        f"{label} {metric} {_amount(ours_q, unit)} vs {_amount(theirs_q, unit)} on {fallback} "
        f"({_times(ratio)}, {_p(test.p_value)})"
    )
    return Finding(
        metric,
        outcome,
        words,
        primary=ours_q,
        baseline=theirs_q,
        ratio=ratio,
        p_value=test.p_value,
        effect=test.effect,
        n_primary=len(ours),
        n_baseline=len(theirs),
    )


def signals(findings: Sequence[Finding], criteria: Criteria) -> tuple[model.Signal, model.Signal]:
    """The comparison as two signals: critical findings fire ``WorseThanFallback``, minor ones
    ``WorseThanFallbackMinor``; the largest ratio speaks (value, ``metric`` label), every
    finding of that level is in the detail. No finding at all: both ``nodata``."""
    critical, minor = rules(criteria)
    return (
        _signal(critical, findings, Outcome.CRITICAL),
        _signal(minor, findings, Outcome.MINOR),
    )


def _signal(rule: model.Rule, findings: Sequence[Finding], level: Outcome) -> model.Signal:
    hits = sorted((f for f in findings if f.outcome is level), key=lambda f: -(f.ratio or 0.0))
    if hits:
        return model.Signal(
            rule,
            model.SignalState.FIRING,
            value=hits[0].ratio,
            labels=(("metric", hits[0].metric),),
            detail="; ".join(f.words for f in hits),
        )
    if findings and all(f.outcome is Outcome.NODATA for f in findings):
        return model.Signal(rule, model.SignalState.NODATA, detail=_missing(findings))
    if not findings:
        return model.Signal(rule, model.SignalState.NODATA, detail="no metrics to compare")
    return model.Signal(rule, model.SignalState.OK)


def _missing(findings: Sequence[Finding]) -> str:
    """Why nothing could be compared, briefly: each cause once, with its metrics."""
    by_cause: dict[str, list[str]] = {}
    for found in findings:
        by_cause.setdefault(found.missing or found.words, []).append(found.metric)
    return "; ".join(f"{cause} ({', '.join(names)})" for cause, names in by_cause.items())


def _ratio(primary: float, baseline: float) -> float:
    if baseline > 0:
        return primary / baseline
    return math.inf if primary > 0 else 1.0  # from nothing to something is unbounded


def _percent(quantile: float) -> str:
    return f"{quantile * 100:g}"


def _times(ratio: float) -> str:
    return "from none" if math.isinf(ratio) else f"{ratio:.1f}x"


def _p(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def _amount(value: float, unit: Unit) -> str:
    if unit is Unit.SECONDS:
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
    if unit is Unit.BYTES:
        return f"{value / 1024**2:.0f} MiB"
    if unit is Unit.RATIO:
        return f"{value * 100:.1f} %"
    return f"{value:.4g}"

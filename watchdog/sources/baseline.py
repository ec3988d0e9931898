"""The samples the comparison with the fallback needs, from Prometheus's history.

For each metric of ``targets[].baseline``: the fallback's samples from its last period of
service -- the ``window`` before the primary was deployed (its binary written, or without one
its activation), where the fallback's job served, queried once per deploy (the baseline) --
and the primary's since warm-up, at most ``window`` of
them, fetched incrementally (only the steps not yet seen), so the daemon asks Prometheus for one
new point per metric per ``step``, and ``backtest`` walking forward through history for little
more. ``comparison`` judges them; this module only fetches.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from watchdog import comparison, config, model
from watchdog.sources import prometheus


class Ranges(Protocol):
    """What the comparison needs of Prometheus: range queries (``PrometheusSource.range``)."""

    async def range(
        self, query: str, start: float, end: float, step: float
    ) -> prometheus.RangeResult: ...


@dataclass(slots=True)
class _Series:
    values: dict[float, float] = field(default_factory=dict)
    fetched_until: float = -math.inf


@dataclass(slots=True)
class Comparator:
    """One target's comparison with its fallback, fed by range queries."""

    target: config.TargetSettings
    warmup: float
    ranges: Ranges
    baselines: dict[tuple[str, float], comparison.Baseline] = field(default_factory=dict)
    fresh: list[comparison.Baseline] = field(default_factory=list)  # fetched, not yet journaled
    _series: dict[str, _Series] = field(default_factory=dict)
    _last: tuple[tuple[object, ...], tuple[model.Signal, ...]] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.target.baseline.metrics)

    async def signals(
        self,
        at: float,
        activated_at: float | None,
        *,
        since: float | None = None,
        release: model.Release | None = None,
    ) -> tuple[model.Signal, ...]:
        """The comparison's two signals at ``at`` (recomputed once per ``step``), from the
        primary's samples after warm-up and after ``since`` (the last re-arm: what came before
        it is spent, as for every other signal). With a ``release``, the fallback's baseline is
        the hour before the release was put in place (a restart of it keeps that baseline), and
        nothing is compared while the process still runs the one before."""
        settings = self.target.baseline
        if not settings.metrics:
            return ()
        # the last whole step: the current one may still miss its last scrape
        now = _grid(at, settings.step) - settings.step
        key = (now, activated_at, since, release)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        deployed = activated_at
        if release is not None and activated_at is not None:
            # started before its binary was written: still the old release, nothing to compare
            deployed = release.since if activated_at >= release.since else None
        findings = await asyncio.gather(
            *(self._finding(m, now, activated_at, deployed, since) for m in settings.metrics)
        )
        made = comparison.signals(findings, _criteria(settings))
        self._last = (key, made)
        return made

    def unanswered(self, why: str) -> tuple[model.Signal, ...]:
        """The two signals when Prometheus gave no answer in time: no data, never failure."""
        settings = self.target.baseline
        if not settings.metrics:
            return ()
        missing = [
            comparison.Finding(m.name, comparison.Outcome.NODATA, f"{m.name}: {why}", missing=why)
            for m in settings.metrics
        ]
        return comparison.signals(missing, _criteria(settings))

    async def _finding(
        self,
        metric: config.BaselineMetric,
        now: float,
        activated_at: float | None,
        deployed: float | None,
        since: float | None,
    ) -> comparison.Finding:
        unit = comparison.Unit(metric.unit)
        fallback = self.target.fallback.job
        criteria = _criteria(self.target.baseline)
        if activated_at is None or deployed is None:
            why = "the new release not started yet" if activated_at else "activation unknown"
            return comparison.Finding(
                metric.name, comparison.Outcome.NODATA, f"{metric.name}: {why}", missing=why
            )
        baseline = await self.baseline(metric, deployed)
        if baseline.error is not None:
            return comparison.Finding(
                metric.name,
                comparison.Outcome.NODATA,
                f"{metric.name}: {baseline.error}",
                missing=baseline.error,
            )
        settings = self.target.baseline
        # a sample's window (one step) must lie wholly after the activation and the re-arm
        start = max(activated_at + max(self.warmup, settings.step), now - settings.window)
        if since is not None:
            start = max(start, since + settings.step)
        primary, error = await self._primary(metric, start, now)
        if error is not None:
            return comparison.Finding(
                metric.name, comparison.Outcome.NODATA, f"{metric.name}: {error}", missing=error
            )
        return comparison.judge(
            metric.name,
            unit,
            primary,
            baseline.samples,
            criteria,
            fallback=fallback,
            critical=metric.critical,
        )

    async def baseline(
        self, metric: config.BaselineMetric, activated_at: float
    ) -> comparison.Baseline:
        """The fallback's samples before ``activated_at``, the deploy (fetched once; a failure
        is kept only until the next step asks again). Only the current deploy's are kept."""
        key = (metric.name, activated_at)
        known = self.baselines.get(key)
        if known is not None and known.error is None:
            return known
        settings = self.target.baseline
        end = _grid(activated_at, settings.step) - settings.step  # not the switch itself
        start = end - settings.window + settings.step
        query = settings.baseline_query(
            metric, self.target.name, self.target.fallback.job, self.target.primary.job
        )
        result = await self.ranges.range(query, start, end, settings.step)
        if result.error is not None:
            made = comparison.Baseline(metric.name, activated_at, start, end, error=result.error)
        else:
            samples = _values(result.series)
            made = comparison.Baseline(metric.name, activated_at, start, end, samples)
            self.fresh.append(made)
        for older in [k for k in self.baselines if k[1] != activated_at]:  # a crash loop's
            del self.baselines[older]  # activations must not pile up in a long-running daemon
        self.baselines[key] = made
        return made

    def take_fresh(self) -> list[comparison.Baseline]:
        """The baselines fetched since the last call, for the journal."""
        taken, self.fresh = self.fresh, []
        return taken

    async def _primary(
        self, metric: config.BaselineMetric, start: float, end: float
    ) -> tuple[list[float], str | None]:
        step = self.target.baseline.step
        series = self._series.setdefault(metric.name, _Series())
        begin = max(_grid(start, step), series.fetched_until + step)
        if begin <= end:
            query = metric.rendered(self.target.name, self.target.primary.job)
            result = await self.ranges.range(query, begin, end, step)
            if result.error is not None:
                return [], result.error
            for at, value in _by_time(result.series).items():
                series.values[at] = value
            series.fetched_until = end
        for at in [t for t in series.values if t < start]:  # only the window is kept
            del series.values[at]
        return [v for t, v in sorted(series.values.items()) if t <= end], None


def _criteria(settings: config.BaselineSettings) -> comparison.Criteria:
    return comparison.Criteria(
        alpha=settings.alpha,
        min_effect=settings.min_effect,
        min_samples=settings.min_samples,
        quantile=settings.quantile,
        minor_ratio=settings.minor_ratio,
        critical_ratio=settings.critical_ratio,
    )


def _grid(at: float, step: float) -> float:
    return math.floor(at / step) * step


def _by_time(series: Sequence[prometheus.RangeSeries]) -> dict[float, float]:
    """One value per instant: a query meant to give one series that gives several speaks by
    its largest value (the worst, for every metric here)."""
    merged: dict[float, float] = {}
    for one in series:
        for at, value in one.values.items():
            if math.isfinite(value):
                merged[at] = max(value, merged.get(at, -math.inf))
    return merged


def _values(series: Sequence[prometheus.RangeSeries]) -> tuple[float, ...]:
    return tuple(value for _, value in sorted(_by_time(series).items()))

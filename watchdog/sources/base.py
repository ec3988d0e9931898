"""What a signal source is: where one tick's evidence about a target comes from.

A ``Source`` answers every query a target's rules need at one instant, as an
``model.Observation``; a failure is data (a ``QueryResult`` with an error), never an exception
into the loop. ``PrometheusSource`` is the one that ships; ``NoSource`` is the no-op for a
watchdog configured without Prometheus (``prometheus.enabled: false``): it answers no rule
(``answers_rules``), so the loop evaluates none of the rules files itself -- nothing reads as
evidence, nothing stays inconclusive -- and only the systemd watch and Alertmanager's alerts
(which went through Prometheus's own ``for`` elsewhere) can act.
``build`` is the factory. The systemd watch and Alertmanager add their evidence on top
(``pipeline.with_systemd``, ``evaluation.with_alerts``); the synthetic probes export metrics
that the rules read through Prometheus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from watchdog import config, model


class Source(Protocol):
    """Every query of one target's rules, answered at one instant."""

    @property
    def answers_rules(self) -> bool:
        """False for a source that answers no rule: the loop then evaluates none itself."""
        ...

    async def observe(
        self, target: config.TargetSettings, rules: Sequence[model.Rule], at: float
    ) -> model.Observation:
        """The observation at ``at``; errors as data, never raised."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


class NoSource:
    """No metrics source: no rule is asked (no data is never evidence, nor a standing notice)."""

    answers_rules = False

    async def observe(
        self, target: config.TargetSettings, rules: Sequence[model.Rule], at: float
    ) -> model.Observation:
        # nothing asked, nothing failed; the systemd watch may still say when the primary started
        return model.Observation(at=at, results={}, presence=model.QueryResult())

    def close(self) -> None:
        pass

"""What a signal source is: where one tick's evidence about a target comes from.

A ``Source`` answers every query a target's rules need at one instant, as an
``model.Observation``; a failure is data (a ``QueryResult`` with an error), never an exception
into the loop. ``PrometheusSource`` is the one that ships; ``NoSource`` is the no-op for a
watchdog configured without Prometheus (``prometheus.enabled: false``): every rule reads as no
data -- never as evidence -- and only the systemd watch and Alertmanager's alerts can act.
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

    async def observe(
        self, target: config.TargetSettings, rules: Sequence[model.Rule], at: float
    ) -> model.Observation:
        """The observation at ``at``; errors as data, never raised."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


class NoSource:
    """No metrics source: every rule has no data (which is never evidence of failure)."""

    async def observe(
        self, target: config.TargetSettings, rules: Sequence[model.Rule], at: float
    ) -> model.Observation:
        nothing = model.QueryResult(error="no metrics source is configured (prometheus.enabled)")
        return model.Observation(
            at=at,
            results={rule.name: nothing for rule in rules},
            presence=nothing,
            activation_failed=True,
        )

    def close(self) -> None:
        pass

"""Signal sources: Prometheus (``prometheus``, behind ``base.Source`` with its no-op), the
synthetic probes (``probes``), the systemd watch (``systemd_watch``) and Alertmanager's webhook
(``alertmanager``). ``build`` makes a target's metrics source from the settings."""

from __future__ import annotations

from watchdog import config
from watchdog.sources.base import NoSource, Source

__all__ = ["NoSource", "Source", "build"]


def build(settings: config.PrometheusSettings) -> Source:
    """The metrics source the settings name: Prometheus, or none (``enabled: false``)."""
    if not settings.enabled:
        return NoSource()
    from watchdog.sources.prometheus import PrometheusSource

    return PrometheusSource(settings)

"""The watchdog's own metrics and logs: one registry, named recorders, one log setup.

Following Flagger's ``Recorder``, every metric is created here, on a registry built at wiring
time (never prometheus-client's import-time global), and set through named methods, so the
metric names -- which the Grafana dashboard and the shipped rules rely on -- live in one place.
Logs are structlog, one JSON object per line, so journald and log shippers keep the fields.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from watchdog import __version__, model

PROBE_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
"""Probe latency buckets; 0.3 and 0.5 are bucket edges because the rules compare against them."""


class Recorder:
    """Owns a ``CollectorRegistry`` and sets the watchdog's metrics by name."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._signal_series: dict[str, set[tuple[str, str, str]]] = {}  # per target, exported
        r = self.registry
        self._info = Info("rollback_watchdog_build", "Version of the running watchdog.", registry=r)
        self._info.info({"version": __version__})
        self.evaluation_duration = Histogram(
            "rollback_watchdog_evaluation_duration_seconds",
            "Time to query, evaluate and decide one target once.",
            ["target"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.evaluations = Counter(
            "rollback_watchdog_evaluations", "Evaluations run.", ["target"], registry=r
        )
        self.signal_state = Gauge(
            "rollback_watchdog_signal_state",
            "1 for the current state of each signal (ok, pending, firing, nodata, error).",
            ["target", "signal", "severity", "category", "state"],
            registry=r,
        )
        self.score = Gauge(
            "rollback_watchdog_score",
            "Sum of the weights of firing, counted warning signals.",
            ["target"],
            registry=r,
        )
        self.verdict = Gauge(
            "rollback_watchdog_verdict",
            "1 for the current verdict of the target.",
            ["target", "verdict"],
            registry=r,
        )
        self.source_errors = Counter(
            "rollback_watchdog_source_errors",
            "Queries or reads from a source that failed.",
            ["target", "source"],
            registry=r,
        )
        self.armed = Gauge(
            "rollback_watchdog_armed", "1 while the target may be acted on.", ["target"], registry=r
        )
        self.actions = Counter(
            "rollback_watchdog_actions",
            "Actions the decisions asked for, by what came of them.",
            ["target", "action", "outcome"],
            registry=r,
        )
        self.runs = Counter(
            "rollback_watchdog_runs",
            "Rollback runs that ended, by how (succeeded, aborted, restored, failed, interrupted).",
            ["target", "status"],
            registry=r,
        )
        self.fallback_healthy = Gauge(
            "rollback_watchdog_fallback_healthy",
            "After a rollback, for after.duration: 1 while the fallback passes the runbook's "
            "limits, 0 when it does not (an alert; never a switch back).",
            ["target"],
            registry=r,
        )
        self.step_duration = Histogram(
            "rollback_watchdog_step_duration_seconds",
            "How long each rollback runbook step took (ok or failed).",
            ["target", "step"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.alerts_received = Counter(
            "rollback_watchdog_alerts_received",
            "Alerts in Alertmanager notifications accepted by POST /alertmanager.",
            registry=r,
        )
        self.alerts = Counter(
            "rollback_watchdog_alerts",
            "Alertmanager alerts routed to a target: new (firing, first seen), repeated, resolved.",
            ["result"],
            registry=r,
        )
        self.alerts_unrouted = Counter(
            "rollback_watchdog_alerts_unrouted",
            "Alertmanager alerts that reach no decision, by why: no_match, unknown_target, "
            "ambiguous, not_a_signal.",
            ["reason"],
            registry=r,
        )
        self.alerts_dropped = Counter(
            "rollback_watchdog_alerts_dropped",
            "Alerts not kept, or let go, because alertmanager.max_alerts were already kept "
            "(routed: new ones dropped; unrouted: the least recently delivered let go).",
            ["kind"],
            registry=r,
        )
        self.refused = Counter(
            "rollback_watchdog_http_refused",
            "Requests the listener refused, by route and status code.",
            ["route", "code"],
            registry=r,
        )
        self.journal_intact = Gauge(
            "rollback_watchdog_journal_intact",
            "1 while the journal file is the one the daemon opened; 0 once it was deleted or "
            "replaced (no action is taken until a restart).",
            registry=r,
        )
        self.votes = Counter(
            "rollback_watchdog_approval_votes",
            "Approve/deny votes, by channel and result (counted, or why refused).",
            ["via", "result"],
            registry=r,
        )
        self.approvals_pending = Gauge(
            "rollback_watchdog_approvals_pending",
            "Approval requests waiting for people.",
            ["target"],
            registry=r,
        )
        # fleet mode (README, "Fleet mode"): this node's view of its group
        self.fleet_reachable = Gauge(
            "rollback_watchdog_fleet_store_up",
            "1 while the fleet's PostgreSQL answers; 0 while cut off (local evidence only).",
            registry=r,
        )
        self.fleet_members = Gauge(
            "rollback_watchdog_fleet_members",
            "The group's members (node/target) by state: live, lost, switching.",
            ["group", "state"],
            registry=r,
        )
        self.fleet_slots = Gauge(
            "rollback_watchdog_fleet_slots_in_use",
            "Switch slots of the group held now (at most fleet.max_parallel).",
            ["group"],
            registry=r,
        )
        self.fleet_halted = Gauge(
            "rollback_watchdog_fleet_halted",
            "1 while the group's automatic switches are halted (a switch failed).",
            ["group"],
            registry=r,
        )
        self.fleet_rollouts = Gauge(
            "rollback_watchdog_fleet_rollouts",
            "Rollouts of a bad release to the rest of the group, by status.",
            ["group", "status"],
            registry=r,
        )
        self.fleet_wave_switches = Gauge(
            "rollback_watchdog_fleet_wave_switches",
            "Members the group's rollouts have switched, in waves, so far.",
            ["group"],
            registry=r,
        )
        # The metric contract the shipped rules read (docs/architecture.md): probes, systemd watch.
        self.probe_success = Gauge(
            "rollback_watchdog_probe_success",
            "1 if the last synthetic probe succeeded, else 0 (loadtracks: per source).",
            ["target", "probe", "source"],
            registry=r,
        )
        self.probe_duration = Histogram(
            "rollback_watchdog_probe_duration_seconds",
            "How long the service took to answer (or fail) a synthetic probe.",
            ["target", "probe", "source"],
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.track_loads = Counter(
            "rollback_watchdog_track_loads",
            "loadtracks probe answers, by the loadType Lavalink answered.",
            ["target", "source", "load_type"],
            registry=r,
        )
        self.unit_restarts = Gauge(
            "rollback_watchdog_unit_restarts",
            "systemd's NRestarts of the unit (automatic restarts since its last manual start).",
            ["unit"],
            registry=r,
        )
        self.unit_active = Gauge(
            "rollback_watchdog_unit_active",
            "1 while systemd reports the unit active, else 0.",
            ["unit"],
            registry=r,
        )
        self.last_evaluation = Gauge(
            "rollback_watchdog_last_evaluation_timestamp_seconds",
            "When the target was last evaluated.",
            ["target"],
            registry=r,
        )

    def record_evaluation(
        self,
        evaluation: model.Evaluation,
        decision: model.Decision,
        *,
        duration: float,
        armed: bool,
        source_errors: int,
    ) -> None:
        """Everything one evaluation changes, set at once."""
        target = evaluation.target
        self.evaluation_duration.labels(target).observe(duration)
        self.evaluations.labels(target).inc()
        self.last_evaluation.labels(target).set(evaluation.at)
        exported: set[tuple[str, str, str]] = set()
        for signal in evaluation.signals:
            rule = signal.rule
            exported.add((rule.name, rule.severity.value, rule.category.value))
            for state in model.SignalState:
                self.signal_state.labels(
                    target, rule.name, rule.severity.value, rule.category.value, state.value
                ).set(1 if signal.state is state else 0)
        # a signal that is gone (an alert resolved or forgotten, a rule removed by a reload)
        # leaves no series behind: no stale "firing 1", no series growing without bound
        for gone in self._signal_series.get(target, set()) - exported:
            for state in model.SignalState:
                with contextlib.suppress(KeyError):
                    self.signal_state.remove(target, *gone, state.value)
        self._signal_series[target] = exported
        self.score.labels(target).set(decision.score)
        for verdict in model.Verdict:
            self.verdict.labels(target, verdict.value).set(1 if decision.verdict is verdict else 0)
        self.armed.labels(target).set(1 if armed else 0)
        if source_errors:
            self.source_errors.labels(target, "prometheus").inc(source_errors)

    def record_probes(self, target: str, results: Sequence[model.ProbeResult]) -> None:
        """One round of synthetic probes."""
        for result in results:
            labels = (target, result.probe, result.source)
            if not result.conclusive:  # no data, never a stale or a false failure
                with contextlib.suppress(KeyError):
                    self.probe_success.remove(*labels)
                self.source_errors.labels(target, "probes").inc()
                continue
            self.probe_success.labels(*labels).set(1 if result.ok else 0)
            self.probe_duration.labels(*labels).observe(result.seconds)
            if result.load_type:
                self.track_loads.labels(target, result.source, result.load_type).inc()

    def record_units(
        self, target: str, units: Mapping[str, model.UnitStatus | None], *, failed_reads: int
    ) -> None:
        """The systemd watch's view of each unit; a unit with no recent answer has no series
        (no data, never a stale value)."""
        if failed_reads:
            self.source_errors.labels(target, "systemd").inc(failed_reads)
        for unit, status in units.items():
            if status is None:
                for gauge in (self.unit_restarts, self.unit_active):
                    with contextlib.suppress(KeyError):
                        gauge.remove(unit)
                continue
            self.unit_restarts.labels(unit).set(status.n_restarts)
            self.unit_active.labels(unit).set(1 if status.active else 0)

    def record_run(self, target: str, status: str) -> None:
        self.runs.labels(target, status).inc()

    def record_action(self, target: str, action: model.Action, outcome: str) -> None:
        self.actions.labels(target, action.value, outcome).inc()


def configure_logging(*, level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on stderr (or ``stream``), with ISO timestamps and the log level."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )

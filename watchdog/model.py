"""The value types every stage shares, and nothing else.

Data flows one way (sources -> evaluation -> decision -> gate -> executor -> report); the stages
never import each other, only these frozen types. Keeping them here, free of behaviour and I/O,
is what lets evaluation and decision stay pure functions that tests and ``backtest`` can replay.
Times are Unix seconds as ``float`` throughout: the clock is always injected, never read here.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class Severity(enum.StrEnum):
    """How much one signal matters on its own."""

    CRITICAL = "critical"  # one firing critical signal is enough to roll back
    WARNING = "warning"  # non-critical: "consider fixes first"; scored, never rolls back alone


class Category(enum.StrEnum):
    """The runbook reason a signal stands for (``labels.rollback_category`` of a rule)."""

    INSTABILITY = "instability"  # crashes, crash loops, the service down
    PERFORMANCE = "performance"  # clearly worse than the old server: latency, memory
    API_COMPATIBILITY = "api_compatibility"  # critical endpoints broken
    SOURCE_FAILURE = "source_failure"  # major audio sources completely non-functional
    SECURITY = "security"  # a vulnerability without a fix (manual trigger)
    MINOR_PERFORMANCE = "minor_performance"  # somewhat slower, busier: fix first
    SINGLE_SOURCE = "single_source"  # one audio source failing: fix first
    CONFIGURATION = "configuration"  # configuration problems: fix first
    MONITORING = "monitoring"  # monitoring/logging problems: fix first

    @property
    def severity(self) -> Severity:
        """The severity a rule of this category must carry."""
        return Severity.CRITICAL if self in _CRITICAL_CATEGORIES else Severity.WARNING


_CRITICAL_CATEGORIES = frozenset(
    {
        Category.INSTABILITY,
        Category.PERFORMANCE,
        Category.API_COMPATIBILITY,
        Category.SOURCE_FAILURE,
        Category.SECURITY,
    }
)


class Origin(enum.StrEnum):
    """Where a signal's evidence comes from."""

    PROMETHEUS = "prometheus"  # an alert rule's `expr`, run as an instant query
    SYSTEMD = "systemd"  # read by the watchdog from systemd over D-Bus; works without Prometheus
    DOCKER = "docker"  # read by the watchdog from the Docker Engine; works without Prometheus
    ALERTMANAGER = "alertmanager"  # an alert Alertmanager delivered, not a rule of ours
    # a rank test against the fallback's baseline (comparison): without a baseline or enough
    # samples it has no data, and that alone never makes a verdict inconclusive
    BASELINE = "baseline"


class SignalState(enum.StrEnum):
    """What one signal says in one evaluation."""

    OK = "ok"  # the condition is false
    PENDING = "pending"  # the condition is true, its `for` has not elapsed yet
    FIRING = "firing"  # the condition has been true for at least `for` (or keeps firing)
    NODATA = "nodata"  # the target has no data at all: no evidence either way
    ERROR = "error"  # the query failed: no evidence either way


class Verdict(enum.StrEnum):
    """The outcome of one evaluation of one target, from best to worst."""

    HOLD = "hold"  # all clear: nothing to do
    INCONCLUSIVE = "inconclusive"  # data missing or queries failing: never an action
    WARN = "warn"  # non-critical signals firing: notify only
    PROPOSE = "propose"  # warnings add up to `escalate_score`: a human decides
    ROLLBACK = "rollback"  # a critical signal is firing: roll back

    @property
    def rank(self) -> int:
        """Position from best (0) to worst, to compare verdicts."""
        return _VERDICT_ORDER.index(self)


_VERDICT_ORDER = (
    Verdict.HOLD,
    Verdict.INCONCLUSIVE,
    Verdict.WARN,
    Verdict.PROPOSE,
    Verdict.ROLLBACK,
)


class Action(enum.StrEnum):
    """What a decision asks the gate to do now."""

    NONE = "none"  # nothing new: all clear, already handled, disarmed or cooling down
    NOTIFY = "notify"  # tell the humans; no change to the service
    PROPOSE = "propose"  # ask a human to approve a rollback (even in auto mode)
    ROLLBACK = "rollback"  # roll back (auto), ask (approve) or record "would roll back" (observe)


class Mode(enum.StrEnum):
    """How the gate turns a rollback decision into a rollback."""

    AUTO = "auto"  # act at once on a rollback verdict
    APPROVE = "approve"  # a human approves each rollback
    OBSERVE = "observe"  # never act: record and notify "would have rolled back"


class IncidentChange(enum.StrEnum):
    """What one decision does to the target's incident."""

    NONE = "none"  # no incident, or the open one stays as it is
    OPEN = "open"  # a non-hold verdict opened a new incident
    ESCALATE = "escalate"  # the open incident reached a worse verdict
    CLOSE = "close"  # the verdict went back to hold: the incident is resolved


Labels = tuple[tuple[str, str], ...]
"""A label set as sorted ``(name, value)`` pairs: hashable, ordered, cheap to compare."""


def labels_of(mapping: Mapping[str, str]) -> Labels:
    """Freeze a label mapping into sorted pairs."""
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True, slots=True)
class Rule:
    """One alerting rule of a rules file, as the watchdog evaluates it."""

    name: str  # the rule's `alert`
    expr: str
    severity: Severity
    category: Category
    weight: float = 1.0
    for_seconds: float = 0.0
    keep_firing_for_seconds: float = 0.0
    summary: str = ""
    description: str = ""
    threshold: str = ""  # human text of the threshold, for verdict reasons
    file: str = ""
    group: str = ""
    line: int = 0
    origin: Origin = Origin.PROMETHEUS  # a systemd signal ignores the presence query
    # how far back its expression reads (range windows, subqueries, offsets): after a re-arm,
    # only values computed from data newer than the re-arm are evidence
    lookback_seconds: float = 0.0


class Unrouted(enum.StrEnum):
    """Why an alert from Alertmanager reaches no decision (it is journaled and counted)."""

    NO_MATCH = "no_match"  # no rollback_target label and no target's matchers match
    UNKNOWN_TARGET = "unknown_target"  # rollback_target names no target of this watchdog
    AMBIGUOUS = "ambiguous"  # several targets' matchers match: it belongs to none for sure
    NOT_A_SIGNAL = "not_a_signal"  # its target's, but no rule of it and no severity/category


@dataclass(frozen=True, slots=True)
class ExternalAlert:
    """A firing alert Alertmanager delivered, as evidence for the signal of the same name."""

    rule: Rule  # the rules file's rule of that alertname, or one made from the alert's labels
    labels: Labels
    starts_at: float
    fingerprint: str = ""
    last_seen: float | None = None  # its latest delivery: how fresh the evidence is


@dataclass(frozen=True, slots=True)
class Point:
    """One series of an instant query result."""

    labels: Labels
    value: float


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer to one instant query: its series, or why there is none.

    A failed query is data (``error`` set), not an exception: Prometheus being down must read
    as "no evidence", never as a failing service.
    """

    points: tuple[Point, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything the sources saw of one target at one instant: the input of evaluation."""

    at: float
    results: Mapping[str, QueryResult]  # by rule name
    presence: QueryResult  # the target's presence query; no series means no data at all
    activated_at: float | None = None  # when the primary unit last became active, if known
    activation_failed: bool = False  # the activation query failed: warm-up state unknown


@dataclass(frozen=True, slots=True)
class AlertMemory:
    """Prometheus's per-series alert state, carried from one evaluation to the next."""

    active_at: float  # when the condition was first seen true (Prometheus `ActiveAt`)
    firing: bool = False
    fired_at: float | None = None
    keep_firing_since: float | None = None  # first evaluation the condition was false while firing
    value: float = math.nan


RuleMemory = Mapping[Labels, AlertMemory]
EvaluationMemory = Mapping[str, RuleMemory]
"""Per rule, per series: what ``evaluation`` must remember between two instants."""

EMPTY_MEMORY: EvaluationMemory = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Signal:
    """One rule's state in one evaluation, with what a human needs to read it."""

    rule: Rule
    state: SignalState
    value: float | None = None  # the value of the worst series, when it has one
    labels: Labels = ()  # the labels of that series
    active_since: float | None = None  # when its condition became true (pending or firing)
    kept_since: float | None = None  # firing only by keep_firing_for: condition false since then
    detail: str = ""  # why: the query error, "no data", ...
    # when a source last confirmed it (an alert's latest delivery); None: this evaluation saw it
    evidence_at: float | None = None

    @property
    def name(self) -> str:
        return self.rule.name


@dataclass(frozen=True, slots=True)
class Release:
    """What the primary runs, as its files say: a name that changes with every deploy (the
    binary's resolved path, inode, size and modification time) and since when it is there."""

    name: str
    since: float  # the binary's modification time: a process started before runs the old one


@dataclass(frozen=True, slots=True)
class Evaluation:
    """All signals of one target at one instant: the output of evaluation."""

    target: str
    at: float
    signals: tuple[Signal, ...]
    activated_at: float | None = None
    activation_failed: bool = False
    # what the primary runs, when the pipeline can tell (``primary.binary``): a restart of the
    # same release keeps its commit; None: each activation is a release
    release: Release | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """The decision policy (docs/architecture.md) and its defaults."""

    escalate_score: float = 3.0
    inconclusive_after: float = 300.0
    warmup: float = 120.0
    cooldown: float = 3600.0
    commit_after: float | None = None  # bake time: after it, a rollback is a proposal


@dataclass(frozen=True, slots=True)
class IncidentState:
    """The open incident, as far as the decision needs to know it."""

    opened_at: float
    verdict: Verdict  # the worst verdict seen so far
    acted: Verdict | None = None  # the worst verdict an action was already emitted for


@dataclass(frozen=True, slots=True)
class TargetState:
    """What the decision remembers about a target between evaluations."""

    armed: bool = True
    armed_at: float | None = None  # when an operator last re-armed it: older evidence is spent
    incident: IncidentState | None = None
    last_closed_at: float | None = None
    last_closed_verdict: Verdict | None = None
    inconclusive_since: float | None = None
    activated_at: float | None = None  # last known activation, for when the query has none
    # the release commit (``Policy.commit_after``): when, and for which activation
    committed_at: float | None = None
    committed_release: str | None = None  # the release identity (``Evaluation.release``)
    # the loop guard, as the journal knows it: the last switch of the target not ordered by an
    # operator, and the last time its fallback failed (a run ended restored or failed)
    last_switch_at: float | None = None
    fallback_failed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict of one evaluation, what to do about it, and why, in words."""

    target: str
    at: float
    verdict: Verdict
    action: Action
    reason: str
    score: float = 0.0
    firing: tuple[str, ...] = ()  # signals that count toward this verdict
    incident: IncidentChange = IncidentChange.NONE
    ignored: tuple[str, ...] = field(default=())  # firing but not counted (warm-up)


@dataclass(frozen=True, slots=True)
class UnitStatus:
    """A unit as its manager reports it now (the properties the watchdog reads): a systemd
    unit, or a container read the same way (restart policy for enablement, ``RestartCount``
    for ``NRestarts``)."""

    name: str
    load_state: str  # loaded | not-found | masked | error ...
    active_state: str  # active | inactive | failed | activating | deactivating ...
    sub_state: str
    unit_file_state: str  # enabled | disabled | static | ...
    main_pid: int
    n_restarts: int
    active_enter_timestamp: float | None  # Unix seconds
    fragment_path: str = ""  # the unit file systemd loaded
    restart_policy: str = ""  # a container's, as Docker spells it (on-failure:5); "" for units

    @property
    def active(self) -> bool:
        return self.active_state == "active"

    @property
    def stopped(self) -> bool:
        return self.active_state in ("inactive", "failed")

    @property
    def enabled(self) -> bool:
        return self.unit_file_state in ("enabled", "enabled-runtime")

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "LoadState": self.load_state,
            "ActiveState": self.active_state,
            "SubState": self.sub_state,
            "UnitFileState": self.unit_file_state,
            "MainPID": self.main_pid,
            "NRestarts": self.n_restarts,
            "ActiveEnterTimestamp": self.active_enter_timestamp,
        } | ({"RestartPolicy": self.restart_policy} if self.restart_policy else {})


@dataclass(frozen=True, slots=True)
class UnitDefinition:
    """What a unit is made of, as its manager knows it: what it still lacks to start, the
    files that define it (backed up before a switch) and the manager's own record of it."""

    name: str
    missing: tuple[str, ...] = ()  # why it could not start, e.g. its image is gone
    files: tuple[str, ...] = ()  # a unit file; a container's bind-mounted config files
    record: Mapping[str, object] | None = None  # Docker's inspect record; None for systemd


@dataclass(frozen=True, slots=True)
class ResourceUse:
    """What a unit uses, as its manager measures it (a container's cgroup, by Docker's
    stats): resident memory without the reclaimable page cache, and CPU as a share of one
    core over ``seconds``."""

    memory_bytes: int
    cpu_share: float
    seconds: float


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One synthetic request to the service, as a user's client would make it.

    A failure is data: ``ok`` is false and ``detail`` says why (a refused connection, a status
    code, an answer that is not Lavalink's). ``seconds`` is how long the service took to answer
    or to fail, so a slow failure still counts as latency.
    """

    probe: str  # version | info | stats | websocket | loadtracks
    ok: bool
    detail: str
    seconds: float = 0.0
    source: str = ""  # loadtracks only: youtube, soundcloud, ...
    load_type: str = ""  # loadtracks only, as Lavalink answered: track, search, empty, error ...
    conclusive: bool = True  # False: says nothing about the service (our password refused,
    # our own failure), so it must read as no data, never as a failing service


# -- runs of the runbook: what the executor reports, the gate follows and the report reads ------


class Trigger(enum.StrEnum):
    """What started a run (the journal's ``runs.trigger``)."""

    AUTO = "auto"  # the decision, in auto mode
    APPROVED = "approved"  # a human approved the decision's proposal (or its timeout proceeded)
    MANUAL = "manual"  # an operator's order: the CLI or the API


class RunStatus(enum.StrEnum):
    """Where a run stands, or how it ended."""

    RUNNING = "running"  # in flight, or cut off and not yet reconciled
    SUCCEEDED = "succeeded"  # the fallback runs and passed verification
    ABORTED = "aborted"  # ended before any unit was touched: the primary never stopped
    RESTORED = "restored"  # the fallback failed; the primary was brought back
    FAILED = "failed"  # the fallback failed and was left so (or bringing the primary back did)
    INTERRUPTED = "interrupted"  # cut off after touching units and too old to resume: look


class StepStatus(enum.StrEnum):
    """One step's state in the journal."""

    RUNNING = "running"  # journaled before it starts; still so if the process died in it
    OK = "ok"  # it did its part
    FAILED = "failed"  # it could not do its part (the detail says why)
    SKIPPED = "skipped"  # a resumed run found its effect already in place
    INTERRUPTED = "interrupted"  # cut off (the watchdog stopped, the bus dropped): resumed later


class Launch(enum.StrEnum):
    """What asking the executor for a run came to."""

    STARTED = "rollback started"  # a new run is going
    JOINED = "joined the run in flight"  # a run of this target was already going
    REFUSED = "not started"  # no executor, stopping, or reconciling first: ask again later


@dataclass(frozen=True, slots=True)
class Launched:
    """The executor's answer to one order: the result, and why it was refused."""

    result: Launch
    why: str = ""  # REFUSED only

    @property
    def going(self) -> bool:
        """Whether a run is now going for the order (started or joined)."""
        return self.result is not Launch.REFUSED

    def __str__(self) -> str:
        return f"{self.result.value}: {self.why}" if self.why else self.result.value


@dataclass(frozen=True, slots=True)
class StepEvent:
    """What an observer (the CLI's live view, the incident's message) learns of each step."""

    seq: int
    name: str
    status: StepStatus
    detail: str
    seconds: float
    total: int = 0  # steps in the runbook, for "step 3/8"
    progress: bool = False  # a running step saying what it waits for (a live view's ticker)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended."""

    run_id: int
    status: RunStatus
    detail: str

    @property
    def succeeded(self) -> bool:
        return self.status is RunStatus.SUCCEEDED

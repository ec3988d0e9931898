"""Deterministic scraped history of the Lavalink world, with injectable faults.

Rules and the daemon are tested against what Prometheus would have stored while the Rust Lavalink
node, the Java standby node and the watchdog's own probes were scraped. This module produces that
history as `Series` (metric names and labels per .work/contract.md), so it can be backfilled into a
real Prometheus. The same seed always gives the same history.

World model and choices:
- Every step (one per `scrape_interval`) Prometheus scrapes the Rust node (127.0.0.1:2333), the Java
  node (127.0.0.1:2334) and the watchdog (127.0.0.1:9877), and the watchdog has just run one of each
  of its probes against the Rust node.
- The Java node stands by on port 2334: it is up and scraped, its unit lavalink-java.service is
  active (a server that answers scrapes is a running unit) and never restarts. Faults only ever hit
  the Rust node, except SCRAPE_GAP and WATCHDOG_GAP.
- Before the Rust process first starts (`process_start` inside the window) the world is as under
  DOWN: `up` 0, no other Rust node samples, probes time out, unit inactive.
- A new Rust process (after a crash or a DOWN) resets the node's own counters
  (process_cpu_seconds_total, logback_appender_total), as a real process does; the watchdog's
  counters never reset, and they keep counting through SCRAPE_GAP and WATCHDOG_GAP (only the
  samples are missing).
- The watchdog declares every `track_loads_total` label set up front, so all of them start at 0.
- When the Rust node is unreachable a loadtracks probe gets no load result, so no `load_type` is
  counted; a failed load on a reachable node counts as `error`.
- Every probe that fails against the reachable Rust node (an error or a timeout) adds one ERROR
  line to its logback_appender_total.
- Histogram `le` labels are formatted as prometheus_client exposes them ("0.025", "1.0", "+Inf").
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from watchdog_lab.openmetrics import Series

RUST_JOB = "lavalink-rust"
RUST_INSTANCE = "127.0.0.1:2333"
JAVA_JOB = "lavalink-java"
JAVA_INSTANCE = "127.0.0.1:2334"
WATCHDOG_JOB = "rollback-watchdog"
WATCHDOG_INSTANCE = "127.0.0.1:9877"
PROBE_TARGET = "lavalink"
RUST_UNIT = "lavalink-rust.service"
JAVA_UNIT = "lavalink-java.service"

BASIC_PROBES = ("version", "info", "stats")
PLAIN_PROBES = (*BASIC_PROBES, "websocket")  # probes without a `source` label
LOADTRACKS_PROBE = "loadtracks"
SOURCES = ("youtube", "soundcloud")
LOAD_TYPES = ("track", "playlist", "search", "empty", "error")
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, math.inf)
PROBE_TIMEOUT_SECONDS = 5.0
REFUSED_PROBE_SECONDS = 0.001  # a connection refused fails at once
LOGBACK_LEVELS = ("trace", "debug", "info", "warn", "error")

DEFAULT_CRASH_PERIOD_SECONDS = 45.0
CRASH_RESTART_DELAY_SECONDS = 10.0  # systemd RestartSec: the node is unreachable this long
WARM_UP_SECONDS = 60.0
MIB = 1024 * 1024
WARM_UP_START_RSS_BYTES = 100 * MIB
RUST_RSS_BYTES = 400 * MIB
JAVA_RSS_BYTES = 700 * MIB
CPU_CORES = 2


class FaultKind(enum.StrEnum):
    """What goes wrong during a `Fault`; the meaning of `Fault.value` is given per member."""

    # The Rust process crashes every `value` seconds (0 means 45 s), first at the fault start; it is
    # unreachable for 10 s (half the period if shorter), then systemd restarts it: a new
    # process_start_time_seconds and unit_restarts + 1 at the restart. Probes are refused meanwhile.
    CRASH_LOOP = "crash_loop"
    # The Rust process is gone: `up` 0, no node samples, probes time out (5 s), unit inactive.
    # A fresh process starts at the fault end, without counting as a systemd restart.
    DOWN = "down"
    # `probes` (default version/info/stats) take `value` seconds; at 5 s or more they time out.
    # loadtracks may be named too, for all sources or just `sources`. With `share` < 1 only that
    # share of the requests is slow, drawn at random (a latency tail).
    LATENCY = "latency"
    # loadtracks for `sources` (default all) fail: success 0, load_type "error" instead of "search".
    SOURCES_DOWN = "sources_down"
    # `probes` (default version/info/stats) answer with an error (success 0) while the node is up.
    API_FAILING = "api_failing"
    # Rust RSS grows by `value` bytes per hour from the fault start (or a later process start);
    # back to normal after the fault end.
    MEMORY_LEAK = "memory_leak"
    # Rust RSS is `value` bytes.
    MEMORY = "memory"
    # Rust lavalink_cpu_lavalink_load_percentage is `value` (0-1), and the process burns
    # `value` * cores CPU seconds per second.
    CPU = "cpu"
    # Prometheus itself was down: no sample of any series. The world keeps running underneath.
    SCRAPE_GAP = "scrape_gap"
    # The watchdog was not scraped: no rollback_watchdog_* samples and up{job="rollback-watchdog"}
    # is 0. Its probes keep running, so its counters jump when the gap ends.
    WATCHDOG_GAP = "watchdog_gap"


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of `kind`, active for unix seconds in [start, end)."""

    kind: FaultKind
    start: float  # unix seconds, inclusive
    end: float  # unix seconds, exclusive
    value: float = 0.0  # meaning depends on kind (documented on the FaultKind member)
    sources: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()
    share: float = 1.0  # LATENCY: the share of requests it slows

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"{self.kind} fault must start before it ends: {self}")
        if self.value < 0 or math.isnan(self.value):
            raise ValueError(f"{self.kind} fault value must be >= 0: {self.value!r}")
        if not 0 < self.share <= 1:
            raise ValueError(f"{self.kind} fault share must be in (0, 1]: {self.share!r}")
        unknown_sources = set(self.sources) - set(SOURCES)
        if unknown_sources:
            raise ValueError(f"unknown sources {sorted(unknown_sources)}; known: {SOURCES}")
        unknown_probes = set(self.probes) - {*PLAIN_PROBES, LOADTRACKS_PROBE}
        if unknown_probes:
            raise ValueError(f"unknown probes {sorted(unknown_probes)}")

    def active_at(self, moment: float) -> bool:
        """Whether the fault is in effect at `moment`."""
        return self.start <= moment < self.end

    def hits_probe(self, probe: str, source: str | None = None) -> bool:
        """Whether a LATENCY or API_FAILING fault affects this probe (and source)."""
        if probe not in (self.probes or BASIC_PROBES):
            return False
        return source is None or not self.sources or source in self.sources


def select(series: Iterable[Series], name: str, **labels: str) -> list[Series]:
    """The series called `name` whose labels include all of `labels`."""
    wanted = set(labels.items())
    return [one for one in series if one.name == name and wanted <= set(one.labels)]


@dataclass(slots=True)
class _SeriesBuilder:
    name: str
    labels: tuple[tuple[str, str], ...]
    samples: list[tuple[float, float]] = field(default_factory=list)


class _Recorder:
    """Collects the samples of every series, in the order the series were declared."""

    def __init__(self) -> None:
        self._builders: list[_SeriesBuilder] = []

    def series(self, name: str, **labels: str) -> _SeriesBuilder:
        builder = _SeriesBuilder(name, tuple(sorted(labels.items())))
        self._builders.append(builder)
        return builder

    def build(self) -> list[Series]:
        return [Series(b.name, b.labels, tuple(b.samples)) for b in self._builders]


def _le_label(bound: float) -> str:
    # prometheus_client's floatToGoString, for the small positive bounds used here.
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _jitter(rng: random.Random, spread: float) -> float:
    """A factor in [1 - spread, 1 + spread]."""
    return 1.0 + spread * (2.0 * rng.random() - 1.0)


def _whole_events(rng: random.Random, expected: float) -> int:
    """A whole number of events whose mean is `expected` (for log lines)."""
    return math.floor(expected + rng.random())


@dataclass(frozen=True, slots=True)
class _NodeProfile:
    job: str
    instance: str
    rss_bytes: float
    lavalink_load: float  # CPU fraction of the whole host
    heap_used_bytes: float
    heap_allocated_bytes: float
    heap_reservable_bytes: float
    players: int
    info_lines_per_minute: float
    startup_info_lines: int


_RUST_PROFILE = _NodeProfile(
    job=RUST_JOB,
    instance=RUST_INSTANCE,
    rss_bytes=RUST_RSS_BYTES,
    lavalink_load=0.08,
    heap_used_bytes=150 * MIB,
    heap_allocated_bytes=256 * MIB,
    heap_reservable_bytes=1024 * MIB,
    players=3,
    info_lines_per_minute=2.0,
    startup_info_lines=25,
)
_JAVA_PROFILE = _NodeProfile(
    job=JAVA_JOB,
    instance=JAVA_INSTANCE,
    rss_bytes=JAVA_RSS_BYTES,
    lavalink_load=0.01,
    heap_used_bytes=120 * MIB,
    heap_allocated_bytes=512 * MIB,
    heap_reservable_bytes=2048 * MIB,
    players=0,
    info_lines_per_minute=0.2,
    startup_info_lines=40,
)


class _Node:
    """One Lavalink node process: its counters, and the series Prometheus scrapes from it."""

    def __init__(
        self, recorder: _Recorder, profile: _NodeProfile, rng: random.Random, process_start: float
    ) -> None:
        self._profile = profile
        self._rng = rng
        scraped = {"job": profile.job, "instance": profile.instance}
        self._up = recorder.series("up", **scraped)
        self._start_time = recorder.series("process_start_time_seconds", **scraped)
        self._rss = recorder.series("process_resident_memory_bytes", **scraped)
        self._cpu_seconds = recorder.series("process_cpu_seconds_total", **scraped)
        self._players = recorder.series("lavalink_players_total", **scraped)
        self._playing = recorder.series("lavalink_playing_players_total", **scraped)
        self._uptime = recorder.series("lavalink_uptime_milliseconds", **scraped)
        self._heap_free = recorder.series("lavalink_memory_free_bytes", **scraped)
        self._heap_used = recorder.series("lavalink_memory_used_bytes", **scraped)
        self._heap_allocated = recorder.series("lavalink_memory_allocated_bytes", **scraped)
        self._heap_reservable = recorder.series("lavalink_memory_reservable_bytes", **scraped)
        self._cores = recorder.series("lavalink_cpu_cores", **scraped)
        self._system_load = recorder.series("lavalink_cpu_system_load_percentage", **scraped)
        self._lavalink_load = recorder.series("lavalink_cpu_lavalink_load_percentage", **scraped)
        self._log_lines = {
            level: recorder.series("logback_appender_total", level=level, **scraped)
            for level in LOGBACK_LEVELS
        }
        self._start_process(process_start)

    def _start_process(self, at: float) -> None:
        self.process_start = at
        self._counted_until = at  # counters include everything up to this moment
        self._cpu_total = 0.0
        self._log_totals = dict.fromkeys(LOGBACK_LEVELS, 0.0)
        self._log_totals["info"] = float(self._profile.startup_info_lines)

    def step(
        self,
        moment: float,
        *,
        process_start: float,
        running: bool,
        scraped: bool,
        lavalink_load: float,
        system_load: float,
        rss_override: float | None,
        leaked_bytes: float,
        failed_requests: int,
    ) -> None:
        """Advance the process to `moment` and record what a scrape there would see.

        RSS is `rss_override` if given, else the healthy figure (warm-up ramp included) plus
        `leaked_bytes`.
        """
        if process_start != self.process_start:
            self._start_process(process_start)
        if not running:
            if scraped:
                self._up.samples.append((moment, 0.0))
            return
        profile, rng = self._profile, self._rng
        elapsed = max(0.0, moment - self._counted_until)
        self._counted_until = max(self._counted_until, moment)
        self._cpu_total += lavalink_load * CPU_CORES * elapsed
        expected_info = profile.info_lines_per_minute * elapsed / 60.0
        self._log_totals["info"] += _whole_events(rng, expected_info)
        self._log_totals["error"] += failed_requests
        age = moment - self.process_start
        warmth = min(1.0, age / WARM_UP_SECONDS)
        healthy = profile.rss_bytes * _jitter(rng, 0.01)
        rss_bytes = WARM_UP_START_RSS_BYTES + (healthy - WARM_UP_START_RSS_BYTES) * warmth
        rss_bytes = rss_override if rss_override is not None else rss_bytes + leaked_bytes
        heap_used = profile.heap_used_bytes * warmth * _jitter(rng, 0.05)
        players = 0 if age < WARM_UP_SECONDS else profile.players
        if not scraped:
            return
        self._up.samples.append((moment, 1.0))
        self._start_time.samples.append((moment, self.process_start))
        self._rss.samples.append((moment, float(round(rss_bytes))))
        self._cpu_seconds.samples.append((moment, round(self._cpu_total, 3)))
        self._players.samples.append((moment, float(players)))
        self._playing.samples.append((moment, float(max(0, players - 1))))
        self._uptime.samples.append((moment, float(round(age * 1000.0))))
        heap_used = float(round(heap_used))
        self._heap_free.samples.append((moment, profile.heap_allocated_bytes - heap_used))
        self._heap_used.samples.append((moment, heap_used))
        self._heap_allocated.samples.append((moment, profile.heap_allocated_bytes))
        self._heap_reservable.samples.append((moment, profile.heap_reservable_bytes))
        self._cores.samples.append((moment, float(CPU_CORES)))
        self._system_load.samples.append((moment, round(system_load, 4)))
        self._lavalink_load.samples.append((moment, round(lavalink_load, 4)))
        for level, builder in self._log_lines.items():
            builder.samples.append((moment, self._log_totals[level]))


class _Histogram:
    """A cumulative duration histogram as prometheus_client exposes it."""

    def __init__(self, recorder: _Recorder, name: str, **labels: str) -> None:
        self._buckets = [
            recorder.series(f"{name}_bucket", le=_le_label(bound), **labels)
            for bound in DURATION_BUCKETS
        ]
        self._sum_series = recorder.series(f"{name}_sum", **labels)
        self._count_series = recorder.series(f"{name}_count", **labels)
        self._counts = [0.0] * len(DURATION_BUCKETS)
        self._sum = 0.0
        self._count = 0.0

    def observe(self, seconds: float) -> None:
        for index, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self._counts[index] += 1.0
        self._sum += seconds
        self._count += 1.0

    def record(self, moment: float) -> None:
        for builder, count in zip(self._buckets, self._counts, strict=True):
            builder.samples.append((moment, count))
        self._sum_series.samples.append((moment, round(self._sum, 6)))
        self._count_series.samples.append((moment, self._count))


@dataclass(frozen=True, slots=True)
class _ProbeResult:
    success: bool
    seconds: float


class _Probe:
    """One watchdog probe (a probe name, and a source for loadtracks): success gauge + histogram."""

    def __init__(self, recorder: _Recorder, probe: str, source: str | None) -> None:
        labels = {"target": PROBE_TARGET, "probe": probe}
        if source is not None:
            labels["source"] = source
        scraped = {"job": WATCHDOG_JOB, "instance": WATCHDOG_INSTANCE}
        self.probe = probe
        self.source = source
        self._success = recorder.series("rollback_watchdog_probe_success", **labels, **scraped)
        self._duration = _Histogram(
            recorder, "rollback_watchdog_probe_duration_seconds", **labels, **scraped
        )
        self._last_success = 1.0

    def observe(self, result: _ProbeResult) -> None:
        self._last_success = 1.0 if result.success else 0.0
        self._duration.observe(result.seconds)

    def record(self, moment: float) -> None:
        self._success.samples.append((moment, self._last_success))
        self._duration.record(moment)


class _Watchdog:
    """The watchdog's own series: probes of the Rust node, track loads and unit state."""

    def __init__(self, recorder: _Recorder, rng: random.Random) -> None:
        self._rng = rng
        scraped = {"job": WATCHDOG_JOB, "instance": WATCHDOG_INSTANCE}
        self._up = recorder.series("up", **scraped)
        self._plain_probes = [_Probe(recorder, probe, None) for probe in PLAIN_PROBES]
        self._load_probes = [_Probe(recorder, LOADTRACKS_PROBE, source) for source in SOURCES]
        self._loads = {
            (source, load_type): recorder.series(
                "rollback_watchdog_track_loads_total",
                target=PROBE_TARGET,
                source=source,
                load_type=load_type,
                **scraped,
            )
            for source in SOURCES
            for load_type in LOAD_TYPES
        }
        self._load_totals = dict.fromkeys(self._loads, 0.0)
        units = (RUST_UNIT, JAVA_UNIT)
        self._restarts = {
            unit: recorder.series("rollback_watchdog_unit_restarts", unit=unit, **scraped)
            for unit in units
        }
        self._active = {
            unit: recorder.series("rollback_watchdog_unit_active", unit=unit, **scraped)
            for unit in units
        }

    def step(
        self,
        moment: float,
        *,
        reachable: bool,
        refused: bool,
        faults: Sequence[Fault],
        rust_restarts: int,
        scraped: bool,
        rust_running: bool | None = None,
    ) -> int:
        """Probe the service at `moment` (the Rust node, or the Java one before a deploy),
        record a scrape if `scraped`; return requests failed by the reachable node (for its
        error log). `rust_running` (default `reachable`) is the Rust unit's state."""
        rng = self._rng
        failed_requests = 0
        for probe in self._plain_probes:
            result = self._probe(probe, 0.03 + 0.03 * rng.random(), reachable, refused, faults)
            probe.observe(result)
            failed_requests += int(reachable and not result.success)
        sources_down = [f for f in faults if f.kind is FaultKind.SOURCES_DOWN]
        for source, probe in zip(SOURCES, self._load_probes, strict=True):
            result = self._probe(probe, 0.15 + 0.1 * rng.random(), reachable, refused, faults)
            source_failing = any(not f.sources or source in f.sources for f in sources_down)
            if reachable and result.success and source_failing:
                result = _ProbeResult(success=False, seconds=result.seconds)
                self._load_totals[(source, "error")] += 1.0
            elif reachable and result.success:
                self._load_totals[(source, "search")] += 1.0
            probe.observe(result)
            failed_requests += int(reachable and not result.success)
        if scraped:
            self._record(moment, reachable if rust_running is None else rust_running, rust_restarts)
        return failed_requests

    def _probe(
        self,
        probe: _Probe,
        healthy_seconds: float,
        reachable: bool,
        refused: bool,
        faults: Sequence[Fault],
    ) -> _ProbeResult:
        if not reachable:
            seconds = REFUSED_PROBE_SECONDS if refused else PROBE_TIMEOUT_SECONDS
            return _ProbeResult(success=False, seconds=seconds)
        seconds = healthy_seconds
        success = True
        for fault in faults:
            if not fault.hits_probe(probe.probe, probe.source):
                continue
            if fault.kind is FaultKind.LATENCY:
                # only a tail draws a number: other histories stay as they were
                if fault.share == 1 or self._rng.random() < fault.share:
                    seconds = max(seconds, fault.value)
            elif fault.kind is FaultKind.API_FAILING:
                success = False
        if seconds >= PROBE_TIMEOUT_SECONDS:
            return _ProbeResult(success=False, seconds=PROBE_TIMEOUT_SECONDS)
        return _ProbeResult(success=success, seconds=seconds)

    def _record(self, moment: float, rust_up: bool, rust_restarts: int) -> None:
        self._up.samples.append((moment, 1.0))
        for probe in (*self._plain_probes, *self._load_probes):
            probe.record(moment)
        for key, builder in self._loads.items():
            builder.samples.append((moment, self._load_totals[key]))
        self._restarts[RUST_UNIT].samples.append((moment, float(rust_restarts)))
        self._restarts[JAVA_UNIT].samples.append((moment, 0.0))
        self._active[RUST_UNIT].samples.append((moment, 1.0 if rust_up else 0.0))
        self._active[JAVA_UNIT].samples.append((moment, 1.0))

    def record_unscraped(self, moment: float) -> None:
        """Prometheus tried to scrape the watchdog and failed."""
        self._up.samples.append((moment, 0.0))


@dataclass(frozen=True, slots=True)
class _Outage:
    """A time the Rust process is not running; a new process starts at `end`."""

    start: float
    end: float
    refused: bool  # nothing listens (probes fail at once) rather than probes timing out


def _rust_outages(faults: Sequence[Fault], first_start: float) -> tuple[list[_Outage], list[float]]:
    """The merged, sorted outages of the Rust process, and the times systemd restarted it."""
    # before its first start nothing listens: probes are refused at once
    hard = [_Outage(-math.inf, first_start, refused=True)]
    hard += [_Outage(f.start, f.end, refused=False) for f in faults if f.kind is FaultKind.DOWN]
    crashes: list[_Outage] = []
    for fault in faults:
        if fault.kind is not FaultKind.CRASH_LOOP:
            continue
        period = fault.value or DEFAULT_CRASH_PERIOD_SECONDS
        delay = min(CRASH_RESTART_DELAY_SECONDS, period / 2.0)
        crash = fault.start
        while crash < fault.end:
            # A process that is already gone cannot crash.
            if not any(o.start <= crash < o.end for o in hard):
                crashes.append(_Outage(crash, crash + delay, refused=True))
            crash += period
    restarts = sorted(c.end for c in crashes)
    merged: list[_Outage] = []
    for outage in sorted([*hard, *crashes], key=lambda o: o.start):
        if merged and outage.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = _Outage(
                last.start, max(last.end, outage.end), refused=last.refused and outage.refused
            )
        else:
            merged.append(outage)
    return merged, restarts


def lavalink_history(
    start: float,
    end: float,
    *,
    scrape_interval: float = 15.0,
    faults: Sequence[Fault] = (),
    process_start: float | None = None,
    seed: int = 1,
    java_served_before: bool = False,
) -> list[Series]:
    """Everything Prometheus would hold for the Lavalink world, scraped in [start, end).

    `process_start` is when the Rust process first started (default: an hour before `start`).
    `java_served_before`: until then the Java node served (the probes answered by it, under
    load) and it stops when the Rust one starts -- a deploy, with the fallback's baseline
    before it. Otherwise the Java node idles beside the Rust one throughout.
    """
    if not start < end:
        raise ValueError(f"start must be before end: {start!r} >= {end!r}")
    if not scrape_interval > 0:
        raise ValueError(f"scrape_interval must be positive: {scrape_interval!r}")
    rng = random.Random(seed)  # noqa: S311 - reproducible jitter, not secrets
    first_rust_start = start - 3600.0 if process_start is None else process_start
    outages, restart_times = _rust_outages(faults, first_rust_start)
    recorder = _Recorder()
    rust = _Node(recorder, _RUST_PROFILE, rng, first_rust_start)
    java = _Node(recorder, _JAVA_PROFILE, rng, start - 86400.0)
    watchdog = _Watchdog(recorder, rng)

    outage_index = 0
    rust_start = first_rust_start
    restarts_seen = 0
    steps = math.ceil((end - start) / scrape_interval)
    for step in range(steps):
        moment = start + step * scrape_interval
        while outage_index < len(outages) and outages[outage_index].end <= moment:
            rust_start = outages[outage_index].end
            outage_index += 1
        outage = outages[outage_index] if outage_index < len(outages) else None
        rust_running = outage is None or moment < outage.start
        while restarts_seen < len(restart_times) and restart_times[restarts_seen] <= moment:
            restarts_seen += 1

        active = [f for f in faults if f.active_at(moment)]
        kinds = {f.kind for f in active}
        scraped = FaultKind.SCRAPE_GAP not in kinds
        watchdog_scraped = scraped and FaultKind.WATCHDOG_GAP not in kinds

        java_serving = java_served_before and moment < first_rust_start
        failed_requests = watchdog.step(
            moment,
            reachable=rust_running or java_serving,
            refused=outage is not None and outage.refused,
            faults=[] if java_serving else active,
            rust_restarts=restarts_seen,
            scraped=watchdog_scraped,
            rust_running=rust_running,
        )
        if java_serving:
            failed_requests = 0  # the Java node answered them
        if scraped and not watchdog_scraped:
            watchdog.record_unscraped(moment)

        rust_load = _RUST_PROFILE.lavalink_load * _jitter(rng, 0.1)
        for fault in active:
            if fault.kind is FaultKind.CPU:
                rust_load = fault.value
        # serving, the Java node carries the players the Rust one carries later
        serving_load = _RUST_PROFILE.lavalink_load if java_serving else _JAVA_PROFILE.lavalink_load
        java_load = serving_load * _jitter(rng, 0.1)
        system_load = min(1.0, 0.05 * _jitter(rng, 0.2) + rust_load * rust_running + java_load)
        rss_override, leaked_bytes = _rust_memory_faults(moment, active, rust_start)

        rust.step(
            moment,
            process_start=rust_start,
            running=rust_running,
            scraped=scraped,
            lavalink_load=rust_load,
            system_load=system_load,
            rss_override=rss_override,
            leaked_bytes=leaked_bytes,
            failed_requests=failed_requests,
        )
        java.step(
            moment,
            process_start=java.process_start,
            running=not java_served_before or java_serving,
            scraped=scraped,
            lavalink_load=java_load,
            system_load=system_load,
            rss_override=None,
            leaked_bytes=0.0,
            failed_requests=0,
        )
    return recorder.build()


def _rust_memory_faults(
    moment: float, active: Sequence[Fault], process_start: float
) -> tuple[float | None, float]:
    """The Rust RSS a MEMORY fault imposes (None if none), and the bytes MEMORY_LEAK faults add."""
    override: float | None = None
    leaked = 0.0
    for fault in active:
        if fault.kind is FaultKind.MEMORY:
            override = fault.value
        elif fault.kind is FaultKind.MEMORY_LEAK:
            # A new process starts without the leaked memory.
            leaked += fault.value * (moment - max(fault.start, process_start)) / 3600.0
    return override, leaked

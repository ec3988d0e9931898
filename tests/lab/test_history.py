"""The generated Lavalink history: contract names, a healthy baseline, and each fault kind."""

from __future__ import annotations

import itertools
import math

import pytest

from watchdog_lab.history import (
    DURATION_BUCKETS,
    JAVA_JOB,
    LOAD_TYPES,
    MIB,
    PLAIN_PROBES,
    PROBE_TIMEOUT_SECONDS,
    RUST_JOB,
    RUST_UNIT,
    SOURCES,
    WATCHDOG_JOB,
    Fault,
    FaultKind,
    lavalink_history,
    select,
)
from watchdog_lab.openmetrics import Series

START = 1_699_999_980.0
END = START + 2 * 3600
STEP = 15.0
FAULT_START = START + 1800
FAULT_END = START + 3600
NODE_SERIES = {
    "up",
    "process_start_time_seconds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "lavalink_players_total",
    "lavalink_playing_players_total",
    "lavalink_uptime_milliseconds",
    "lavalink_memory_free_bytes",
    "lavalink_memory_used_bytes",
    "lavalink_memory_allocated_bytes",
    "lavalink_memory_reservable_bytes",
    "lavalink_cpu_cores",
    "lavalink_cpu_system_load_percentage",
    "lavalink_cpu_lavalink_load_percentage",
    "logback_appender_total",
}
Samples = tuple[tuple[float, float], ...]


def history(*faults: Fault, process_start: float | None = None, seed: int = 1) -> list[Series]:
    return lavalink_history(
        START, END, scrape_interval=STEP, faults=faults, process_start=process_start, seed=seed
    )


def samples(series: list[Series], name: str, **labels: str) -> Samples:
    matches = select(series, name, **labels)
    assert len(matches) == 1, [m.labels for m in matches]
    return matches[0].samples


def value_at(points: Samples, moment: float) -> float:
    found = [value for when, value in points if when == moment]
    assert found, f"no sample at {moment}"
    return found[0]


def between(points: Samples, low: float, high: float) -> list[float]:
    return [value for when, value in points if low <= when < high]


def increments(points: Samples, low: float, high: float) -> list[float]:
    values = [value for when, value in points if low <= when < high]
    return [later - earlier for earlier, later in itertools.pairwise(values)]


def is_counter(series: Series) -> bool:
    return series.name.endswith(("_total", "_bucket", "_sum", "_count")) or series.name in {
        "rollback_watchdog_unit_restarts",
        "lavalink_uptime_milliseconds",
    }


def rust(series: list[Series], name: str, **labels: str) -> Samples:
    return samples(series, name, job=RUST_JOB, **labels)


def probe(series: list[Series], name: str, probe_name: str, **labels: str) -> Samples:
    return samples(series, f"rollback_watchdog_probe_{name}", probe=probe_name, **labels)


@pytest.fixture(scope="module")
def healthy() -> list[Series]:
    return history()


def test_same_seed_gives_the_same_history(healthy: list[Series]) -> None:
    assert history() == healthy
    assert history(seed=2) != healthy


def test_series_follow_the_contract(healthy: list[Series]) -> None:
    for job in (RUST_JOB, JAVA_JOB):
        assert {s.name for s in healthy if s.label("job") == job} == NODE_SERIES
    watchdog_names = {s.name for s in healthy if s.label("job") == WATCHDOG_JOB}
    assert watchdog_names == {
        "up",
        "rollback_watchdog_probe_success",
        "rollback_watchdog_probe_duration_seconds_bucket",
        "rollback_watchdog_probe_duration_seconds_sum",
        "rollback_watchdog_probe_duration_seconds_count",
        "rollback_watchdog_track_loads_total",
        "rollback_watchdog_unit_restarts",
        "rollback_watchdog_unit_active",
    }
    success = select(healthy, "rollback_watchdog_probe_success", target="lavalink")
    assert sorted((s.label("probe"), s.label("source")) for s in success) == sorted(
        [(p, None) for p in PLAIN_PROBES] + [("loadtracks", source) for source in SOURCES]
    )
    buckets = select(healthy, "rollback_watchdog_probe_duration_seconds_bucket", probe="info")
    assert [s.label("le") for s in buckets] == [
        "0.025", "0.05", "0.1", "0.2", "0.3", "0.4", "0.5", "0.75", "1.0", "2.5", "5.0", "10.0",
        "+Inf",
    ]  # fmt: skip
    loads = select(healthy, "rollback_watchdog_track_loads_total", target="lavalink")
    assert {(s.label("source"), s.label("load_type")) for s in loads} == {
        (source, load_type) for source in SOURCES for load_type in LOAD_TYPES
    }
    instances = {(s.label("job"), s.label("instance")) for s in healthy}
    assert instances == {
        ("lavalink-rust", "127.0.0.1:2333"),
        ("lavalink-java", "127.0.0.1:2334"),
        ("rollback-watchdog", "127.0.0.1:9877"),
    }


def test_every_sample_is_on_the_scrape_grid(healthy: list[Series]) -> None:
    grid = [START + i * STEP for i in range(int((END - START) / STEP))]
    for series in healthy:
        assert [when for when, _ in series.samples] == grid, series


def test_healthy_baseline(healthy: list[Series]) -> None:
    for up in select(healthy, "up"):
        assert {value for _, value in up.samples} == {1.0}, up.labels
    for success in select(healthy, "rollback_watchdog_probe_success"):
        assert {value for _, value in success.samples} == {1.0}, success.labels
    rss = [value for _, value in rust(healthy, "process_resident_memory_bytes")]
    assert 390 * MIB < min(rss) <= max(rss) < 410 * MIB
    loads = [value for _, value in rust(healthy, "lavalink_cpu_lavalink_load_percentage")]
    assert 0.07 <= min(loads) <= max(loads) <= 0.09
    cpu_rates = [d / STEP for d in increments(rust(healthy, "process_cpu_seconds_total"), 0, END)]
    assert all(0.14 <= rate <= 0.18 for rate in cpu_rates)  # load * 2 cores
    assert set(between(rust(healthy, "lavalink_players_total"), START, END)) == {3.0}
    assert value_at(rust(healthy, "process_start_time_seconds"), END - STEP) == START - 3600
    uptime = rust(healthy, "lavalink_uptime_milliseconds")
    assert value_at(uptime, START) == 3600 * 1000
    restarts = samples(healthy, "rollback_watchdog_unit_restarts", unit=RUST_UNIT)
    assert set(between(restarts, START, END)) == {0.0}
    active = select(healthy, "rollback_watchdog_unit_active")
    assert {value for s in active for _, value in s.samples} == {1.0}


def test_probe_histograms_are_cumulative_with_one_observation_per_scrape(
    healthy: list[Series],
) -> None:
    for probe_name, low, high in [("version", 0.03, 0.06), ("loadtracks", 0.15, 0.25)]:
        extra = {"source": "youtube"} if probe_name == "loadtracks" else {}
        count = probe(healthy, "duration_seconds_count", probe_name, **extra)
        assert set(increments(count, START, END)) == {1.0}
        assert all(low <= d <= high for d in increments(
            probe(healthy, "duration_seconds_sum", probe_name, **extra), START, END
        ))  # fmt: skip
        buckets = select(
            healthy, "rollback_watchdog_probe_duration_seconds_bucket", probe=probe_name, **extra
        )
        for moment in (START, END - STEP):
            cumulative = [value_at(b.samples, moment) for b in buckets]
            assert cumulative == sorted(cumulative)
            assert cumulative[-1] == value_at(count, moment)
            bounds = [float(b.label("le") or "nan") for b in buckets]
            assert bounds == list(DURATION_BUCKETS)
    searches = samples(healthy, "rollback_watchdog_track_loads_total", source="soundcloud",
                       load_type="search")  # fmt: skip
    assert set(increments(searches, START, END)) == {1.0}


@pytest.mark.parametrize(
    "fault",
    [None]
    + [
        Fault(kind, FAULT_START, FAULT_END, value, sources, probes)
        for kind, value, sources, probes in [
            (FaultKind.LATENCY, 2.0, (), ()),
            (FaultKind.SOURCES_DOWN, 0.0, ("youtube",), ()),
            (FaultKind.API_FAILING, 0.0, (), ("info",)),
            (FaultKind.MEMORY_LEAK, 500 * MIB, (), ()),
            (FaultKind.MEMORY, 3e9, (), ()),
            (FaultKind.CPU, 0.95, (), ()),
            (FaultKind.SCRAPE_GAP, 0.0, (), ()),
            (FaultKind.WATCHDOG_GAP, 0.0, (), ()),
        ]
    ],
    ids=lambda fault: "healthy" if fault is None else str(fault.kind),
)
def test_counters_are_monotone_without_restarts(fault: Fault | None) -> None:
    series = history() if fault is None else history(fault)
    for one in filter(is_counter, series):
        values = [value for _, value in one.samples]
        assert values == sorted(values), one.labels


def test_crash_loop_restarts_the_process_every_period() -> None:
    period = 60.0
    series = history(Fault(FaultKind.CRASH_LOOP, FAULT_START, FAULT_END, value=period))

    starts = sorted(set(between(rust(series, "process_start_time_seconds"), START, END)))
    assert starts[0] == START - 3600
    assert starts[1] == FAULT_START + 10  # the first restart, 10 s after the first crash
    assert {b - a for a, b in itertools.pairwise(starts[1:])} == {period}
    crashes = int((FAULT_END - FAULT_START) / period)
    restarts = samples(series, "rollback_watchdog_unit_restarts", unit=RUST_UNIT)
    assert value_at(restarts, FAULT_START - STEP) == 0
    assert value_at(restarts, END - STEP) == crashes
    assert between(restarts, 0, END) == sorted(between(restarts, 0, END))

    up = rust(series, "up")
    down_moments = [when for when, value in up if value == 0.0]
    # Scrapes every 15 s, a 10 s outage every 60 s: one scrape in four lands in an outage.
    assert len(down_moments) == crashes
    assert all(FAULT_START <= when < FAULT_END for when in down_moments)
    rss_moments = {when for when, _ in rust(series, "process_resident_memory_bytes")}
    assert not rss_moments & set(down_moments)
    version = probe(series, "success", "version")
    assert {value_at(version, when) for when in down_moments} == {0.0}
    cpu = rust(series, "process_cpu_seconds_total")
    assert any(d < 0 for d in increments(cpu, FAULT_START, FAULT_END))  # new process, new counter


def test_crash_loop_defaults_to_45_seconds() -> None:
    series = history(Fault(FaultKind.CRASH_LOOP, FAULT_START, FAULT_START + 450))

    restarts = samples(series, "rollback_watchdog_unit_restarts", unit=RUST_UNIT)
    assert value_at(restarts, END - STEP) == 10
    starts = sorted(set(between(rust(series, "process_start_time_seconds"), START, END)))
    assert starts[1:3] == [FAULT_START + 10, FAULT_START + 55]


def test_down_takes_the_node_away_and_probes_time_out() -> None:
    series = history(Fault(FaultKind.DOWN, FAULT_START, FAULT_END))

    assert set(between(rust(series, "up"), FAULT_START, FAULT_END)) == {0.0}
    for one in series:
        if one.label("job") == RUST_JOB and one.name != "up":
            assert not between(one.samples, FAULT_START, FAULT_END), one.name
    for one in select(series, "rollback_watchdog_probe_success"):
        assert set(between(one.samples, FAULT_START, FAULT_END)) == {0.0}, one.labels
    duration_sum = probe(series, "duration_seconds_sum", "stats")
    assert all(
        math.isclose(d, PROBE_TIMEOUT_SECONDS)
        for d in increments(duration_sum, FAULT_START, FAULT_END)
    )
    active = samples(series, "rollback_watchdog_unit_active", unit=RUST_UNIT)
    assert set(between(active, FAULT_START, FAULT_END)) == {0.0}
    assert value_at(active, FAULT_END) == 1.0
    assert value_at(rust(series, "process_start_time_seconds"), FAULT_END) == FAULT_END
    restarts = samples(series, "rollback_watchdog_unit_restarts", unit=RUST_UNIT)
    assert set(between(restarts, START, END)) == {0.0}
    assert set(between(samples(series, "up", job=JAVA_JOB), START, END)) == {1.0}


def test_latency_slows_the_basic_probes_only() -> None:
    series = history(Fault(FaultKind.LATENCY, FAULT_START, FAULT_END, value=2.0))

    for probe_name in ("version", "info", "stats"):
        duration_sum = probe(series, "duration_seconds_sum", probe_name)
        assert all(math.isclose(d, 2.0) for d in increments(duration_sum, FAULT_START, FAULT_END))
        assert set(between(probe(series, "success", probe_name), START, END)) == {1.0}
    websocket_sum = probe(series, "duration_seconds_sum", "websocket")
    assert max(increments(websocket_sum, FAULT_START, FAULT_END)) < 0.1


def test_latency_beyond_the_timeout_fails_the_named_probe() -> None:
    fault = Fault(FaultKind.LATENCY, FAULT_START, FAULT_END, value=7.0, probes=("websocket",))
    series = history(fault)

    assert set(between(probe(series, "success", "websocket"), FAULT_START, FAULT_END)) == {0.0}
    websocket_sum = probe(series, "duration_seconds_sum", "websocket")
    assert all(
        math.isclose(d, PROBE_TIMEOUT_SECONDS)
        for d in increments(websocket_sum, FAULT_START, FAULT_END)
    )
    assert set(between(probe(series, "success", "version"), START, END)) == {1.0}


def test_sources_down_fails_loads_of_that_source() -> None:
    series = history(Fault(FaultKind.SOURCES_DOWN, FAULT_START, FAULT_END, sources=("youtube",)))

    youtube = probe(series, "success", "loadtracks", source="youtube")
    assert set(between(youtube, FAULT_START, FAULT_END)) == {0.0}
    assert value_at(youtube, FAULT_END) == 1.0

    def loads(source: str, load_type: str) -> Samples:
        return samples(
            series, "rollback_watchdog_track_loads_total", source=source, load_type=load_type
        )

    assert set(increments(loads("youtube", "error"), FAULT_START, FAULT_END)) == {1.0}
    assert set(increments(loads("youtube", "search"), FAULT_START, FAULT_END)) == {0.0}
    assert set(increments(loads("soundcloud", "search"), FAULT_START, FAULT_END)) == {1.0}
    assert value_at(loads("soundcloud", "error"), END - STEP) == 0.0
    errors = rust(series, "logback_appender_total", level="error")
    assert value_at(errors, FAULT_START - STEP) == 0.0
    assert value_at(errors, END - STEP) == (FAULT_END - FAULT_START) / STEP


def test_api_failing_fails_the_named_probes_while_the_node_is_up() -> None:
    series = history(Fault(FaultKind.API_FAILING, FAULT_START, FAULT_END, probes=("info",)))

    assert set(between(probe(series, "success", "info"), FAULT_START, FAULT_END)) == {0.0}
    assert set(between(probe(series, "success", "version"), START, END)) == {1.0}
    assert set(between(rust(series, "up"), START, END)) == {1.0}


def test_memory_leak_grows_rss_at_the_given_rate() -> None:
    per_hour = 600 * MIB
    series = history(Fault(FaultKind.MEMORY_LEAK, FAULT_START, FAULT_END, value=per_hour))

    rss = rust(series, "process_resident_memory_bytes")
    leaked_by_end = per_hour * (FAULT_END - STEP - FAULT_START) / 3600
    assert value_at(rss, FAULT_END - STEP) == pytest.approx(400 * MIB + leaked_by_end, rel=0.02)
    during = between(rss, FAULT_START, FAULT_END)
    assert during[-1] - during[0] > 250 * MIB
    assert value_at(rss, FAULT_END) == pytest.approx(400 * MIB, rel=0.02)


def test_memory_sets_rss() -> None:
    series = history(Fault(FaultKind.MEMORY, FAULT_START, FAULT_END, value=3e9))

    rss = rust(series, "process_resident_memory_bytes")
    assert set(between(rss, FAULT_START, FAULT_END)) == {3e9}
    assert value_at(rss, FAULT_START - STEP) < 410 * MIB


def test_cpu_sets_load_and_cpu_seconds_rate() -> None:
    series = history(Fault(FaultKind.CPU, FAULT_START, FAULT_END, value=0.9))

    load = rust(series, "lavalink_cpu_lavalink_load_percentage")
    assert set(between(load, FAULT_START, FAULT_END)) == {0.9}
    cpu = rust(series, "process_cpu_seconds_total")
    burned = value_at(cpu, FAULT_END - STEP) - value_at(cpu, FAULT_START)
    assert burned == pytest.approx(0.9 * 2 * (FAULT_END - STEP - FAULT_START), rel=0.01)
    system = rust(series, "lavalink_cpu_system_load_percentage")
    assert min(between(system, FAULT_START, FAULT_END)) >= 0.9


def test_scrape_gap_leaves_no_sample_of_any_series() -> None:
    series = history(Fault(FaultKind.SCRAPE_GAP, FAULT_START, FAULT_END))

    for one in series:
        assert not between(one.samples, FAULT_START, FAULT_END), one
        # value_at fails without a sample: there is one right before and one as scraping resumes.
        value_at(one.samples, FAULT_START - STEP)
        value_at(one.samples, FAULT_END)
    # The world kept running: the watchdog kept probing through the gap.
    count = probe(series, "duration_seconds_count", "version")
    gap_steps = (FAULT_END - FAULT_START) / STEP
    assert value_at(count, FAULT_END) - value_at(count, FAULT_START - STEP) == gap_steps + 1


def test_watchdog_gap_hides_only_the_watchdog() -> None:
    series = history(Fault(FaultKind.WATCHDOG_GAP, FAULT_START, FAULT_END))

    for one in series:
        in_gap = between(one.samples, FAULT_START, FAULT_END)
        if one.name.startswith("rollback_watchdog_"):
            assert not in_gap, one
        elif one.label("job") == WATCHDOG_JOB:
            assert set(in_gap) == {0.0}  # up: Prometheus could not scrape it
        else:
            assert len(in_gap) == (FAULT_END - FAULT_START) / STEP, one


def test_process_started_inside_the_window_warms_up() -> None:
    process_start = START + 600
    series = history(process_start=process_start)

    for one in series:
        if one.label("job") == RUST_JOB and one.name != "up":
            assert min(when for when, _ in one.samples) == process_start, one.name
    assert set(between(rust(series, "up"), START, process_start)) == {0.0}
    rss = rust(series, "process_resident_memory_bytes")
    ramp = between(rss, process_start, process_start + 60)
    assert ramp == sorted(ramp)
    assert ramp[0] == pytest.approx(100 * MIB, rel=0.01)
    assert value_at(rss, process_start + 60) == pytest.approx(400 * MIB, rel=0.02)
    assert value_at(rust(series, "lavalink_uptime_milliseconds"), process_start + 60) == 60_000


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((FaultKind.DOWN, FAULT_END, FAULT_START), "start before"),
        ((FaultKind.MEMORY, FAULT_START, FAULT_END, -1.0), ">= 0"),
        ((FaultKind.SOURCES_DOWN, FAULT_START, FAULT_END, 0.0, ("bandcamp",)), "sources"),
        ((FaultKind.API_FAILING, FAULT_START, FAULT_END, 0.0, (), ("ping",)), "probes"),
    ],
)
def test_invalid_faults_are_refused(arguments: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault(*arguments)  # type: ignore[arg-type]

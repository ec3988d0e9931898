"""The throwaway Prometheus: backfilled history answers real queries; the process is cleaned up."""

from __future__ import annotations

import json
import math
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdog_lab.history import MIB, RUST_UNIT, Fault, FaultKind, lavalink_history, select
from watchdog_lab.openmetrics import Series
from watchdog_lab.prometheus import (
    PrometheusUnavailable,
    RunningPrometheus,
    create_blocks,
    load_history,
    running_prometheus,
)

# History must stay out of the head block's range (the last ~3 h).
NOW = math.floor(time.time() / 60) * 60.0
START = NOW - 10 * 3600
END = NOW - 6 * 3600
STEP = 15.0
DOWN_START = START + 3600
DOWN_END = DOWN_START + 1800
HEALTHY_AT = START + 1800
DOWN_AT = DOWN_START + 900


def query(prometheus: RunningPrometheus, expression: str, at: float) -> list[dict[str, Any]]:
    parameters = urllib.parse.urlencode({"query": expression, "time": repr(at)})
    url = f"{prometheus.url}/api/v1/query?{parameters}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def only_value(prometheus: RunningPrometheus, expression: str, at: float) -> float:
    result = query(prometheus, expression, at)
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def history() -> list[Series]:
    faults = [Fault(FaultKind.DOWN, DOWN_START, DOWN_END)]
    return lavalink_history(START, END, scrape_interval=STEP, faults=faults)


@pytest.fixture(scope="module")
def prometheus(
    history: list[Series], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPrometheus]:
    data_dir = load_history(history, tmp_path_factory.mktemp("prometheus"))
    with running_prometheus(data_dir) as running:
        yield running


@pytest.mark.integration
@pytest.mark.parametrize("at", [START, HEALTHY_AT, DOWN_AT, END - STEP])
def test_queries_return_the_backfilled_samples(
    prometheus: RunningPrometheus, history: list[Series], at: float
) -> None:
    checked = 0
    for name, labels in [
        ("up", {"job": "lavalink-rust"}),
        ("up", {"job": "lavalink-java"}),
        ("process_resident_memory_bytes", {"job": "lavalink-java"}),
        ("process_cpu_seconds_total", {"job": "lavalink-java"}),
        ("rollback_watchdog_probe_success", {"probe": "version"}),
        ("rollback_watchdog_probe_duration_seconds_sum", {"probe": "stats"}),
        ("rollback_watchdog_unit_active", {"unit": RUST_UNIT}),
        ("logback_appender_total", {"job": "lavalink-java", "level": "info"}),
    ]:
        (series,) = select(history, name, **labels)
        expected = dict(series.samples)[at]
        selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
        assert only_value(prometheus, f"{name}{{{selector}}}", at) == expected, (name, labels)
        checked += 1
    assert checked == 8


@pytest.mark.integration
def test_every_series_is_loaded(prometheus: RunningPrometheus, history: list[Series]) -> None:
    assert only_value(prometheus, 'count({__name__=~".+"})', HEALTHY_AT) == len(history)
    rust_at_down = query(prometheus, '{job="lavalink-rust"}', DOWN_AT)
    # Backfill cannot write staleness markers, but 15 min into the outage the lookback has expired.
    assert [sample["metric"]["__name__"] for sample in rust_at_down] == ["up"]


@pytest.mark.integration
def test_rules_style_queries_see_the_outage(prometheus: RunningPrometheus) -> None:
    version = 'probe="version",target="lavalink"'
    healthy_rate = f"rate(rollback_watchdog_probe_duration_seconds_count{{{version}}}[5m])"
    assert only_value(prometheus, healthy_rate, HEALTHY_AT) == pytest.approx(1 / STEP)
    buckets = f"rollback_watchdog_probe_duration_seconds_bucket{{{version}}}"
    p90 = f"histogram_quantile(0.9, rate({buckets}[5m]))"
    assert only_value(prometheus, p90, HEALTHY_AT) <= 0.1
    assert only_value(prometheus, p90, DOWN_AT) > 2.5  # every probe waited for the 5 s timeout
    assert only_value(prometheus, 'up{job="lavalink-rust"}', DOWN_AT) == 0.0
    failing = f"avg_over_time(rollback_watchdog_probe_success{{{version}}}[10m])"
    assert only_value(prometheus, failing, DOWN_AT) == 0.0
    rss = 'process_resident_memory_bytes{job="lavalink-rust"}'
    assert 390 * MIB < only_value(prometheus, rss, HEALTHY_AT) < 410 * MIB
    assert only_value(
        prometheus, 'process_start_time_seconds{job="lavalink-rust"}', END - STEP
    ) == (DOWN_END)


@pytest.mark.integration
def test_process_is_gone_after_the_block(tmp_path: Path) -> None:
    with running_prometheus(tmp_path / "data") as running:
        pid = running.pid
        assert process_exists(pid)
        with urllib.request.urlopen(f"{running.url}/-/ready", timeout=5) as response:
            assert response.status == 200

    assert not process_exists(pid)


@pytest.mark.integration
def test_process_is_gone_when_the_body_raises(tmp_path: Path) -> None:
    started: list[int] = []

    def fail_inside() -> None:
        with running_prometheus(tmp_path / "data") as running:
            started.append(running.pid)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail_inside()

    assert len(started) == 1
    assert not process_exists(started[0])


@pytest.mark.integration
def test_early_exit_reports_the_log_tail(tmp_path: Path) -> None:
    with (
        pytest.raises(
            PrometheusUnavailable, match=r"(?s)exited with code \d+.*Error loading config"
        ),
        running_prometheus(tmp_path / "data", config_yaml="global: [not yaml\n"),
    ):
        pytest.fail("prometheus should not have become ready")


@pytest.mark.integration
def test_promtool_failure_carries_its_message(tmp_path: Path) -> None:
    broken = tmp_path / "broken.om"
    broken.write_text("x 1 1700000000\n")  # no "# EOF"

    with pytest.raises(PrometheusUnavailable, match="does not end with # EOF"):
        create_blocks(broken, tmp_path / "data")


def test_missing_prometheus_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no binaries at all

    with (
        pytest.raises(
            PrometheusUnavailable, match=r"`prometheus` was not found.*apt-get install prometheus"
        ),
        running_prometheus(tmp_path / "data"),
    ):
        pytest.fail("should not start")
    with pytest.raises(PrometheusUnavailable, match=r"`promtool` was not found.*apt-get install"):
        create_blocks(tmp_path / "history.om", tmp_path / "data")

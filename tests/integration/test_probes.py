"""The synthetic probes against a real simulator process, one fault at a time, with what they
export asserted through the watchdog's own registry (the names the shipped rules read)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from watchdog import config, telemetry
from watchdog.sources import probes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "youshallnotpass"
Round = Callable[..., Awaitable[telemetry.Recorder]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def simulator(*flags: str) -> Iterator[str]:
    """A Lavalink simulator process on a free port; its base URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "watchdog_lab.lavalink", "--port", str(port), *flags],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/version", headers={"Authorization": PASSWORD}, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError("the simulator never answered") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def target(url: str, **probe_settings: object) -> config.TargetSettings:
    return config.TargetSettings.model_validate(
        {
            "name": "lavalink",
            "primary": {"unit": "lavalink-rust.service", "job": "lavalink-rust"},
            "fallback": {"unit": "lavalink-java.service", "job": "lavalink-java"},
            "rules": ["rules.yml"],
            "runbook": {"url": url},
            "probes": {"timeout": "2s", **probe_settings},
        }
    )


@pytest.fixture
async def probe_round() -> AsyncIterator[Round]:
    """Run one probe round against a URL; return the recorder that exported it."""
    opened: list[probes.Prober] = []

    async def run(url: str, password: str = PASSWORD, **settings: object) -> telemetry.Recorder:
        prober = probes.Prober.for_profile(target(url, **settings), secret=password)
        opened.append(prober)
        recorder = telemetry.Recorder()
        recorder.record_probes("lavalink", await prober.round())
        return recorder

    yield run
    for prober in opened:
        await prober.aclose()


def success(recorder: telemetry.Recorder, probe: str, source: str = "") -> float | None:
    return recorder.registry.get_sample_value(
        "rollback_watchdog_probe_success",
        {"target": "lavalink", "probe": probe, "source": source},
    )


def loads(recorder: telemetry.Recorder, source: str, load_type: str) -> float | None:
    return recorder.registry.get_sample_value(
        "rollback_watchdog_track_loads_total",
        {"target": "lavalink", "source": source, "load_type": load_type},
    )


def observed(recorder: telemetry.Recorder, probe: str, source: str = "") -> tuple[float, float]:
    """(count, sum) of the probe's duration histogram."""
    labels = {"target": "lavalink", "probe": probe, "source": source}
    value = recorder.registry.get_sample_value
    count = value("rollback_watchdog_probe_duration_seconds_count", labels)
    total = value("rollback_watchdog_probe_duration_seconds_sum", labels)
    assert count is not None and total is not None
    return count, total


@pytest.mark.parametrize("flavour", ["java", "rust"])
async def test_a_healthy_node_passes_every_probe(probe_round: Round, flavour: str) -> None:
    with simulator("--flavour", flavour) as url:
        recorder = await probe_round(url)
    for probe in ("version", "info", "stats", "websocket"):
        assert success(recorder, probe) == 1, probe
    for source in ("youtube", "soundcloud"):
        assert success(recorder, "loadtracks", source) == 1
        assert loads(recorder, source, "search") == 1
        assert loads(recorder, source, "error") is None
    count, total = observed(recorder, "version")
    assert count == 1 and 0 < total < 0.5


async def test_failing_sources_fail_their_loadtracks_probe_and_count_errors(
    probe_round: Round,
) -> None:
    with simulator("--fail-sources", "youtube,soundcloud", "--error-severity", "fault") as url:
        recorder = await probe_round(url)
    assert success(recorder, "version") == 1  # the node itself is serving
    for source in ("youtube", "soundcloud"):
        assert success(recorder, "loadtracks", source) == 0
        assert loads(recorder, source, "error") == 1
        assert loads(recorder, source, "search") is None


async def test_added_latency_lands_in_the_duration_histogram(
    probe_round: Round,
) -> None:
    with simulator("--latency", "0.6") as url:
        recorder = await probe_round(url)
    assert success(recorder, "info") == 1  # slow is not failing
    for probe in ("version", "info", "stats"):
        count, total = observed(recorder, probe)
        assert count == 1 and total >= 0.6, (probe, total)
    over_half_second = recorder.registry.get_sample_value(
        "rollback_watchdog_probe_duration_seconds_bucket",
        {"target": "lavalink", "probe": "version", "source": "", "le": "0.5"},
    )
    assert over_half_second == 0  # the rules' 500 ms edge sees it


@pytest.mark.parametrize("password", ["wrong", ""])
async def test_a_refused_password_is_no_data_never_a_failing_service(
    probe_round: Round, password: str
) -> None:
    """Lavalink answers 401/403: our configuration is wrong, the service may be fine. Exported
    as absent series (and a source error), so the API and source rules cannot fire on it."""
    with simulator() as url:
        recorder = await probe_round(url, password=password)
    for probe in ("version", "info", "stats", "websocket"):
        assert success(recorder, probe) is None, probe
    assert success(recorder, "loadtracks", "youtube") is None
    assert loads(recorder, "youtube", "error") is None
    errors = recorder.registry.get_sample_value(
        "rollback_watchdog_source_errors_total", {"target": "lavalink", "source": "probes"}
    )
    assert errors == 6  # version, info, stats, websocket, youtube, soundcloud


async def test_a_refused_password_removes_earlier_series(probe_round: Round) -> None:
    recorder = telemetry.Recorder()
    with simulator() as url:
        good = probes.Prober.for_profile(target(url), secret=PASSWORD)
        bad = probes.Prober.for_profile(target(url), secret="wrong")
        try:
            recorder.record_probes("lavalink", await good.round())
            assert success(recorder, "version") == 1
            recorder.record_probes("lavalink", await bad.round())
        finally:
            await good.aclose()
            await bad.aclose()
    assert success(recorder, "version") is None  # not a stale 1, not a false 0


async def test_a_dead_node_fails_every_probe_at_once(probe_round: Round) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    started = time.monotonic()
    recorder = await probe_round(url)
    assert time.monotonic() - started < 2
    for probe in ("version", "info", "stats", "websocket"):
        assert success(recorder, probe) == 0, probe
    assert success(recorder, "loadtracks", "soundcloud") == 0
    assert loads(recorder, "soundcloud", "error") is None  # no answer is not a load result


async def test_a_hung_node_is_bounded_by_the_probe_timeout(
    probe_round: Round,
) -> None:
    """A server that accepts connections and never answers: every probe fails after its
    timeout, concurrently, so the round takes about one timeout, not one per probe."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    try:
        started = time.monotonic()
        recorder = await probe_round(url, timeout="500ms", concurrency=8)
        elapsed = time.monotonic() - started
    finally:
        hung.close()
    assert 0.5 <= elapsed < 2.0, elapsed
    for probe in ("version", "info", "stats", "websocket"):
        assert success(recorder, probe) == 0, probe
        count, total = observed(recorder, probe)
        assert count == 1 and total >= 0.5  # a timeout counts its full wait as latency


async def test_probes_run_beside_a_busy_event_loop() -> None:
    """A round yields to other tasks: a ticker keeps ticking while probes wait on a hung node."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    prober = probes.Prober.for_profile(
        target(f"http://127.0.0.1:{hung.getsockname()[1]}", timeout="600ms"), secret=PASSWORD
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.05)

    ticking = asyncio.create_task(ticker())
    try:
        await prober.round()
    finally:
        ticking.cancel()
        await prober.aclose()
        hung.close()
    assert ticks >= 8


async def test_loadtracks_runs_only_every_loadtracks_interval() -> None:
    """Each loadtracks probe is a real search on YouTube or SoundCloud: rarer than the rest."""
    with simulator() as url:
        prober = probes.Prober.for_profile(target(url, loadtracks_interval="1h"), secret=PASSWORD)
        try:
            first = {(r.probe, r.source) for r in await prober.round()}
            second = {(r.probe, r.source) for r in await prober.round()}
        finally:
            await prober.aclose()
    assert ("loadtracks", "youtube") in first and ("loadtracks", "soundcloud") in first
    assert second == {("version", ""), ("info", ""), ("stats", ""), ("websocket", "")}


async def test_a_probe_that_breaks_inside_the_watchdog_is_no_data() -> None:
    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug in our own code path")

    prober = probes.Prober.for_profile(
        target("http://127.0.0.1:9", websocket=False),
        secret=PASSWORD,
        transport=httpx.MockTransport(explode),
    )
    recorder = telemetry.Recorder()
    try:
        results = await prober.round()
    finally:
        await prober.aclose()
    assert results and all(not r.conclusive for r in results)
    assert "RuntimeError: a bug in our own code path" in results[0].detail
    recorder.record_probes("lavalink", results)
    assert success(recorder, "version") is None


async def test_5xx_on_chosen_endpoints_fails_just_those_probes(probe_round: Round) -> None:
    with simulator("--fail-endpoints", "/v4/info,/v4/loadtracks", "--fail-status", "503") as url:
        recorder = await probe_round(url)
    assert success(recorder, "info") == 0
    assert success(recorder, "loadtracks", "youtube") == 0
    assert loads(recorder, "youtube", "error") is None  # a 503 is not a load result
    for probe in ("version", "stats", "websocket"):
        assert success(recorder, probe) == 1, probe


async def test_a_refused_websocket_fails_the_websocket_probe_only(probe_round: Round) -> None:
    with simulator("--refuse-websocket") as url:
        recorder = await probe_round(url)
    assert success(recorder, "websocket") == 0
    assert success(recorder, "version") == 1 and success(recorder, "stats") == 1


async def test_a_fault_injected_live_shows_in_the_next_round(probe_round: Round) -> None:
    with simulator() as url:
        before = await probe_round(url)
        async with httpx.AsyncClient() as client:
            changed = await client.post(
                f"{url}/sim/faults",
                json={"failing_sources": ["soundcloud"], "error_severity": "suspicious"},
                headers={"Authorization": PASSWORD},
                timeout=5,
            )
        changed.raise_for_status()
        after = await probe_round(url)
    assert success(before, "loadtracks", "soundcloud") == 1
    assert success(after, "loadtracks", "soundcloud") == 0
    assert loads(after, "soundcloud", "error") == 1
    assert success(after, "loadtracks", "youtube") == 1

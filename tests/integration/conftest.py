"""One real Prometheus for all scenario tests, with each scenario's history in its own window.

Scenarios sit four hours apart (two hours of history, two hours of nothing: the hour before a
scenario's activation, where the comparison looks for the fallback's baseline, holds no other
scenario's data), all older than a day so they are backfilled blocks, not the head block. Each
scenario's fault starts 60 minutes into its window, after the rules' 30-minute ranges are full
of healthy data.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from watchdog_lab import history, prometheus

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 2 * 3600.0
SPACING = 4 * 3600.0  # two hours apart: no scenario reads another's as its baseline
FAULT_AT = 3600.0  # seconds into the window
REPLAY_FROM = 15 * 60.0
F = history.FaultKind


@dataclass(frozen=True)
class Scenario:
    faults: Callable[[float], list[history.Fault]]  # fault start (unix) -> faults
    process_start: float | None = None  # seconds into the window; None: long before it
    scrape_interval: float = 15.0
    java_served_before: bool = False  # a deploy at process_start: Java served until then


def _until_end(
    kind: history.FaultKind, value: float = 0.0, **kwargs: Any
) -> Callable[[float], list[history.Fault]]:
    return lambda t0: [history.Fault(kind, t0, t0 + WINDOW, value, **kwargs)]


SCENARIOS: dict[str, Scenario] = {
    "healthy": Scenario(lambda t0: []),
    "crash_loop": Scenario(_until_end(F.CRASH_LOOP, 45)),
    "down": Scenario(_until_end(F.DOWN)),
    "latency": Scenario(_until_end(F.LATENCY, 0.9)),
    # one request in six or seven takes 1.5 s: the median never moves
    "latency_tail": Scenario(_until_end(F.LATENCY, 1.5, share=0.15)),
    "latency_hiccup": Scenario(lambda t0: [history.Fault(F.LATENCY, t0, t0 + 60, 0.9)]),
    "api_failing": Scenario(_until_end(F.API_FAILING, probes=("info",))),
    "sources_both": Scenario(_until_end(F.SOURCES_DOWN, sources=("youtube", "soundcloud"))),
    "source_one": Scenario(_until_end(F.SOURCES_DOWN, sources=("youtube",))),
    "blip": Scenario(lambda t0: [history.Fault(F.DOWN, t0, t0 + 30)]),
    "scrape_gap": Scenario(lambda t0: [history.Fault(F.SCRAPE_GAP, t0, t0 + 600)]),
    "memory_leak": Scenario(_until_end(F.MEMORY_LEAK, 1.5 * 1024**3)),
    "memory_high": Scenario(_until_end(F.MEMORY, 2.5 * 1024**3)),
    "warmup": Scenario(
        lambda t0: [history.Fault(F.LATENCY, t0, t0 + 180, 0.9)], process_start=FAULT_AT
    ),
    "warnings": Scenario(
        lambda t0: [
            history.Fault(F.CPU, t0, t0 + WINDOW, 0.7),
            history.Fault(F.LATENCY, t0, t0 + WINDOW, 0.4),
            history.Fault(F.SOURCES_DOWN, t0, t0 + WINDOW, sources=("youtube",)),
        ]
    ),
    "crash_loop_30s_scrape": Scenario(_until_end(F.CRASH_LOOP, 45), scrape_interval=30.0),
    # deploys: the Java node served the hour before, the Rust one takes over at the fault start
    "deploy_healthy": Scenario(lambda t0: [], process_start=FAULT_AT, java_served_before=True),
    # every basic answer 0.4 s: within the 500 ms limit, ~9x the Java node's
    "deploy_9x": Scenario(
        _until_end(F.LATENCY, 0.4), process_start=FAULT_AT, java_served_before=True
    ),
    # every basic answer 90 ms: ~2x the Java node's
    "deploy_2x": Scenario(
        _until_end(F.LATENCY, 0.09), process_start=FAULT_AT, java_served_before=True
    ),
}


@dataclass
class World:
    url: str
    starts: dict[str, float] = field(default_factory=dict)
    workdir: Path = Path()

    def backtest(
        self, name: str, *, config: Path | None = None, replay_from: float = REPLAY_FROM
    ) -> dict[str, Any]:
        start = self.starts[name]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "watchdog",
                "backtest",
                "--config",
                str(config or ROOT / "config" / "lavalink.yml"),
                "--prometheus",
                self.url,
                "--start",
                str(start + replay_from),
                "--end",
                str(start + WINDOW - 60),
                "--step",
                "15s",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def reason_at(self, name: str, stamp: str) -> str:
        """The decision's reason at an RFC 3339 stamp of a replay of ``name`` (the JSON
        contract leaves reasons out): the same replay, through the library."""
        from watchdog import backtest, config, rules, timefmt
        from watchdog.sources import prometheus as source

        settings = config.load(ROOT / "config" / "lavalink.yml")
        target = settings.targets[0]
        loaded = rules.load(target.rules, variables=target.rule_variables).rules
        at = timefmt.parse_instant(stamp)
        client = source.PrometheusSource(
            config.PrometheusSettings(url=self.url),  # type: ignore[arg-type]
            credentials=source.Credentials({}, None),
        )
        try:
            replayed = asyncio.run(
                backtest.replay(
                    client,
                    target,
                    loaded,
                    settings.policy.to_policy(),
                    start=self.starts[name] + FAULT_AT,
                    end=at,
                    step=15,
                )
            )
        finally:
            client.close()
        assert replayed.last_decision is not None
        return replayed.last_decision.reason

    def minutes(self, name: str, stamp: str | None) -> float | None:
        """Minutes from the scenario's fault start to an RFC 3339 stamp."""
        if stamp is None:
            return None
        from watchdog import timefmt

        return (timefmt.parse_instant(stamp) - self.starts[name] - FAULT_AT) / 60


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("scenarios")
    base = math.floor(time.time() / 3600) * 3600 - 5 * 86400  # well outside the head block
    series = []
    starts = {}
    for index, (name, scenario) in enumerate(SCENARIOS.items()):
        start = base + index * SPACING
        starts[name] = start
        process_start = None if scenario.process_start is None else start + scenario.process_start
        series.extend(
            history.lavalink_history(
                start,
                start + WINDOW,
                scrape_interval=scenario.scrape_interval,
                faults=scenario.faults(start + FAULT_AT),
                process_start=process_start,
                seed=index + 1,
                java_served_before=scenario.java_served_before,
            )
        )
    data = prometheus.load_history(series, workdir)
    with prometheus.running_prometheus(data) as server:
        yield World(url=server.url, starts=starts, workdir=workdir)


def config_with(tmp_path: Path, policy: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(
        textwrap.dedent(f"""\
        state_dir: {tmp_path / "state"}
        policy: {policy}
        targets:
          - name: lavalink
            primary: {{unit: lavalink-rust.service, job: lavalink-rust}}
            fallback: {{unit: lavalink-java.service, job: lavalink-java}}
            rules: [{ROOT / "rules" / "lavalink.yml"}]
        """)
    )
    return path

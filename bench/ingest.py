"""Benchmark: Alertmanager webhook ingest on loopback -- one big delivery, then a steady rate.

The watchdog runs as its own process (``python -m watchdog run``), so its resident memory
(``VmRSS`` in ``/proc/<pid>/status``) and CPU time are its own, apart from the load generator.
It guards the Lavalink profile with the shipped ``rules/lavalink.yml``; Prometheus is a dead
port and systemd an absent socket, so nothing is scraped and nothing can be switched -- only the
webhook path and the evaluations it wakes are exercised.

(a) Big delivery: ``--alerts`` alerts with fresh fingerprints in one Alertmanager v4 payload
    (the shipped rules' alertnames and some other teams', realistic labels), ``--repeats``
    times. *Answered*: the HTTP 200 is back. *Processed*: answered and every alert the daemon
    keeps is committed to the journal (read-only polls of ``journal.sqlite3`` every 0.5 ms from
    a thread of this process). Target: processed under 100 ms.
(b) Steady rate: ``--rate`` small deliveries per second for ``--duration`` seconds, open loop
    (each request leaves at its scheduled time whatever the earlier ones are doing, and its
    latency counts from that scheduled time, so a stalled daemon cannot hide queued requests),
    over a pooled aiohttp client. A delivery holds 1-3 alerts: mostly re-deliveries of known
    fingerprints (Alertmanager re-sends every group_interval), ``--new-fraction`` new ones. A
    fresh daemon, ``--warmup`` seconds at the same rate first; RSS before and after the window.
    Targets: p99 under 20 ms, RSS growth under 5 MB.

Prints one JSON object (``--json``: on one line). Run: ``.venv/bin/python bench/ingest.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules" / "lavalink.yml"
TOKEN = "bench-alertmanager-token-3f1e"  # noqa: S105 - a throwaway daemon's
TARGETS = {"processed_ms": 100.0, "p99_ms": 20.0, "rss_growth_mb": 5.0}
SHIPPED = [
    (rule["alert"], rule["labels"]["severity"], rule["labels"]["rollback_category"])
    for group in yaml.safe_load(RULES.read_text())["groups"]
    for rule in group["rules"]
    if "alert" in rule
]
# other teams' alerts routed to the watchdog: classified by their own labels
OTHERS = [
    ("UnitCrashLoop", "critical", "instability"),
    ("LavalinkGatewayErrors", "warning", "minor_performance"),
    ("LavalinkLogVolumeHigh", "warning", "monitoring"),
]
IGNORED = ("NodeFilesystemAlmostFull", "warning")  # no rollback_category: unrouted, no signal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    """One ``rollback-watchdog run`` process with its own state directory."""

    workdir: Path
    mode: str = "observe"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    interval: str = "15s"
    code: Path = ROOT  # the checkout whose watchdog runs (another one: a before/after figure)
    alertmanager: str = ", max_alerts: 1000000"  # more settings of it; this: keep them all

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def journal(self) -> Path:
        return self.workdir / "state" / "journal.sqlite3"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "alertmanager.token").write_text(TOKEN + "\n")
        (self.workdir / "alertmanager.token").chmod(0o600)
        config = self.workdir / "config.yml"
        config.write_text(
            textwrap.dedent(f"""\
            mode: {self.mode}
            interval: {self.interval}
            state_dir: {self.workdir / "state"}
            prometheus: {{url: 'http://127.0.0.1:{free_port()}', timeout: 2s, retries: 1}}
            listen: {{port: {self.port}}}
            systemd: {{bus: "unix:path=/nonexistent"}}
            alertmanager: {{token_file: {self.workdir / "alertmanager.token"}{self.alertmanager}}}
            targets:
              - name: lavalink
                primary: {{unit: lavalink-rust.service, job: lavalink-rust}}
                fallback: {{unit: lavalink-java.service, job: lavalink-java}}
                rules: [{RULES}]
                probes: {{enabled: false}}
                watch: {{enabled: false}}
            """)
        )
        log = (self.workdir / "daemon.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "run", "--config", str(config)],
            cwd=self.code,
            stdout=log,
            stderr=subprocess.STDOUT,
            # as systemd/rollback-watchdog.service; PYTHONPATH: this checkout's package
            env={**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONPATH": str(self.code)},
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the daemon exited: see {self.workdir / 'daemon.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise SystemExit("the daemon never became ready")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _proc(self, name: str) -> str:
        if self.process is None:
            raise RuntimeError("the daemon is not running")
        return Path(f"/proc/{self.process.pid}/{name}").read_text()

    def rss_bytes(self) -> int:
        for line in self._proc("status").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = self._proc("stat").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def kept(self) -> int:
        """Alerts the journal holds (rowid only grows: a re-delivery updates its row)."""
        with contextlib.closing(
            sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, isolation_level=None)
        ) as db:
            return int(db.execute("SELECT COALESCE(MAX(rowid), 0) FROM alerts").fetchone()[0])

    def counted(self) -> dict[str, float]:
        """``rollback_watchdog_alerts_total`` by result, and the unrouted ones, from /metrics."""
        out: dict[str, float] = {}
        for line in self._metrics("rollback_watchdog_alerts_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = float(line.rsplit(" ", 1)[1])
        unrouted = self._metrics("rollback_watchdog_alerts_unrouted_total{")
        out["unrouted"] = sum(float(line.rsplit(" ", 1)[1]) for line in unrouted)
        return out

    def evaluations(self) -> float:
        """Evaluations run so far (each new alert wakes one)."""
        lines = self._metrics("rollback_watchdog_evaluations_total{")
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    def _metrics(self, prefix: str) -> list[str]:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return [line for line in text.splitlines() if line.startswith(prefix)]


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[Daemon]:
    daemon = Daemon(workdir)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


# --- Payloads ---------------------------------------------------------------------------------


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16]


def alert(index: int, fp: str, starts_at: str, *, status: str = "firing") -> tuple[dict, bool]:
    """One alert as Alertmanager sends it; whether the watchdog keeps it (a rollback signal)."""
    slot = index % 20
    if slot < 16:
        name, severity, category = SHIPPED[index % len(SHIPPED)]
    elif slot < 19:
        name, severity, category = OTHERS[index % len(OTHERS)]
    else:
        (name, severity), category = IGNORED, None
    labels = {
        "alertname": name,
        "severity": severity,
        "job": "lavalink-rust",
        "instance": f"lavalink-{index % 40}.internal:2333",
        "target": "lavalink",
        "source": ("youtube", "soundcloud", "bandcamp")[index % 3],
        "prometheus": "monitoring/k8s",
    }
    if category is not None:
        labels["rollback_category"] = category
    body = {
        "status": status,
        "labels": labels,
        "annotations": {
            "summary": f"{name} on lavalink-{index % 40}",
            "description": "The Rust Lavalink server misbehaves; see the runbook.",
            "threshold": "> 0.5 for 5m",
        },
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": f"http://prometheus:9090/graph?g0.expr=ALERTS%7Balertname%3D%22{name}%22%7D",
        "fingerprint": fp,
    }
    return body, category is not None


def delivery(alerts: list[dict]) -> bytes:
    name = alerts[0]["labels"]["alertname"]
    return json.dumps(
        {
            "version": "4",
            "groupKey": f'{{}}/{{severity=~"critical|warning"}}:{{alertname="{name}"}}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "rollback-watchdog",
            "groupLabels": {"alertname": name},
            "commonLabels": {"job": "lavalink-rust", "target": "lavalink"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": alerts,
        }
    ).encode()


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


# --- Statistics -------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of them at or below."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "p95": round(percentile(values, 95), 2),
    }


# --- (a) one big delivery ---------------------------------------------------------------------


def big_deliveries(daemon: Daemon, alerts: int, repeats: int, pause: float) -> dict[str, Any]:
    answered: list[float] = []
    processed: list[float] = []
    sizes: list[int] = []
    kept_total = 0
    with httpx.Client(timeout=30) as client:
        for repeat in range(repeats):
            starts = now_rfc3339()
            built = [alert(i, fingerprint("big", repeat, i), starts) for i in range(alerts)]
            body = delivery([a for a, _ in built])
            keep = sum(1 for _, kept in built if kept)
            sizes.append(len(body))
            goal = daemon.kept() + keep
            done = threading.Event()
            seen_at: list[float] = []

            def poll(goal: int = goal, done: threading.Event = done, seen: list = seen_at) -> None:
                with contextlib.closing(
                    sqlite3.connect(
                        f"file:{daemon.journal}?mode=ro", uri=True, isolation_level=None
                    )
                ) as db:
                    query = "SELECT COALESCE(MAX(rowid), 0) FROM alerts"
                    while not done.is_set():
                        if db.execute(query).fetchone()[0] >= goal:
                            seen.append(time.perf_counter())
                            return
                        time.sleep(0.0005)

            poller = threading.Thread(target=poll)
            poller.start()
            begun = time.perf_counter()
            answer = client.post(f"{daemon.url}/alertmanager", content=body, headers=HEADERS)
            back = time.perf_counter()
            poller.join(10)
            done.set()
            if answer.status_code != 200 or answer.json() != {"accepted": alerts}:
                raise SystemExit(f"delivery refused: {answer.status_code} {answer.text[:200]}")
            if not seen_at:
                raise SystemExit(f"repeat {repeat}: the alerts never reached the journal")
            answered.append((back - begun) * 1000)
            processed.append((max(back, seen_at[0]) - begun) * 1000)
            kept_total += keep
            time.sleep(pause)  # the evaluation these alerts woke runs before the next delivery
    counted = daemon.counted()
    return {
        "alerts": alerts,
        "repeats": repeats,
        "payload_bytes": round(statistics.median(sizes)),
        "kept_per_delivery": kept_total // repeats,
        "answered_ms": summary(answered),
        "processed_ms": summary(processed),
        "daemon_counted": counted,
        "counts_agree": counted.get("new") == kept_total
        and counted.get("unrouted") == (alerts * repeats - kept_total),
    }


# --- (b) a steady rate ------------------------------------------------------------------------


@dataclass
class Workload:
    """Small deliveries, prepared before the clock starts: re-deliveries of a pool of known
    alerts (same fingerprint and startsAt), and now and then new ones that join the pool."""

    new_fraction: float
    rng: random.Random = field(default_factory=lambda: random.Random(20261125))  # noqa: S311
    pool: list[tuple[int, str, str]] = field(default_factory=list)
    serial: int = 0
    new_kept: int = 0

    def seed_pool(self, size: int) -> list[bytes]:
        starts = now_rfc3339()
        bodies = []
        for _ in range(size // 2):
            alerts = [self._new(starts) for _ in range(2)]
            bodies.append(delivery(alerts))
        return bodies

    def _new(self, starts: str) -> dict:
        self.serial += 1
        fp = fingerprint("steady", self.serial)
        body, kept = alert(self.serial, fp, starts)
        self.new_kept += kept
        self.pool.append((self.serial, fp, starts))
        return body

    def bodies(self, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            alerts = []
            for _ in range(self.rng.choice((1, 1, 2, 2, 3))):
                if self.rng.random() < self.new_fraction:
                    alerts.append(self._new(now_rfc3339()))
                else:
                    index, fp, starts = self.rng.choice(self.pool)
                    alerts.append(alert(index, fp, starts)[0])
            out.append(delivery(alerts))
        return out


async def open_loop(url: str, bodies: list[bytes], rate: float) -> dict[str, Any]:
    """Send ``bodies`` at ``rate`` per second on a fixed timetable; latencies from schedule."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=256)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(body: bytes, scheduled: float) -> None:
            try:
                async with session.post(f"{url}/alertmanager", data=body, headers=HEADERS) as r:
                    await r.read()
                    if r.status != 200:
                        errors[f"http {r.status}"] += 1
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                return
            latencies.append((loop.time() - scheduled) * 1000)

        tasks: set[asyncio.Task[None]] = set()
        start = loop.time() + 0.2
        for k, body in enumerate(bodies):
            scheduled = start + k / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(body, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent_until = loop.time()
        if tasks:
            await asyncio.wait(tasks)
        elapsed = loop.time() - start
    return {
        "latencies": latencies,
        "errors": dict(errors),
        "elapsed": elapsed,
        "dispatch_lag_ms": round((sent_until - (start + (len(bodies) - 1) / rate)) * 1000, 2),
    }


def steady_rate(
    daemon: Daemon, rate: float, duration: float, warmup: float, new_fraction: float
) -> dict[str, Any]:
    work = Workload(new_fraction)
    pool = work.seed_pool(400)
    with httpx.Client(timeout=10) as client:
        for body in pool:
            client.post(f"{daemon.url}/alertmanager", content=body, headers=HEADERS)
    warm_bodies = work.bodies(round(rate * warmup))
    bodies = work.bodies(round(rate * duration))
    asyncio.run(open_loop(daemon.url, warm_bodies, rate))
    time.sleep(1.0)
    rss_before, cpu_before = daemon.rss_bytes(), daemon.cpu_seconds()
    evaluations_before = daemon.evaluations()
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append(daemon.rss_bytes())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = asyncio.run(open_loop(daemon.url, bodies, rate))
    finally:
        stop.set()
        sampler.join()
    cpu_after = daemon.cpu_seconds()
    evaluations = daemon.evaluations() - evaluations_before
    drained_from = time.perf_counter()
    deadline = drained_from + 30
    while daemon.kept() < work.new_kept and time.perf_counter() < deadline:
        time.sleep(0.005)
    drain_ms = (time.perf_counter() - drained_from) * 1000
    time.sleep(2.0)  # anything the last requests woke has finished
    rss_after = daemon.rss_bytes()
    latencies = result["latencies"]
    return {
        "rate_target": rate,
        "duration_s": duration,
        "warmup_s": warmup,
        "new_fraction": new_fraction,
        "requests": len(bodies),
        "answered": len(latencies),
        "achieved_rate": round(len(latencies) / result["elapsed"], 1),
        "client_dispatch_lag_ms": result["dispatch_lag_ms"],
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 2),
            "p90": round(percentile(latencies, 90), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(max(latencies), 2),
        },
        "errors": result["errors"],
        "journal_drain_ms": round(drain_ms, 1),
        "journal_complete": daemon.kept() >= work.new_kept,
        "daemon_cpu_percent": round(100 * (cpu_after - cpu_before) / result["elapsed"], 1),
        "evaluations_per_s": round(evaluations / result["elapsed"], 1),
        "rss_mb": {
            "before": round(rss_before / 2**20, 2),
            "after": round(rss_after / 2**20, 2),
            "max_during": round(max(samples, default=rss_before) / 2**20, 2),
            "growth": round((rss_after - rss_before) / 2**20, 2),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=1000, help="alerts in the big delivery")
    parser.add_argument("--repeats", type=int, default=20, help="big deliveries")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between them")
    parser.add_argument("--rate", type=float, default=500.0, help="steady deliveries per second")
    parser.add_argument("--duration", type=float, default=30.0, help="steady seconds measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="steady seconds before")
    parser.add_argument("--new-fraction", type=float, default=0.1, help="new alerts' share")
    parser.add_argument("--workdir", type=Path, help="keep the daemons' files (and logs) here")
    parser.add_argument("--json", action="store_true", help="the JSON object on one line")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ingest-")))
        else:
            workdir = args.workdir
        print("big deliveries ...", file=sys.stderr, flush=True)
        with running(workdir / "big") as daemon:
            big = big_deliveries(daemon, args.alerts, args.repeats, args.pause)
        print("steady rate ...", file=sys.stderr, flush=True)
        with running(workdir / "steady") as daemon:
            steady = steady_rate(daemon, args.rate, args.duration, args.warmup, args.new_fraction)
    report = {
        "benchmark": "alertmanager-ingest",
        "big_delivery": big,
        "steady_rate": steady,
        "targets": {
            "processed_median_ms_under": TARGETS["processed_ms"],
            "processed_p95_ms_under": TARGETS["processed_ms"],
            "steady_p99_ms_under": TARGETS["p99_ms"],
            "rss_growth_mb_under": TARGETS["rss_growth_mb"],
        },
        "pass": {
            "processed_median": big["processed_ms"]["median"] < TARGETS["processed_ms"],
            "processed_p95": big["processed_ms"]["p95"] < TARGETS["processed_ms"],
            "steady_p99": steady["latency_ms"]["p99"] < TARGETS["p99_ms"] and not steady["errors"],
            "rss_growth": steady["rss_mb"]["growth"] < TARGETS["rss_growth_mb"],
        },
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "client": f"aiohttp {aiohttp.__version__} (steady), httpx {httpx.__version__} (big)",
        },
    }
    print(json.dumps(report, separators=(",", ":")) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

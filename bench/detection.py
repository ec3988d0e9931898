"""Benchmark: fault injected -> rollback verdict, the watchdog vs Prometheus + Alertmanager.

Each run boots a fresh live stage (``watchdog_lab.stage``: the two simulator units in a sandboxed
systemd, a real Prometheus, the watchdog) with the shipped rules and a 5 s scrape,
rule-evaluation and watchdog interval. The watchdog runs in observe mode: it decides but does not
switch, so the fault stays in place for the standard path too. Prometheus evaluates the same rule
file and sends to a real Alertmanager with its default route timing (``group_wait`` 30 s), which
delivers a webhook to a receiver here: the standard path, measured in the same run from the same
fault. When Prometheus's own rule fired (its ``ALERTS`` series) is recorded too.

The faults, each with its physical limit (the earliest any detector reading these rules over
scraped data could say so):

- ``crash_loop``: every start exits after one second (``Restart=always``, ``RestartSec=1``);
  the rules have no ``for`` and the shipped windows (speed 1): the limit is the third automatic
  restart (``NRestarts`` = 3, polled every 0.1 s) plus one scrape interval.
- ``sources``: YouTube and SoundCloud track loading both fail (``LavalinkMajorSourcesDown``,
  ``for: 5m``); ``api``: ``/v4/info`` answers 500 (``LavalinkApiProbeFailing``, ``for: 3m``).
  The limit is the rule's ``for`` plus two intervals (the first failing probe round, then
  the scrape that carries it to Prometheus).
- ``latency_tail``: 10 % of the answers take 0.8 s (``LavalinkLatencyBudgetSlowBurn``): the
  limit is when the long window's share of slow requests can first pass 6 % (0.6 of the
  window, the window full of healthy requests before) plus the rule's ``for``.

All but the crash loop run their rules ``--speed`` times faster (default 20: ``for: 5m`` ->
15 s), the latency tail ``--tail-speed`` times (default 10: the slow burn's 1h window -> 6m,
its 5m one -> 30 s, enough requests in each to tell 10 % from 6 %), in both paths alike, so a
run takes minutes, not an hour; a path silent for 10 minutes counts as such. Each run waits out
warm-up and the longest window of healthy data before the fault. Prints one JSON object: per
fault the median, min, max and spread of both paths, their ratio and the limit (and one line
per run on stderr).

Run: ``make bench-detection`` (root: the sandbox systemd needs it), or
``.venv/bin/python bench/detection.py --runs 5 --faults crash_loop,api``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from watchdog import timefmt
from watchdog_lab import alertmanager, live, prometheus, stage

TIMEOUT = 600.0  # seconds from the injection for both paths to speak
TAIL_SHARE = 0.1  # below the fast burn's 14.4 %: only the slow burn may catch it
TAIL_SECONDS = 0.8
SLOW_BURN_SHARE = 0.06


@dataclass(frozen=True)
class Fault:
    """One kind of fault: how to inject it, how fast its rules run, and its physical limit."""

    name: str
    words: str
    speed: float  # the rules' `for` and windows divided by this (1: the shipped file)
    warmup: str
    healthy_before: float  # seconds of healthy data before the injection (at this speed)
    inject: Callable[[stage.Stage], None]
    # the limit in seconds from the injection, from the run's own measurements
    limit: Callable[[dict[str, Any], int], float]
    limit_basis: str


def _for_of(alert: str) -> float:
    """The shipped rule's ``for`` in seconds."""
    document = yaml.safe_load(stage.RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                return timefmt.parse_duration(rule.get("for", "0s"))
    raise SystemExit(f"no rule {alert} in {stage.RULES}")


def faults(speed: float, tail_speed: float) -> dict[str, Fault]:
    api_for = _for_of("LavalinkApiProbeFailing") / speed
    sources_for = _for_of("LavalinkMajorSourcesDown") / speed
    tail_for = _for_of("LavalinkLatencyBudgetSlowBurn") / tail_speed
    long_window = 3600.0 / tail_speed
    tail_limit = SLOW_BURN_SHARE / TAIL_SHARE * long_window + tail_for
    return {
        "crash_loop": Fault(
            "crash_loop",
            "crash loop: every start exits after 1 s (Restart=always, RestartSec=1)",
            1.0,
            "2m",
            0.0,
            lambda deployment: deployment.crash_loop(),
            lambda run, interval: run["third_restart_seconds"] + interval,
            "third systemd restart + one scrape interval",
        ),
        "sources": Fault(
            "sources",
            "YouTube and SoundCloud track loading both fail",
            speed,
            "10s",
            0.0,
            lambda deployment: deployment.fault(failing_sources=["youtube", "soundcloud"]),
            lambda run, interval: sources_for + 2 * interval,
            f"LavalinkMajorSourcesDown's for ({sources_for:g} s at this speed) + a probe round "
            "and a scrape",
        ),
        "api": Fault(
            "api",
            "/v4/info answers HTTP 500",
            speed,
            "10s",
            0.0,
            lambda deployment: deployment.fault(fail_endpoints=["/v4/info"], fail_status=500),
            lambda run, interval: api_for + 2 * interval,
            f"LavalinkApiProbeFailing's for ({api_for:g} s at this speed) + a probe round and "
            "a scrape",
        ),
        "latency_tail": Fault(
            "latency_tail",
            f"{TAIL_SHARE:.0%} of the answers take {TAIL_SECONDS} s",
            tail_speed,
            "10s",
            long_window,
            lambda deployment: deployment.fault(latency=TAIL_SECONDS, latency_share=TAIL_SHARE),
            lambda run, interval: tail_limit,
            f"the slow burn's long window ({long_window:g} s) reaching 6 % slow at "
            f"{TAIL_SHARE:.0%} ({tail_limit - tail_for:g} s) + its for ({tail_for:g} s)",
        ),
    }


class Receiver:
    """A webhook receiver: the arrival time of each critical firing alert, by name."""

    def __init__(self) -> None:
        self.critical: list[tuple[float, str]] = []
        received = self.critical

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.time()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for alert in body.get("alerts", []):
                    labels = alert.get("labels", {})
                    if alert.get("status") == "firing" and labels.get("severity") == "critical":
                        received.append((at, labels.get("alertname", "")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def alertmanager_config(receiver_url: str) -> str:
    # The default route timing: group_wait 30s, group_interval 5m, repeat_interval 4h.
    return textwrap.dedent(f"""\
        route:
          receiver: bench
          group_by: [alertname]
        receivers:
          - name: bench
            webhook_configs:
              - url: '{receiver_url}'
                send_resolved: false
        """)


def restarts(deployment: stage.Stage) -> int:
    shown = deployment.box.systemctl("show", "-p", "NRestarts", "--value", stage.PRIMARY)
    return int(shown.stdout.strip() or 0)


def first_rollback(journal: Path, after: float) -> tuple[float, str] | None:
    if not journal.exists():
        return None
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute(
            "SELECT at, reason FROM decisions WHERE action = 'rollback' AND at >= ? "
            "ORDER BY at LIMIT 1",
            (after,),
        ).fetchone()
    except sqlite3.Error:
        row = None
    finally:
        db.close()
    return None if row is None else (float(row[0]), str(row[1]))


def prometheus_fired(url: str, since: float) -> dict[str, float]:
    """Seconds from ``since`` to the first evaluation at which each critical alert was firing
    in Prometheus (its ``ALERTS`` series): the rule's part of the standard path."""
    answer = httpx.get(
        f"{url}/api/v1/query_range",
        params={
            "query": 'ALERTS{alertstate="firing",severity="critical"}',
            "start": since,
            "end": time.time(),
            "step": 1,
        },
        timeout=10,
    ).json()
    fired = {}
    for series in answer["data"]["result"]:
        name = series["metric"]["alertname"]
        first = float(series["values"][0][0]) - since
        fired[name] = round(min(first, fired.get(name, first)), 2)
    return fired


def one_run(workdir: Path, interval: int, fault: Fault) -> dict[str, Any]:
    with (
        Receiver() as receiver,
        alertmanager.running_alertmanager(
            workdir / "alertmanager", alertmanager_config(receiver.url)
        ) as manager,
    ):
        options = stage.StageOptions(
            interval=interval,
            speed=fault.speed,
            prometheus_rules=True,
            alertmanager=manager.address,
            warmup=fault.warmup,
            mode="observe",  # decide without acting: the fault stays for the standard path
        )
        with stage.staged(workdir / "stage", options) as deployment:
            with live.Narrator(deployment.daemon_log, lambda _: None) as narrator:
                live.wait_for_verdict(narrator, "hold", within=90.0)
            # a few scrapes of the healthy node (the rules' baseline), warm-up over, and the
            # longest window full of healthy data where it matters
            time.sleep(max(3 * interval, fault.healthy_before, 12.0))
            injected = time.time()
            fault.inject(deployment)
            third_restart = decided = webhook = None
            reason = alert = ""
            while time.time() - injected < TIMEOUT and (decided is None or webhook is None):
                now = time.time()
                if (
                    fault.name == "crash_loop"
                    and third_restart is None
                    and restarts(deployment) >= 3
                ):
                    third_restart = now
                if decided is None and (found := first_rollback(deployment.journal_path, injected)):
                    decided, reason = found
                if webhook is None and receiver.critical:
                    webhook, alert = receiver.critical[0]
                time.sleep(0.1)
            fired = prometheus_fired(deployment.prometheus_url, injected)
    run: dict[str, Any] = {  # a path that never spoke within TIMEOUT: None, and counted
        "watchdog_seconds": None if decided is None else round(decided - injected, 2),
        "standard_seconds": None if webhook is None else round(webhook - injected, 2),
        "watchdog_reason": reason,
        "standard_alert": alert,
        "prometheus_fired_seconds": fired,  # when Prometheus's own rules fired, by alert
    }
    if third_restart is not None:
        run["third_restart_seconds"] = round(third_restart - injected, 2)
    elif fault.name == "crash_loop":
        raise SystemExit(f"crash loop run in {workdir}: no third restart seen")
    limit = fault.limit(run, interval)
    run["physical_limit_seconds"] = round(limit, 2)
    run["within_one_interval_of_limit"] = (
        decided is not None and decided - injected <= limit + interval
    )
    return run


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "stdev": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per fault")
    parser.add_argument("--interval", type=int, default=5, help="scrape/evaluation seconds")
    parser.add_argument("--speed", type=float, default=20.0, help="rules' speed-up (not crash)")
    parser.add_argument("--tail-speed", type=float, default=10.0, help="the latency tail's")
    parser.add_argument("--faults", default="crash_loop,sources,api,latency_tail")
    parser.add_argument("--workdir", type=Path, help="keep each run's files here")
    args = parser.parse_args()
    known = faults(args.speed, args.tail_speed)
    chosen = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        parser.error(f"unknown fault {unknown}; known: {', '.join(known)}")
    per_fault: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as temp:
        base = args.workdir if args.workdir is not None else Path(temp)
        for name in chosen:
            fault = known[name]
            runs = []
            for number in range(args.runs):
                try:
                    result = one_run(base / f"{name}-{number}", args.interval, fault)
                except prometheus.PrometheusUnavailable as exc:
                    raise SystemExit(str(exc)) from None
                runs.append(result)
                line = {"fault": name, "run": number + 1, **result}
                print(json.dumps(line), flush=True, file=sys.stderr)
            watchdog = [r["watchdog_seconds"] for r in runs if r["watchdog_seconds"] is not None]
            standard = [r["standard_seconds"] for r in runs if r["standard_seconds"] is not None]
            per_fault[name] = {
                "fault": fault.words,
                "rules_speed": fault.speed,
                "runs": len(runs),
                "watchdog": summary(watchdog),
                "standard_path": summary(standard),
                "physical_limit": summary([r["physical_limit_seconds"] for r in runs]),
                "limit_basis": fault.limit_basis,
                "watchdog_silent_runs": len(runs) - len(watchdog),  # none within the timeout
                "standard_silent_runs": len(runs) - len(standard),
                "ratio_of_medians": round(
                    statistics.median(standard) / statistics.median(watchdog), 2
                )
                if watchdog and standard
                else None,
                "all_within_one_interval_of_limit": all(
                    r["within_one_interval_of_limit"] for r in runs
                ),
                "per_run": runs,
            }
    print(
        json.dumps(
            {
                "benchmark": "detection latency: fault injected -> rollback verdict",
                "interval_seconds": args.interval,
                "alertmanager_group_wait_seconds": 30,
                "faults": per_fault,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

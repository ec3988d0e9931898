"""Benchmark: fault injected -> rollback verdict, the watchdog vs Prometheus + Alertmanager.

Each run boots a fresh live stage (``watchdog_lab.stage``: the two simulator units in a sandboxed
systemd, a real Prometheus, the watchdog) with the shipped rules unchanged and a 5 s scrape,
rule-evaluation and watchdog interval. The watchdog runs in observe mode: it decides but does not
switch, so the fault stays in place for the standard path too (a switch would end the crash loop,
and with it the evidence Prometheus was about to alert on). Prometheus evaluates the same rule
file and sends to a real Alertmanager with its default route timing (``group_wait`` 30 s), which
delivers a webhook to a receiver here: the standard path, measured in the same run from the same
fault. When Prometheus's own rule fired (its ``ALERTS`` series) is recorded too.

The fault is a crash loop of the primary: every start exits after one second
(``Restart=always``, ``RestartSec=1``). Its evidence is complete at the third automatic restart
(``NRestarts`` = 3, polled from systemd every 0.1 s); the rules that see it have no ``for``, so
the physical limit of a scrape-based detector is that moment plus one scrape interval. Per run:
the watchdog's decision time (its journal), the webhook's arrival, that limit, all in seconds
from the injection. Prints one JSON object (and one line per run on stderr).

Run: ``make bench-detection`` (root: the sandbox systemd needs it), or
``.venv/bin/python bench/detection.py --runs 10``.
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from watchdog_lab import alertmanager, live, prometheus, stage

TIMEOUT = 180.0  # seconds from the injection for both paths to speak


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


def one_run(workdir: Path, interval: int) -> dict[str, Any]:
    with (
        Receiver() as receiver,
        alertmanager.running_alertmanager(
            workdir / "alertmanager", alertmanager_config(receiver.url)
        ) as manager,
    ):
        options = stage.StageOptions(
            interval=interval,
            speed=1,
            prometheus_rules=True,
            alertmanager=manager.address,
            warmup="2m",
            mode="observe",  # decide without acting: the fault stays for the standard path
        )
        with stage.staged(workdir / "stage", options) as deployment:
            with live.Narrator(deployment.daemon_log, lambda _: None) as narrator:
                live.wait_for_verdict(narrator, "hold", within=90.0)
            time.sleep(3 * interval)  # a few scrapes of the healthy node: the rules' baseline
            injected = time.time()
            deployment.crash_loop()
            third_restart = decided = webhook = None
            reason = alert = ""
            while time.time() - injected < TIMEOUT and (decided is None or webhook is None):
                now = time.time()
                if third_restart is None and restarts(deployment) >= 3:
                    third_restart = now
                if decided is None and (found := first_rollback(deployment.journal_path, injected)):
                    decided, reason = found
                if webhook is None and receiver.critical:
                    webhook, alert = receiver.critical[0]
                time.sleep(0.1)
            fired = prometheus_fired(deployment.prometheus_url, injected)
    if third_restart is None or decided is None or webhook is None:
        raise SystemExit(f"run in {workdir} incomplete: {third_restart=} {decided=} {webhook=}")
    limit = third_restart - injected + interval
    return {
        "watchdog_seconds": round(decided - injected, 2),
        "standard_seconds": round(webhook - injected, 2),
        "physical_limit_seconds": round(limit, 2),
        "third_restart_seconds": round(third_restart - injected, 2),
        "within_one_interval_of_limit": decided - injected <= limit + interval,
        "watchdog_reason": reason,
        "standard_alert": alert,
        "prometheus_fired_seconds": fired,  # when Prometheus's own rules fired, by alert
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "stdev": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--interval", type=int, default=5, help="scrape/evaluation seconds")
    parser.add_argument("--workdir", type=Path, help="keep each run's files here")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as temp:
        base = args.workdir if args.workdir is not None else Path(temp)
        for number in range(args.runs):
            try:
                result = one_run(base / f"run-{number}", args.interval)
            except prometheus.PrometheusUnavailable as exc:
                raise SystemExit(str(exc)) from None
            runs.append(result)
            print(json.dumps({"run": number + 1, **result}), flush=True, file=sys.stderr)
    watchdog = [r["watchdog_seconds"] for r in runs]
    standard = [r["standard_seconds"] for r in runs]
    print(
        json.dumps(
            {
                "benchmark": "detection latency: fault injected -> rollback verdict",
                "fault": "crash loop: every start exits after 1 s (Restart=always, RestartSec=1)",
                "runs": len(runs),
                "interval_seconds": args.interval,
                "alertmanager_group_wait_seconds": 30,
                "watchdog": summary(watchdog),
                "standard_path": summary(standard),
                "physical_limit": summary([r["physical_limit_seconds"] for r in runs]),
                "ratio_of_medians": round(
                    statistics.median(standard) / statistics.median(watchdog), 2
                ),
                "all_within_one_interval_of_limit": all(
                    r["within_one_interval_of_limit"] for r in runs
                ),
                "per_run": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

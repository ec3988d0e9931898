"""The standard alerting path end to end, with the real binaries and nothing mocked.

A Lavalink simulator node is scraped by a real Prometheus that evaluates the shipped
``rules/lavalink.yml`` (sped up by ``stage.fast_rules``) and sends its alerts to a real
Alertmanager, which delivers them by webhook, with a bearer token read from a file, to the
watchdog's ``POST /alertmanager``. The watchdog's own Prometheus URL points at a dead port and
its probes and systemd watch are off, so the alert path is the only evidence it has: these
tests show that path alone leads to a rollback decision (in observe mode, so nothing acts),
that Alertmanager's re-sends never act twice, that a resolution is kept, and that deliveries
with a wrong token are refused and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdog import config, journal, runtime
from watchdog_lab import alertmanager as sim_alertmanager
from watchdog_lab import prometheus as sim_prometheus
from watchdog_lab import stage

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules" / "lavalink.yml"
PASSWORD = "youshallnotpass"
SPEED = 30.0  # LavalinkDown's `for: 1m` becomes 2s; LavalinkMetricsMissing's 10m becomes 20s
WEBHOOK_TOKEN = "am-webhook-secret"
OPERATOR_TOKEN = "operator-secret"
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], *, timeout: float) -> T:
    """Poll ``check`` until it returns something other than None; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def closed_port() -> int:
    """A port nothing listens on (the OS just handed it out and it was closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """One sample of a /metrics text, parsed as Prometheus would."""
    for family in text_string_to_metric_families(metrics):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


class SimNode:
    """The primary Lavalink node: a simulator process on a fixed port, started again after
    a crash on the same port (Prometheus scrapes one address)."""

    def __init__(self, log: Path) -> None:
        self.port = sim_prometheus.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "watchdog_lab.lavalink",
                    "--port",
                    str(self.port),
                    "--password",
                    PASSWORD,
                    "--flavour",
                    "rust",
                ],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self._process
        wait_for("the simulator to answer /version", self._answers, timeout=15)
        assert process.poll() is None

    def _answers(self) -> bool | None:
        assert self._process is not None
        assert self._process.poll() is None, f"the simulator exited; see {self._log}"
        try:
            answer = httpx.get(
                f"{self.url}/version", headers={"Authorization": PASSWORD}, timeout=1
            )
        except httpx.HTTPError:
            return None
        return True if answer.status_code == 200 else None

    def crash(self) -> None:
        """The node dies as a killed JVM does (the simulator's own crash fault)."""
        assert self._process is not None
        with contextlib.suppress(httpx.HTTPError):  # it may die before it answers
            httpx.post(
                f"{self.url}/sim/faults",
                json={"crash": {"after": 0, "exit_code": 1}},
                headers={"Authorization": PASSWORD},
                timeout=5,
            )
        assert self._process.wait(timeout=10) == 1

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)


@contextlib.contextmanager
def running_daemon(settings: config.Settings) -> Iterator[runtime.Running]:
    """``runtime.run`` in this process, on its own event loop in a thread, so the test can
    block on subprocesses and polls while the daemon keeps ticking and serving."""
    started = threading.Event()
    handles: list[runtime.Running] = []
    failures: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def started_with(running: runtime.Running) -> None:
        handles.append(running)
        started.set()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runtime.run(settings, stop=stop, started=started_with))
        except BaseException as exc:  # reported to the test below
            failures.append(exc)
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=main, name="watchdog-daemon", daemon=True)
    thread.start()
    try:
        started.wait(timeout=30)
        if failures:
            raise failures[0]
        assert handles, "the daemon did not start within 30s"
        yield handles[0]
    finally:
        with contextlib.suppress(RuntimeError):  # the loop is already closed if it failed
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the daemon did not stop within 30s"
    if failures:
        raise failures[0]


@dataclass
class Stack:
    """Everything one test started, and how to read it."""

    node: SimNode
    running: runtime.Running
    state_dir: Path
    prometheus_url: str
    alertmanager_url: str
    alertmanager_log: Path

    @property
    def watchdog_url(self) -> str:
        return f"http://127.0.0.1:{self.running.listen_port}"

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """The journal as a reader outside the daemon sees it (a read-only connection)."""
        path = self.state_dir / journal.DATABASE_NAME
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql, args).fetchall()]
        finally:
            db.close()

    def first(self, sql: str, *args: Any) -> dict[str, Any] | None:
        found = self.rows(sql, *args)
        return found[0] if found else None

    def rollbacks(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM decisions WHERE action = 'rollback' ORDER BY id")

    def metrics(self) -> str:
        return httpx.get(f"{self.watchdog_url}/metrics", timeout=5).text

    def evaluations(self) -> float:
        found = sample(self.metrics(), "rollback_watchdog_evaluations_total", target="lavalink")
        return found or 0.0

    def node_up(self) -> float | None:
        """Prometheus's last ``up`` of the node, None before its first scrape."""
        answer = httpx.get(
            f"{self.prometheus_url}/api/v1/query",
            params={"query": 'up{job="lavalink-rust"}'},
            timeout=5,
        ).json()
        results = answer["data"]["result"]
        return float(results[0]["value"][1]) if results else None


def watchdog_settings(tmp_path: Path) -> config.Settings:
    """Observe mode; blind on its own (dead Prometheus, no probes, no systemd watch, a bus
    that does not exist), with the Alertmanager receiver on and the operator API on."""
    (tmp_path / "webhook.token").write_text(WEBHOOK_TOKEN + "\n")
    (tmp_path / "operator.token").write_text(OPERATOR_TOKEN + "\n")
    path = tmp_path / "watchdog.yml"
    path.write_text(
        textwrap.dedent(f"""\
        mode: observe
        interval: 1s
        state_dir: {tmp_path / "state"}
        prometheus: {{url: 'http://127.0.0.1:{closed_port()}', timeout: 1s, retries: 1}}
        systemd: {{bus: 'unix:path=/nonexistent'}}
        listen: {{host: 127.0.0.1, port: 0, token_file: operator.token}}
        alertmanager: {{token_file: webhook.token}}
        targets:
          - name: lavalink
            primary: {{unit: lavalink-rust.service, job: lavalink-rust}}
            fallback: {{unit: lavalink-java.service, job: lavalink-java}}
            rules: [{RULES}]
            probes: {{enabled: false}}
            watch: {{enabled: false}}
        """)
    )
    return config.load(path)


def alertmanager_config(webhook_url: str, credentials_file: Path) -> str:
    """Deliver every alert to the watchdog at once, again every few seconds, and resolved."""
    return textwrap.dedent(f"""\
        route:
          receiver: watchdog
          group_by: [alertname]
          group_wait: 1s
          group_interval: 2s
          repeat_interval: 4s
        receivers:
          - name: watchdog
            webhook_configs:
              - url: '{webhook_url}'
                send_resolved: true
                http_config:
                  authorization:
                    type: Bearer
                    credentials_file: '{credentials_file}'
        """)


def prometheus_config(node_port: int, rules_files: list[Path], alertmanager_address: str) -> str:
    files = ", ".join(f"'{path}'" for path in rules_files)
    return textwrap.dedent(f"""\
        global: {{scrape_interval: 1s, evaluation_interval: 1s}}
        scrape_configs:
          - job_name: lavalink-rust
            static_configs: [{{targets: ['127.0.0.1:{node_port}']}}]
        rule_files: [{files}]
        alerting:
          alertmanagers:
            - static_configs: [{{targets: ['{alertmanager_address}']}}]
        """)


@contextlib.contextmanager
def alert_stack(
    tmp_path: Path, *, alertmanager_token: str, other_rules: str | None = None
) -> Iterator[Stack]:
    """Node, watchdog, Alertmanager (sending ``alertmanager_token``), Prometheus, in the
    order each needs the previous one's address; all stopped again in reverse order.
    ``other_rules``: another team's rules, loaded into the same Prometheus."""
    rules_file = tmp_path / "lavalink-fast.yml"
    rules_file.write_text(stage.fast_rules(RULES, SPEED))
    rules_files = [rules_file]
    if other_rules is not None:
        rules_files.append(tmp_path / "other-team.yml")
        rules_files[-1].write_text(other_rules)
    credentials = tmp_path / "alertmanager-credentials"
    credentials.write_text(alertmanager_token)
    settings = watchdog_settings(tmp_path)
    node = SimNode(tmp_path / "node.log")
    with contextlib.ExitStack() as started:
        started.callback(node.close)
        node.start()
        running = started.enter_context(running_daemon(settings))
        webhook = f"http://127.0.0.1:{running.listen_port}/alertmanager"
        manager = started.enter_context(
            sim_alertmanager.running_alertmanager(
                tmp_path / "alertmanager", alertmanager_config(webhook, credentials)
            )
        )
        server = started.enter_context(
            sim_prometheus.running_prometheus(
                tmp_path / "prometheus",
                config_yaml=prometheus_config(node.port, rules_files, manager.address),
            )
        )
        stack = Stack(
            node=node,
            running=running,
            state_dir=settings.state_dir,
            prometheus_url=server.url,
            alertmanager_url=manager.url,
            alertmanager_log=tmp_path / "alertmanager.alertmanager.log",
        )
        up = wait_for("Prometheus to scrape the healthy node", stack.node_up, timeout=20)
        assert up == 1.0, "Prometheus could not scrape the simulator"
        yield stack


def test_a_critical_alert_from_alertmanager_alone_decides_once_and_resolves(
    tmp_path: Path,
) -> None:
    with alert_stack(tmp_path, alertmanager_token=WEBHOOK_TOKEN) as stack:
        # Blind on its own: the watchdog's Prometheus is dead, so it cannot tell anything.
        last = wait_for(
            "the watchdog's own evaluation",
            lambda: stack.first("SELECT * FROM evaluations ORDER BY id DESC LIMIT 1"),
            timeout=10,
        )
        assert last["verdict"] == "inconclusive", last
        assert stack.rows("SELECT * FROM alerts") == []  # a healthy node: nothing delivered
        assert stack.rollbacks() == []

        stack.node.crash()
        (decided,) = wait_for(
            "a rollback decision fed by Alertmanager", lambda: stack.rollbacks() or None, timeout=30
        )
        assert decided["verdict"] == "rollback"
        assert decided["mode"] == "observe"
        assert decided["outcome"] == "would roll back (observe mode)"
        assert "LavalinkDown firing" in decided["reason"], decided["reason"]
        assert "firing in Alertmanager" in decided["reason"], decided["reason"]

        # Alertmanager re-sends the same alert (repeat_interval): kept once, counted, spent.
        (alert,) = wait_for(
            "a repeated delivery of LavalinkDown",
            lambda: (
                stack.rows(
                    "SELECT * FROM alerts WHERE alertname = 'LavalinkDown' AND deliveries >= 2"
                )
                or None
            ),
            timeout=20,
        )
        assert alert["status"] == "firing"
        assert alert["spent_by"] == decided["incident_id"]
        assert len(stack.rows("SELECT * FROM alerts WHERE alertname = 'LavalinkDown'")) == 1
        assert [d["id"] for d in stack.rollbacks()] == [decided["id"]]
        incidents = stack.rows("SELECT * FROM incidents WHERE verdict = 'rollback'")
        assert [i["id"] for i in incidents] == [decided["incident_id"]]

        # The fix: the node serves again; Alertmanager sends the resolution, which is kept.
        stack.node.start()
        (resolved,) = wait_for(
            "the resolved LavalinkDown",
            lambda: (
                stack.rows(
                    "SELECT * FROM alerts WHERE alertname = 'LavalinkDown' AND status = 'resolved'"
                )
                or None
            ),
            timeout=20,
        )
        assert resolved["fingerprint"] == alert["fingerprint"]
        assert resolved["resolved_at"] is not None
        assert resolved["deliveries"] > alert["deliveries"]
        ticks = stack.evaluations()
        wait_for(
            "three more evaluations after the resolution",
            lambda: True if stack.evaluations() >= ticks + 3 else None,
            timeout=15,
        )
        assert [d["id"] for d in stack.rollbacks()] == [decided["id"]]
        assert len(stack.rows("SELECT * FROM incidents WHERE verdict = 'rollback'")) == 1

        # The operator API tells the same story.
        status = httpx.get(
            f"{stack.watchdog_url}/api/v1/status",
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
            timeout=5,
        )
        assert status.status_code == 200
        (target,) = status.json()["targets"]
        shown = [d for d in target["decisions"] if d["action"] == "rollback"]
        assert [(d["id"], d["outcome"]) for d in shown] == [
            (decided["id"], "would roll back (observe mode)")
        ]
        metrics = stack.metrics()
    assert (sample(metrics, "rollback_watchdog_alerts_total", result="new") or 0) == 1
    assert (sample(metrics, "rollback_watchdog_alerts_total", result="repeated") or 0) >= 2
    assert (sample(metrics, "rollback_watchdog_alerts_total", result="resolved") or 0) >= 1


def test_deliveries_with_a_wrong_token_are_refused_and_change_nothing(tmp_path: Path) -> None:
    with alert_stack(tmp_path, alertmanager_token="not-the-webhook-token") as stack:
        stack.node.crash()

        def failed_notifications() -> float | None:
            text = httpx.get(f"{stack.alertmanager_url}/metrics", timeout=5).text
            failed = sample(text, "alertmanager_notifications_failed_total", integration="webhook")
            return failed if failed else None

        failed = wait_for(
            "Alertmanager's failed webhook deliveries", failed_notifications, timeout=30
        )
        text = httpx.get(f"{stack.alertmanager_url}/metrics", timeout=5).text
        attempted = sample(text, "alertmanager_notifications_total", integration="webhook")
        assert attempted is not None and attempted >= failed  # none of them got through:
        assert sample(text, "alertmanager_notifications_failed_total", integration="webhook") == (
            attempted
        )
        log = stack.alertmanager_log.read_text()
        assert "unexpected status code 401" in log, log[-2000:]
        ticks = stack.evaluations()
        wait_for(  # time for anything wrongly accepted to be kept and evaluated
            "two more evaluations",
            lambda: True if stack.evaluations() >= ticks + 2 else None,
            timeout=15,
        )
        metrics = stack.metrics()
        assert stack.rows("SELECT * FROM alerts") == []
        assert stack.rollbacks() == []
        assert stack.rows("SELECT * FROM incidents WHERE verdict = 'rollback'") == []
    assert (sample(metrics, "rollback_watchdog_alerts_received_total") or 0) == 0


POSTGRES_RULES = """\
groups:
  - name: databases
    rules:
      - alert: PostgresDown
        expr: vector(1)
        for: 5s  # fires once Prometheus has found its Alertmanager (else resent after 1m)
        labels: {job: postgres, severity: critical, rollback_category: instability}
        annotations: {summary: the database is down}
"""


def test_another_team_s_critical_alert_is_unrouted_and_never_a_decision(tmp_path: Path) -> None:
    """The attack trial's alert, through the real Prometheus and Alertmanager: critical,
    classified, and delivered to the watchdog -- but its labels name no target of it."""
    with alert_stack(
        tmp_path, alertmanager_token=WEBHOOK_TOKEN, other_rules=POSTGRES_RULES
    ) as stack:
        (kept,) = wait_for(
            "PostgresDown delivered and kept as unrouted",
            lambda: stack.rows("SELECT * FROM unrouted_alerts") or None,
            timeout=30,
        )
        assert (kept["alertname"], kept["reason"], kept["target"]) == (
            "PostgresDown",
            "no_match",
            None,
        )
        wait_for(  # re-sent by Alertmanager: still nothing
            "PostgresDown delivered again",
            lambda: stack.first("SELECT * FROM unrouted_alerts WHERE deliveries >= 2"),
            timeout=20,
        )
        ticks = stack.evaluations()
        wait_for(
            "two more evaluations",
            lambda: True if stack.evaluations() >= ticks + 2 else None,
            timeout=15,
        )
        assert stack.rows("SELECT * FROM alerts") == []
        # blind on its own (a dead Prometheus): inconclusive, and nothing worse
        assert stack.rows("SELECT * FROM incidents WHERE verdict != 'inconclusive'") == []
        assert stack.rows("SELECT * FROM decisions") == []
        status = httpx.get(
            f"{stack.watchdog_url}/api/v1/status",
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
            timeout=5,
        ).json()
        metrics = stack.metrics()
    assert status["unrouted_alerts"]["latest"][0]["alertname"] == "PostgresDown"
    assert (sample(metrics, "rollback_watchdog_alerts_unrouted_total", reason="no_match") or 0) >= 2
    assert "PostgresDown" not in "".join(
        line for line in metrics.splitlines() if line.startswith("rollback_watchdog_signal_state")
    )

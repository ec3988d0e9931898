"""A fleet on one machine: many watchdog daemons (real processes), one private PostgreSQL, and
a pair of units per node on one sandbox systemd -- for the fleet tests and ``make bench-fleet``.

Node ``n<i>`` guards ``n<i>-new.service`` (the primary) and ``n<i>-old.service`` (the
fallback), both the lab's small HTTP service on port ``base_port + i`` (loopback only), whose
fault flags come from ``<host>/n<i>-{new,old}.env``. Every node is a member of the group
``bots`` and runs the release ``app-2.0``. Daemons are stopped by PID; the journals are read
with SQLite, the store with psycopg.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from watchdog_lab import httpservice, postgres, sandbox
from watchdog_lab import slack as fake_slack

PYTHON = sys.executable
GROUP, RELEASE = "bots", "app-2.0"
BOT, SIGNING = "xoxb-fleet-test", "fleet-signing-secret"  # the fake Slack's


def names(count: int) -> tuple[str, ...]:
    return tuple(f"n{i}" for i in range(1, count + 1))


def primary(node: str) -> str:
    return f"{node}-new.service"


def fallback(node: str) -> str:
    return f"{node}-old.service"


def _index(node: str) -> int:
    return int(node.removeprefix("n"))


@dataclass
class Fleet:
    """The sandbox, the cluster and the host folder the nodes' files live in."""

    box: sandbox.Sandbox
    host: Path
    cluster: postgres.Cluster
    rules: Path  # the http profile's rules file
    base_port: int = 18100  # n<i> serves on base_port + i, listens on base_port + 100 + i

    def port(self, node: str) -> int:
        return self.base_port + _index(node)

    def listen_port(self, node: str) -> int:
        return self.base_port + 100 + _index(node)

    def faults(self, node: str, side: str, flags: str) -> None:
        (self.host / f"{node}-{side}.env").write_text(f"FAULT_FLAGS={flags}\n")

    def reset(self, node: str, *, new: str = "", old: str = "") -> None:
        """The node's primary running and enabled with ``new`` flags, its fallback stopped."""
        self.faults(node, "new", new)
        self.faults(node, "old", old)
        self.box.systemctl("stop", fallback(node))
        self.box.systemctl("disable", fallback(node))
        self.box.systemctl("reset-failed")
        self.box.systemctl("enable", primary(node))
        self.box.systemctl("restart", primary(node))

    def database(self, name: str) -> str:
        """A fresh database for one case; its DSN."""
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())
            db.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.cluster.dsn(name)

    def config(
        self,
        case: str,
        node: str,
        dsn: str,
        *,
        mode: str = "auto",
        listen: str = "{port: 0}",
        extra: str = "",
        rules: tuple[Path, ...] = (),
        interval: str = "1s",
        probes: str = "{interval: 1s, timeout: 1s}",
        watch: str = "1s",
        heartbeat: str = "1s",
        lease: str = "4s",
        **fleet: object,
    ) -> Path:
        """The node's config (and its DSN file) under ``host/cases/<case>/<node>``."""
        folder = self.host / "cases" / case / node
        folder.mkdir(parents=True, exist_ok=True)
        dsn_file = folder / "fleet.dsn"
        dsn_file.write_text(dsn + "\n")
        dsn_file.chmod(0o600)
        inside = self.box.inside(folder)
        more = "".join(f"\n                {k}: {v}" for k, v in fleet.items())
        files = ", ".join(str(p) for p in (self.rules, *rules))
        text = textwrap.dedent(f"""\
            mode: {mode}
            interval: {interval}
            state_dir: {inside}/state
            systemd: {{bus: '{self.box.bus_address}'}}
            prometheus: {{url: 'http://127.0.0.1:1', timeout: 1s, retries: 1}}
            listen: {listen}
            fleet:
                group: {GROUP}
                node: {node}
                release: {RELEASE}  # one release on every node (their unit names differ)
                dsn_file: {inside}/fleet.dsn
                heartbeat: {heartbeat}
                lease: {lease}
                migrate_at_start: true{more}
            targets:
              - name: app
                profile: http
                primary: {{unit: {primary(node)}, job: {node}-new}}
                fallback: {{unit: {fallback(node)}, job: {node}-old}}
                rules: [{files}]
                watch: {{interval: {watch}}}
                probes: {probes}
                after: {{enabled: false}}
                runbook:
                  url: http://127.0.0.1:{self.port(node)}
                  verify: {{timeout: 8s, cpu_sample: 300ms, max_cpu: 0.9, settle: 2s}}
                health: {{path: /health, body: '"name": "{node}-old"'}}
            """)
        path = folder / "config.yml"
        path.write_text(text + textwrap.dedent(extra))
        return path

    def approving(self, case: str, node: str, slack_url: str) -> dict[str, str]:
        """The config arguments of a node in approve mode, Slack on the fake at ``slack_url``
        (its secrets written as files), listening on its own port for clicks."""
        folder = self.host / "cases" / case / node
        folder.mkdir(parents=True, exist_ok=True)
        for name, secret in (("bot", BOT), ("signing", SIGNING)):
            (folder / name).write_text(secret)
            (folder / name).chmod(0o600)
        inside = self.box.inside(folder)
        return {
            "mode": "approve",
            "listen": f"{{host: 127.0.0.1, port: {self.listen_port(node)}}}",
            "extra": f"""\
                approval: {{approvers: [U0ALICE], required_approvals: 1, timeout: 10m}}
                slack:
                  channel: C0FLEET
                  bot_token_file: {inside}/bot
                  signing_secret_file: {inside}/signing
                  api_url: '{slack_url}'
                  allow_insecure_http: true
                  retries: 0
                """,
        }

    @contextmanager
    def daemons(self, configs: dict[str, Path]) -> Iterator[dict[str, int]]:
        """The nodes' daemons, running (their PIDs by node); stopped (SIGTERM, by PID) at the
        end. A daemon started again appends to its log."""
        started: list[tuple[subprocess.Popen[str], int]] = []
        with ExitStack() as logs:
            try:
                for config in configs.values():
                    log_file = logs.enter_context((config.parent / "daemon.log").open("a"))
                    argv = [
                        PYTHON,
                        "-m",
                        "watchdog",
                        "run",
                        "--config",
                        str(self.box.inside(config)),
                    ]
                    process = self.box.popen(argv, stdout=subprocess.DEVNULL, stderr=log_file)
                    started.append((process, self.box.program_pid(process)))
                yield {node: pid for node, (_, pid) in zip(configs, started, strict=True)}
            finally:
                for _, pid in started:
                    with suppress(ProcessLookupError):  # it died: its log says why
                        os.kill(pid, signal.SIGTERM)
                for process, _ in started:
                    process.wait(timeout=60)

    def cli(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [PYTHON, "-m", "watchdog", *args, "--config", str(self.box.inside(config))]
        return self.box.run(argv, timeout=60)

    def click(self, node: str, fleet_incident: int, *, user: str, action_ts: str) -> int:
        """An Approve on the fleet incident's message, delivered to ``node``'s listener (as a
        load balancer might), signed as Slack signs it; the HTTP status."""
        payload = fake_slack.block_actions(
            value=f"f{fleet_incident}", user_id=user, channel="C0FLEET", action_ts=action_ts
        )
        body = fake_slack.interaction_body(payload)
        headers = {
            **fake_slack.sign(SIGNING, body, int(time.time())),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        url = f"http://127.0.0.1:{self.listen_port(node)}/slack/interactions"
        return httpx.post(url, content=body, headers=headers).status_code


def units(nodes: Sequence[str], port: Callable[[str], int]) -> dict[str, str]:
    """Both units of every node: the primary restarts on failure, the fallback does not."""
    found = {}
    for node in nodes:
        for side, name, restart in (("new", primary(node), True), ("old", fallback(node), False)):
            env = sandbox.INSIDE_DIR / f"{node}-{side}.env"
            command = httpservice.command_line(f"{node}-{side}", "$FAULT_FLAGS", port=port(node))
            restarts = "Restart=always\nRestartSec=300ms\n" if restart else ""
            found[name] = (
                f"[Unit]\nDescription={node}-{side}\nDefaultDependencies=no\n"
                "StartLimitIntervalSec=0\n\n"
                f"[Service]\nType=simple\nEnvironmentFile=-{env}\nExecStart={command}\n"
                f"{restarts}\n[Install]\nWantedBy=wd-test.target\n"
            )
    return found


@contextmanager
def running(
    host: Path,
    nodes: Sequence[str],
    rules: Path,
    *,
    base_port: int = 18100,
    settings: dict[str, str] | None = None,
) -> Iterator[Fleet]:
    """A private PostgreSQL (with these server ``settings``) and a sandbox systemd with every
    node's pair of units."""
    for node in nodes:
        for side in ("new", "old"):
            (host / f"{node}-{side}.env").write_text("FAULT_FLAGS=\n")
    with (
        postgres.running_postgres(settings=settings) as cluster,
        sandbox.booted_systemd(host, units(nodes, lambda n: base_port + _index(n))) as box,
    ):
        yield Fleet(box, host, cluster, rules, base_port)


# -- reading what happened -----------------------------------------------------------------------


def _rows(config: Path, query: str) -> list[dict[str, Any]]:
    journal = config.parent / "state" / "journal.sqlite3"
    if not journal.exists():
        return []
    db = sqlite3.connect(journal, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(query)]
    except sqlite3.OperationalError:
        return []  # the schema is still being created
    finally:
        db.close()


def runs(config: Path) -> list[dict[str, Any]]:
    return _rows(config, "SELECT * FROM runs ORDER BY id")


def steps(config: Path) -> list[dict[str, Any]]:
    return _rows(config, "SELECT * FROM steps ORDER BY id")


def approvals(config: Path) -> list[dict[str, Any]]:
    return _rows(config, "SELECT * FROM approvals ORDER BY id")


def outcomes(config: Path) -> list[str]:
    return [str(r["outcome"]) for r in _rows(config, "SELECT outcome FROM decisions ORDER BY id")]


def store_runs(dsn: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(dsn) as db:
        rows = db.execute("SELECT node, run_id, status FROM fleet_runs ORDER BY node, run_id")
        return [(str(n), int(r), str(s)) for n, r, s in rows.fetchall()]


def wait_for(what: str, check: Callable[[], object], timeout: float, logs: Sequence[Path]) -> None:
    """Until ``check()`` is true; else an AssertionError with the end of each log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-2500:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@contextmanager
def slack_in_thread() -> Iterator[fake_slack.FakeSlack]:
    """The lab's fake of Slack's Web API, served from a thread of its own (the daemons are
    other processes; the caller is synchronous)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    found: dict[str, Any] = {}

    async def serve() -> None:
        found["stop"] = asyncio.Event()
        async with fake_slack.FakeSlack(token=BOT) as slack:
            found["slack"] = slack
            ready.set()
            await found["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the fake Slack did not start")
    try:
        yield found["slack"]
    finally:
        loop.call_soon_threadsafe(found["stop"].set)
        thread.join(10)
        loop.close()

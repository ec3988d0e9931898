"""The generic ``http`` profile on a real systemd (PID 1 of a throwaway namespace), guarding a
small HTTP service that is not Lavalink (``watchdog_lab.httpservice``): a crash loop that
systemd's restarts reveal is rolled back by the daemon and the fallback verified through its
health endpoint; a fallback that cannot start brings the primary back."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from watchdog_lab import httpservice, sandbox

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        sandbox.unavailable_reason() is not None,
        reason=f"no sandbox systemd here: {sandbox.unavailable_reason()}",
    ),
]

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[2]
PRIMARY, FALLBACK = "app-new.service", "app-old.service"
YES = ("--reason", "drill", "--yes")
PORT = 18080  # loopback only, inside the namespace's view of the host network


def unit(name: str, env: Path, *, restart: bool) -> str:
    """A unit of the HTTP service whose extra flags come from ``env`` (FAULT_FLAGS=...)."""
    command = httpservice.command_line(name, "$FAULT_FLAGS", port=PORT)
    restarts = "Restart=always\nRestartSec=300ms\n" if restart else ""
    return (
        f"[Unit]\nDescription={name}\nDefaultDependencies=no\nStartLimitIntervalSec=0\n\n"
        f"[Service]\nType=simple\nEnvironmentFile=-{env}\nExecStart={command}\n{restarts}\n"
        "[Install]\nWantedBy=wd-test.target\n"
    )


@dataclass
class World:
    box: sandbox.Sandbox
    host: Path

    def faults(self, side: str, flags: str) -> None:
        (self.host / f"{side}.env").write_text(f"FAULT_FLAGS={flags}\n")

    def reset(self, *, new: str = "", old: str = "") -> None:
        """The primary running and enabled with ``new`` flags, the fallback stopped, disabled."""
        self.faults("new", new)
        self.faults("old", old)
        self.box.systemctl("stop", FALLBACK)
        self.box.systemctl("disable", FALLBACK)
        self.box.systemctl("reset-failed")
        self.box.systemctl("enable", PRIMARY)
        self.box.systemctl("restart", PRIMARY)

    def config(self, name: str, mode: str) -> Path:
        case = self.host / "cases" / name
        case.mkdir(parents=True)
        inside = self.box.inside(case)
        text = textwrap.dedent(f"""\
            mode: {mode}
            interval: 1s
            state_dir: {inside}/state
            systemd: {{bus: '{self.box.bus_address}'}}
            prometheus: {{url: 'http://127.0.0.1:1', timeout: 1s, retries: 1}}
            listen: {{port: 0}}
            targets:
              - name: app
                profile: http
                primary: {{unit: {PRIMARY}, job: app-new}}
                fallback: {{unit: {FALLBACK}, job: app-old}}
                rules: [{ROOT / "rules" / "http-service.yml"}]
                watch: {{interval: 1s}}
                probes: {{interval: 1s, timeout: 1s}}
                after: {{interval: 1s}}
                runbook:
                  url: http://127.0.0.1:{PORT}
                  verify: {{timeout: 8s, cpu_sample: 300ms, max_cpu: 0.9, settle: 5s}}
                health: {{path: /health, body: '"name": "app-old"'}}
            """)
        path = case / "config.yml"
        path.write_text(text)
        return path

    def run_rows(self, config: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        journal = config.parent / "state" / "journal.sqlite3"
        if not journal.exists():
            return None
        db = sqlite3.connect(journal, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            row = db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            if row is None:
                return None
            steps = db.execute(
                "SELECT * FROM steps WHERE run_id = ? ORDER BY seq, id", (row["id"],)
            )
            return dict(row), [dict(s) for s in steps]
        except sqlite3.OperationalError:
            return None  # the schema is still being created
        finally:
            db.close()

    def states(self) -> tuple[str, str]:
        return self.box.unit_state(PRIMARY), self.box.unit_state(FALLBACK)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    host = tmp_path_factory.mktemp("http-profile")
    for side in ("new", "old"):
        (host / f"{side}.env").write_text("FAULT_FLAGS=\n")
    inside = sandbox.INSIDE_DIR
    units = {
        PRIMARY: unit("app-new", inside / "new.env", restart=True),
        FALLBACK: unit("app-old", inside / "old.env", restart=False),
    }
    with sandbox.booted_systemd(host, units) as box:
        yield World(box, host)


def test_a_crash_loop_of_an_http_service_is_rolled_back_and_the_fallback_verified(
    world: World,
) -> None:
    world.reset(new="--exit-after 1")  # every start of the new release crashes after 1 s
    config = world.config("crash-loop", "auto")
    log_path = config.parent / "daemon.log"
    with log_path.open("w") as log_file:
        daemon = world.box.popen(
            [PYTHON, "-m", "watchdog", "run", "--config", str(world.box.inside(config))],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        pid = world.box.program_pid(daemon)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                rows = world.run_rows(config)
                if rows is not None and rows[0]["status"] != "running":
                    break
                time.sleep(0.3)
        finally:
            os.kill(pid, signal.SIGTERM)
            daemon.wait(timeout=30)
    rows = world.run_rows(config)
    assert rows is not None, log_path.read_text()[-3000:]
    run, steps = rows
    assert run["status"] == "succeeded", (run, steps, log_path.read_text()[-3000:])
    assert run["trigger"] == "auto" and "CrashLoop" in run["reason"], run["reason"]
    assert {s["name"]: s["status"] for s in steps} == {
        "preflight": "ok",
        "backup": "ok",
        "snapshot": "ok",
        "stop-primary": "ok",
        "carry-config": "ok",
        "start-fallback": "ok",
        "verify": "ok",
        "finish": "ok",
    }
    assert world.states() == ("inactive", "active")
    assert world.box.systemctl("is-enabled", PRIMARY).stdout.strip() == "disabled"
    assert world.box.systemctl("is-enabled", FALLBACK).stdout.strip() == "enabled"
    facts = json.loads(run["data"])
    verification = facts["verification"]
    # the profile's question (the body names the fallback), and the core's process facts
    assert verification["health"]["ok"] and verification["health"]["detail"] == "/health: HTTP 200"
    assert (
        verification["port"]["ok"] and f"port {PORT} bound by PID" in verification["port"]["detail"]
    )
    assert verification["memory"]["ok"] and verification["cpu"]["ok"]
    assert verification["latency"]["ok"] and "health" in verification["latency"]["detail"]
    assert not any("websocket" in name or "loadtracks" in name for name in verification)
    assert facts["snapshot"]["profile"] == "http"
    report = (config.parent / "state" / "reports" / f"run-{run['id']}.md").read_text()
    assert "the http profile cannot tell" in report  # who was affected: not a health question


def test_an_http_fallback_that_cannot_start_brings_the_primary_back(world: World) -> None:
    world.reset(old="--fail-at-start")
    config = world.config("fallback-fails", "observe")
    done = world.box.run(
        [PYTHON, "-m", "watchdog", "rollback", "--config", str(world.box.inside(config)), *YES],
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert world.states()[0] == "active"  # a degraded service beats none
    assert world.states()[1] in ("inactive", "failed")
    rows = world.run_rows(config)
    assert rows is not None
    run, steps = rows
    assert run["status"] == "restored", (run, steps)
    assert steps[-1]["name"] == "restore-primary" and steps[-1]["status"] == "ok"
    failed = [s for s in steps if s["status"] == "failed"]
    assert [s["name"] for s in failed] in (["start-fallback"], ["verify"]), steps
    assert world.box.systemctl("is-enabled", PRIMARY).stdout.strip() == "enabled"

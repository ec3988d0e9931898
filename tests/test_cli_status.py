"""``status`` tells the truth: whether the daemon runs (its listener, or a fresh evaluation by a
live process), how old its word is, and per target what needs attention -- with distinct
exit codes (0 healthy, 1 degraded, 3 not running) and RFC 3339 in its JSON."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import signal
from tests.test_cli import cli, closed_port, config_file
from tests.test_journal import CRASH, step
from watchdog import journal, model

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def evaluated(tmp_path: Path, *, at: float, firing: bool = False) -> None:
    """A journal with one evaluation of target lavalink at ``at``, made by this process."""
    store = journal.Journal.open(tmp_path / "state")
    try:
        step(store, model.TargetState(), at, signal(CRASH, "firing" if firing else "ok"))
    finally:
        store.close()


def drill(store: journal.Journal, *, at: float) -> int:
    """A run alice started by hand (``rollback --reason drill``), as the journal opens it."""
    return store.open_run(
        "lavalink",
        incident_id=None,
        trigger=model.Trigger.MANUAL,
        initiated_by="alice",
        reason="drill",
        at=at,
    )


def dead_pid() -> int:
    """The pid of a process that ran and was reaped: nothing has it now (pids are not reused
    that fast)."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as child:
        child.wait()
    return int(child.pid)


@contextlib.contextmanager
def listener() -> Iterator[int]:
    """A stand-in for the daemon's listener: ``/healthz`` answers ``ok``."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def status(path: Path, *extra: str) -> tuple[int, dict[str, object]]:
    done = cli("status", "--config", str(path), "--json", *extra)
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout)


def test_a_fresh_evaluation_by_a_live_process_is_a_running_healthy_daemon(
    tmp_path: Path,
) -> None:
    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    now = time.time()
    evaluated(tmp_path, at=now - 5)
    code, document = status(path)
    assert code == 0, document
    daemon = document["daemon"]
    assert isinstance(daemon, dict)
    assert daemon["running"] is True and daemon["pid_alive"] is True
    assert daemon["listener"].startswith("does not answer at http://127.0.0.1:")
    assert RFC3339.match(daemon["last_evaluation_at"]), daemon
    assert 4 <= daemon["last_evaluation_age_seconds"] < 60
    (target,) = document["targets"]  # type: ignore[misc]
    assert target["problems"] == [] and document["healthy"] is True
    assert target["latest"]["verdict"] == "hold" and RFC3339.match(target["latest"]["at"])
    assert RFC3339.match(target["last_change"]["at"])
    text = cli("status", "--config", str(path))
    assert text.returncode == 0
    assert text.stdout.startswith("daemon: running (pid ")
    assert "target lavalink: ARMED: OK" in text.stdout
    assert "  now: HOLD (score 0) at " in text.stdout


def test_disarmed_or_not_holding_is_degraded_exit_1(tmp_path: Path) -> None:
    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    evaluated(tmp_path, at=time.time() - 1, firing=True)
    store = journal.Journal.open(tmp_path / "state")
    store.set_armed("lavalink", False, at=time.time(), by="rollback", note="run #1")
    store.close()
    code, document = status(path)
    assert code == 1, document
    (target,) = document["targets"]  # type: ignore[misc]
    assert target["problems"] == ["disarmed", "verdict rollback"]
    text = cli("status", "--config", str(path))
    assert text.returncode == 1
    assert "target lavalink: DISARMED: NEEDS ATTENTION: disarmed, verdict rollback" in text.stdout


def test_a_run_in_flight_shows_its_step(tmp_path: Path) -> None:
    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    evaluated(tmp_path, at=time.time() - 1)
    store = journal.Journal.open(tmp_path / "state")
    run = drill(store, at=time.time())
    store.step_started(run, 1, "preflight", at=time.time())
    store.close()
    code, document = status(path)
    assert code == 1
    (target,) = document["targets"]  # type: ignore[misc]
    assert target["in_flight"]["run"] == run and target["in_flight"]["step"] == "preflight"
    assert target["problems"] == [f"run #{run} in flight"]
    text = cli("status", "--config", str(path)).stdout
    assert f"run #{run} IN FLIGHT since " in text and "step preflight (running)" in text


def test_a_stale_evaluation_without_a_listener_is_a_daemon_down_exit_3(tmp_path: Path) -> None:
    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    evaluated(tmp_path, at=time.time() - 600)  # interval 15s: 75s is the limit
    code, document = status(path)
    assert code == 3
    assert document["daemon"]["running"] is False  # type: ignore[index]
    text = cli("status", "--config", str(path))
    assert text.returncode == 3 and text.stdout.startswith("daemon: NOT RUNNING (")
    assert "last evaluation 10m ago" in text.stdout


def test_a_fresh_evaluation_by_a_dead_process_is_a_daemon_down(tmp_path: Path) -> None:
    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    evaluated(tmp_path, at=time.time() - 1)
    gone = dead_pid()
    time.sleep(0.2)
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / journal.DATABASE_NAME)) as db:
        db.execute("UPDATE latest SET pid = ?", (gone,))
        db.commit()
    code, document = status(path)
    assert code == 3
    assert document["daemon"]["pid_alive"] is False  # type: ignore[index]


def test_a_live_pid_that_started_at_another_time_is_another_process(tmp_path: Path) -> None:
    """A pid alone misleads: reused, or from a daemon's PID namespace (the demo's sandbox),
    where pid 7 is some process of the host. The start time tells them apart."""
    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    evaluated(tmp_path, at=time.time() - 1)
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / journal.DATABASE_NAME)) as db:
        db.execute("UPDATE latest SET started = started - 1")
        db.commit()
    code, document = status(path)
    assert code == 3
    assert document["daemon"]["pid_alive"] is False  # type: ignore[index]


def test_a_listener_that_answers_is_a_running_daemon_with_a_stale_word(tmp_path: Path) -> None:
    with listener() as port:
        path = config_file(tmp_path, f"listen: {{port: {port}}}\n")
        evaluated(tmp_path, at=time.time() - 600)
        code, document = status(path)
    assert code == 1, document  # running (it answers), but its evaluation is stale
    assert document["daemon"]["listener"] == "answers"  # type: ignore[index]
    (target,) = document["targets"]  # type: ignore[misc]
    assert target["problems"] == ["last evaluation 10m ago"]


def test_status_target_filters_and_names_an_unknown_one(tmp_path: Path) -> None:
    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    evaluated(tmp_path, at=time.time() - 1)
    code, document = status(path, "--target", "lavalink")
    assert code == 0 and [t["target"] for t in document["targets"]] == ["lavalink"]  # type: ignore[attr-defined]
    done = cli("status", "--config", str(path), "--target", "nope")
    assert done.returncode == 2 and "nope" in done.stderr

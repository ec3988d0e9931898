"""The live demo end to end, as `make demo` runs it: a fault injected into a real systemd unit
-> probes and scrapes -> a real Prometheus -> the rules -> a verdict -> the switch over D-Bus ->
a verified fallback; twice (a crash loop, then YouTube and SoundCloud failing)."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from watchdog_lab import sandbox

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        sandbox.unavailable_reason() is not None,
        reason=f"no sandbox systemd here: {sandbox.unavailable_reason()}",
    ),
]

ROOT = Path(__file__).resolve().parents[2]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_both_scenes_end_in_a_verified_fallback_and_nothing_is_left_running(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "watchdog", "demo", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-3000:]
    assert "SCENE 1" in out and "SCENE 2" in out
    for step in ("preflight", "stop-primary", "start-fallback", "verify", "finish"):
        assert f"runbook:   {step}" in out, step
    assert "verified:  websocket" in out and "verified:  loadtracks:youtube" in out

    db = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
    db.row_factory = sqlite3.Row
    try:
        runs = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        db.close()
    assert [(r["trigger"], r["status"]) for r in runs] == [
        ("auto", "succeeded"),
        ("auto", "succeeded"),
    ]
    for run in runs:
        verification = json.loads(run["data"])["verification"]
        assert all(check["ok"] for check in verification.values()), verification
    reasons = [run["reason"] for run in runs]  # the decision that started each run
    assert any(s in reasons[0] for s in ("UnitCrashLoop", "LavalinkCrashLoop", "LavalinkDown"))
    assert "LavalinkMajorSourcesDown" in reasons[1]  # through the probes and Prometheus
    assert not listening(2333)  # the units are gone with their systemd

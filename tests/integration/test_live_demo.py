"""The live demo end to end, as `make demo` runs it: a fault injected into a real systemd unit
-> probes and scrapes -> a real Prometheus -> the rules -> a verdict -> the switch over D-Bus ->
a verified fallback; twice (a crash loop, then YouTube and SoundCloud failing).

The demo runs once (a minute or more); each test reads one promise of its story from the same
output and checks it against the journal and the files the demo left, not against its prose.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from watchdog import model
from watchdog_lab import live, sandbox, stage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        sandbox.unavailable_reason() is not None,
        reason=f"no sandbox systemd here: {sandbox.unavailable_reason()}",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"\[\s*\d+\.\d+s\] ")
MARK = re.compile(r" \((starts|joins) run #\d+\)$| \(no action: (disarmed|run #\d+ in flight)\)$")


@dataclass(frozen=True)
class Demo:
    """What one demo printed, and where it left its journal."""

    workdir: Path
    out: str

    @property
    def lines(self) -> list[str]:
        """The output's lines, time stamps taken off (continuation lines kept, for indices)."""
        return [STAMP.sub("", line, count=1) for line in self.out.splitlines()]

    def index(self, line: str) -> int:
        return self.lines.index(line)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        db = sqlite3.connect(f"file:{self.workdir / 'state' / 'journal.sqlite3'}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in db.execute(sql)]
        finally:
            db.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    workdir = tmp_path_factory.mktemp("demo").resolve()
    done = subprocess.run(
        [sys.executable, "-m", "watchdog", "demo", "--workdir", str(workdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return Demo(workdir, done.stdout)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_both_scenes_end_in_a_verified_fallback_and_nothing_is_left_running(demo: Demo) -> None:
    out = demo.out
    assert "SCENE 1" in out and "SCENE 2" in out
    for step in ("preflight", "stop-primary", "start-fallback", "verify", "finish"):
        assert f"runbook:   {step}" in out, step
    assert "verified:  websocket" in out and "verified:  loadtracks:youtube" in out

    runs = demo.rows("SELECT * FROM runs ORDER BY id")
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


def test_each_run_tells_its_steps_then_its_verification_then_how_it_ended(demo: Demo) -> None:
    lines = demo.lines
    runs = demo.rows("SELECT id, data FROM runs ORDER BY id")
    starts = [demo.index(f"runbook: run #{run['id']} started (auto)") for run in runs]
    for number, run in enumerate(runs):
        begun = starts[number]
        until = starts[number + 1] if number + 1 < len(runs) else len(lines)
        ended = demo.index(f"runbook: run #{run['id']} SUCCEEDED")
        assert begun < ended < until
        checks = json.loads(run["data"])["verification"]
        told = [
            i
            for i in range(begun, until)
            if lines[i].startswith("verified:") and lines[i].split()[1] in checks
        ]
        assert len(told) == len(checks), (run["id"], lines[begun:until])
        finish = max(i for i in range(begun, ended) if lines[i].startswith("runbook:   "))
        assert all(finish < i < ended for i in told), (run["id"], lines[begun : ended + 1])


def test_a_rollback_verdict_says_what_came_of_it(demo: Demo) -> None:
    lines = demo.lines
    verdicts = [i for i, line in enumerate(lines) if line.startswith("watchdog: verdict ROLLBACK")]
    assert verdicts
    unmarked = [lines[i] for i in verdicts if MARK.search(lines[i]) is None]
    assert not unmarked, unmarked
    # the marks are the daemon's facts: each decision the gate launched or joined is told once
    decisions = demo.rows("SELECT outcome FROM decisions WHERE action = 'rollback' ORDER BY id")
    outcomes = [row["outcome"] for row in decisions]
    assert sum(" (starts run #" in lines[i] for i in verdicts) == outcomes.count(
        model.Launch.STARTED
    )
    assert sum(" (joins run #" in lines[i] for i in verdicts) == outcomes.count(model.Launch.JOINED)
    for run in (1, 2):  # the verdict, then the decision, then the run it started
        assert demo.index(f"runbook: run #{run} started (auto)") > next(
            i for i in verdicts if lines[i].endswith(f" (starts run #{run})")
        )
    # and the demo has rollback verdicts that start nothing: while a run is in flight (the
    # primary is down as the fallback starts), and at times while disarmed after one
    assert any(" (starts run #" not in lines[i] for i in verdicts), [lines[i] for i in verdicts]
    disarmed = [i for i, line in enumerate(lines) if line.endswith(" disarmed (by rollback)")]
    rearmed = demo.index("watchdog: target lavalink armed again (by demo-operator)")
    assert disarmed and disarmed[0] < rearmed
    for i in verdicts:
        if disarmed[0] < i < rearmed:
            assert lines[i].endswith(" (no action: disarmed)"), lines[i]


def test_the_operator_rearm_is_shown_with_what_it_answered(demo: Demo) -> None:
    config = demo.workdir / "config.yml"
    told = demo.index(f"operator: rollback-watchdog rearm --config {config} --by demo-operator")
    assert "target lavalink armed" in demo.lines[told + 1]
    assert told < demo.index(
        "SCENE 2: YouTube and SoundCloud track loading fail (loadType error, severity fault)"
    )


def test_the_demo_speed_is_told_from_the_rules_it_runs(demo: Demo) -> None:
    def for_of(path: Path) -> str:
        document = yaml.safe_load(path.read_text())
        rules = [rule for group in document["groups"] for rule in group["rules"]]
        return str(next(r["for"] for r in rules if r.get("alert") == live.SOURCES_RULE))

    shipped, staged = for_of(stage.RULES), for_of(demo.workdir / "rules" / "lavalink.yml")
    assert shipped != staged
    speed = stage.StageOptions().speed
    told = [line for line in demo.lines if line.startswith(f"rules run {speed:g}x faster")]
    assert len(told) == 1
    assert told[0].endswith(f"{live.SOURCES_RULE} for {shipped} -> {staged}")


def test_paths_are_the_hosts(demo: Demo) -> None:
    assert str(sandbox.INSIDE_DIR) not in demo.out
    backups = [line for line in demo.lines if line.startswith("runbook:   backup ")]
    assert len(backups) == 2
    assert all(str(demo.workdir / "opt" / "lavalink-rust" / "config") in b for b in backups)
    assert str(demo.workdir / "state" / "backups" / "emergency-") in demo.out


def test_it_ends_with_each_runs_report_as_the_cli_prints_it(demo: Demo) -> None:
    lines = demo.lines
    config = demo.workdir / "config.yml"
    summary = demo.index("what happened:")
    for run in (1, 2):
        command = demo.index(f"$ rollback-watchdog report --config {config} {run}")
        title = demo.index(f"# Rollback report: lavalink, run #{run}")
        assert summary < command < title
    assert lines.index("## Verification results") > demo.index(
        "# Rollback report: lavalink, run #1"
    )
    # the demo waited for the fallback's first passing probe: both reports measure the outage
    assert "**Downtime:** not measured yet" not in demo.out
    assert demo.out.count("**Downtime:**") == 2

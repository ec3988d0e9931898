"""Benchmark: decision -> verified fallback on a real (sandbox) systemd, vs the manual procedure.

Two Lavalink simulators run as ``lavalink-rust.service`` and ``lavalink-java.service`` under a
systemd booted in a throwaway namespace (``watchdog_lab.sandbox``). Each round switches Rust ->
Java twice from the same starting state: once with ``rollback-watchdog rollback --yes`` and once
with the operators' manual procedure exactly as written (``systemctl stop/disable/enable/start``,
``sleep 15``, curl checks) as a shell script. The fallback takes ``--startup-delay`` seconds to
bind its port (Java takes 10-15 s; the default here is 3 s).

The watchdog's overhead is the run's duration (journal: run start -> finish) minus the fallback's
own start-up time (``StartUnit`` -> first valid ``/version``), per run. Prints one JSON object.

Run: ``make bench-rollback`` (root; the sandbox systemd needs it).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from watchdog_lab import lavalink, sandbox, stage

PYTHON = sys.executable
PASSWORD = stage.PASSWORD  # the layout and the simulators share it
PRIMARY, FALLBACK = "lavalink-rust.service", "lavalink-java.service"
MANUAL = f"""\
#!/bin/bash
# The operators' manual rollback (docs/architecture.md), phases 1-3, as written.
set -u
B=/run/wd/manual-backups/emergency-$(date +%Y%m%d-%H%M)
mkdir -p "$B"
cp -r /run/wd/opt/lavalink-rust/config "$B"/
cp /etc/systemd/system/lavalink-rust.service "$B"/
systemctl status lavalink-rust > /run/wd/rollback-state.txt
ps aux | grep lavalink-rust >> /run/wd/rollback-state.txt
curl -s -H "Authorization: {PASSWORD}" http://localhost:2333/v4/info \\
  >> /run/wd/rollback-state.txt 2>&1
systemctl stop lavalink-rust
systemctl disable lavalink-rust
java -version 2>/dev/null
ls -la /run/wd/opt/lavalink-java/Lavalink.jar > /dev/null
cp /run/wd/opt/lavalink-rust/config/application.yml /run/wd/opt/lavalink-java/ 2>/dev/null || true
systemctl enable lavalink-java
systemctl start lavalink-java
sleep 15
systemctl status lavalink-java > /dev/null
systemctl is-active lavalink-java
curl -sf -H "Authorization: {PASSWORD}" http://localhost:2333/version > /dev/null
curl -sf -H "Authorization: {PASSWORD}" http://localhost:2333/v4/info > /dev/null
curl -sf -H "Authorization: {PASSWORD}" http://localhost:2333/v4/stats > /dev/null
curl -sf -H "Authorization: {PASSWORD}" \\
  "http://localhost:2333/v4/loadtracks?identifier=ytsearch:test" > /dev/null
"""


def config_text(box: sandbox.Sandbox, host: Path, state: Path) -> str:
    inside = box.inside(host)
    return textwrap.dedent(f"""\
        mode: auto
        state_dir: {box.inside(state)}
        systemd: {{bus: '{box.bus_address}'}}
        targets:
          - name: lavalink
            primary:
              unit: {PRIMARY}
              job: lavalink-rust
              config_dir: {inside}/opt/lavalink-rust/config
            fallback:
              unit: {FALLBACK}
              job: lavalink-java
              config_dir: {inside}/opt/lavalink-java
              binary: {inside}/opt/lavalink-java/Lavalink.jar
            rules: [{Path(__file__).resolve().parent.parent / "rules" / "lavalink.yml"}]
            runbook:
              url: http://127.0.0.1:2333
              password_file: {inside}/password
        """)


def reset(box: sandbox.Sandbox, host: Path) -> None:
    box.systemctl("stop", FALLBACK)
    box.systemctl("disable", FALLBACK)
    box.systemctl("reset-failed")
    box.systemctl("enable", "--now", PRIMARY)
    (host / "opt" / "lavalink-java" / "application.yml").unlink(missing_ok=True)
    wait_for_version(box, 30.0)


def wait_for_version(box: sandbox.Sandbox, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        done = box.run(
            [
                "curl",
                "-sf",
                "-m",
                "1",
                "-H",
                f"Authorization: {PASSWORD}",
                "http://127.0.0.1:2333/version",
            ],
            timeout=5,
        )
        if done.returncode == 0:
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError("the service did not answer /version")


def run_facts(db_path: Path) -> dict[str, Any]:
    db = sqlite3.connect(db_path)
    db.row_factory = sqlite3.Row
    try:
        run = dict(db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone())
        steps = {
            r["name"]: dict(r)
            for r in db.execute("SELECT * FROM steps WHERE run_id = ?", (run["id"],))
        }
    finally:
        db.close()
    facts = json.loads(run["data"])
    finished = steps["finish"]["finished_at"]
    started_fallback = steps["start-fallback"]["started_at"]
    version_ok = steps["verify"]["started_at"] + facts["verification"]["version"]["seconds"]
    return {
        "status": run["status"],
        "run_seconds": finished - run["started_at"],
        "fallback_startup_seconds": version_ok - started_fallback,
        "steps": {name: round(s["finished_at"] - s["started_at"], 3) for name, s in steps.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--startup-delay", type=float, default=3.0)
    parser.add_argument("--manual-runs", type=int, default=3)
    args = parser.parse_args()
    reason = sandbox.unavailable_reason()
    if reason is not None:
        print(json.dumps({"skipped": reason}))
        return 2
    with tempfile.TemporaryDirectory(prefix="rollback-bench-") as temp:
        host = Path(temp)
        stage.lay_out(host)
        (host / "manual.sh").write_text(MANUAL)
        units = {
            PRIMARY: sandbox.service_unit(
                "Lavalink Rust", lavalink.command_line("rust", password=PASSWORD)
            ),
            FALLBACK: sandbox.service_unit(
                "Lavalink Java",
                lavalink.command_line(
                    "java", "--startup-delay", str(args.startup_delay), password=PASSWORD
                ),
            ),
        }
        watchdog_runs: list[dict[str, Any]] = []
        manual_runs: list[float] = []
        with sandbox.booted_systemd(host, units) as box:
            for index in range(args.runs):
                reset(box, host)
                state = host / f"state-{index}"
                config = host / f"config-{index}.yml"
                config.write_text(config_text(box, host, state))
                began = time.monotonic()
                done = box.run(
                    [
                        PYTHON,
                        "-m",
                        "watchdog",
                        "rollback",
                        "--config",
                        str(box.inside(config)),
                        "--reason",
                        "benchmark",
                        "--yes",
                    ],
                    timeout=180,
                )
                wall = time.monotonic() - began
                if done.returncode != 0:
                    print(done.stdout, done.stderr, file=sys.stderr)
                    return 1
                facts = run_facts(state / "journal.sqlite3")
                facts["cli_wall_seconds"] = wall
                facts["overhead_seconds"] = facts["run_seconds"] - facts["fallback_startup_seconds"]
                watchdog_runs.append(facts)
            for _ in range(args.manual_runs):
                reset(box, host)
                began = time.monotonic()
                done = box.run(["bash", str(box.inside(host / "manual.sh"))], timeout=120)
                manual_runs.append(time.monotonic() - began)
                if done.returncode != 0 or box.unit_state(FALLBACK) != "active":
                    print(done.stdout, done.stderr, file=sys.stderr)
                    return 1
    overheads = [r["overhead_seconds"] for r in watchdog_runs]
    runs = [r["run_seconds"] for r in watchdog_runs]
    walls = [r["cli_wall_seconds"] for r in watchdog_runs]
    manual = statistics.median(manual_runs)
    report = {
        "benchmark": "rollback on a sandbox systemd: watchdog runbook vs the manual procedure",
        "runs": args.runs,
        "fallback_startup_delay_seconds": args.startup_delay,
        "overhead_seconds": {
            "median": round(statistics.median(overheads), 3),
            "max": round(max(overheads), 3),
            "min": round(min(overheads), 3),
        },
        "watchdog_run_seconds": {
            "median": round(statistics.median(runs), 3),
            "max": round(max(runs), 3),
        },
        "watchdog_cli_wall_seconds": {
            "median": round(statistics.median(walls), 3),
            "max": round(max(walls), 3),
        },
        "fallback_startup_seconds": {
            "median": round(
                statistics.median(r["fallback_startup_seconds"] for r in watchdog_runs), 3
            )
        },
        "manual_script_seconds": {
            "median": round(manual, 3),
            "runs": [round(m, 3) for m in manual_runs],
        },
        "speedup_end_to_end": round(manual / statistics.median(walls), 2),
        "step_seconds_median": {
            name: round(statistics.median(r["steps"][name] for r in watchdog_runs), 3)
            for name in watchdog_runs[0]["steps"]
        },
        "targets": {
            "overhead_under_1s": statistics.median(overheads) < 1.0,
            "at_least_2x_faster": manual / statistics.median(walls) >= 2.0,
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The rollback runbook on a real systemd (PID 1 of a throwaway namespace), with two Lavalink
simulators as the Rust primary and the Java fallback: the switch, its failure modes, and a
SIGKILL of the watchdog inside every step followed by a restart that reconciles."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from watchdog_lab import lavalink, prometheus, sandbox, stage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        sandbox.unavailable_reason() is not None,
        reason=f"no sandbox systemd here: {sandbox.unavailable_reason()}",
    ),
]

PYTHON = sys.executable  # the venv's python; /work and /usr stay visible inside
PASSWORD = stage.PASSWORD  # the layout and the simulators share it
PRIMARY, FALLBACK = "lavalink-rust.service", "lavalink-java.service"
STEPS = [
    "preflight",
    "backup",
    "snapshot",
    "stop-primary",
    "carry-config",
    "start-fallback",
    "verify",
    "finish",
]


def unit(description: str, exec_start: str) -> str:
    return sandbox.service_unit(description, exec_start)


def simulator(flavour: str, *extra: str) -> str:
    return lavalink.command_line(flavour, *(" ".join(extra).split()), password=PASSWORD)


@dataclass
class World:
    box: sandbox.Sandbox
    host: Path

    def config(self, name: str, *, fallback_unit: str = FALLBACK, extra: str = "") -> Path:
        """A fresh config and state dir; returns the config's host path."""
        state = self.host / "cases" / name
        state.mkdir(parents=True, exist_ok=True)
        inside = self.box.inside(self.host)
        text = (
            textwrap.dedent(f"""\
            mode: auto
            interval: 1s
            state_dir: {self.box.inside(state)}/state
            systemd: {{bus: '{self.box.bus_address}'}}
            prometheus: {{url: 'http://127.0.0.1:1', timeout: 1s, retries: 1}}
            listen: {{port: 0}}
            targets:
              - name: lavalink
                primary:
                  unit: {PRIMARY}
                  job: lavalink-rust
                  config_dir: {inside}/opt/lavalink-rust/config
                fallback:
                  unit: {fallback_unit}
                  job: lavalink-java
                  config_dir: {inside}/opt/lavalink-java
                  binary: {inside}/opt/lavalink-java/Lavalink.jar
                rules: [{Path(__file__).resolve().parents[2] / "rules" / "lavalink.yml"}]
                runbook:
                  url: http://127.0.0.1:2333
                  password_file: {inside}/password
                  verify: {{timeout: 20s, cpu_sample: 300ms, max_cpu: 0.9}}
            """)
            + extra
        )
        path = state / "config.yml"
        path.write_text(text)
        return path

    def journal(self, config: Path) -> sqlite3.Connection:
        db = sqlite3.connect(config.parent / "state" / "journal.sqlite3", timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def cli(self, *args: str, timeout: float = 120) -> Any:
        return self.box.run([PYTHON, "-m", "watchdog", *args], timeout=timeout)

    def reset(self, *, fallback_start: str | None = None) -> None:
        """Rust active and enabled, Java stopped and disabled, Java without its config."""
        self.box.systemctl("stop", FALLBACK)
        self.box.systemctl("disable", FALLBACK)
        if fallback_start is not None:
            self.box.file_inside(f"/etc/systemd/system/{FALLBACK}").write_text(
                unit("Lavalink Java (fallback)", fallback_start)
            )
            self.box.systemctl("daemon-reload")
        self.box.systemctl("reset-failed")
        self.box.systemctl("enable", "--now", PRIMARY)
        carried = self.host / "opt" / "lavalink-java" / "application.yml"
        carried.unlink(missing_ok=True)
        deadline = time.monotonic() + 20
        while self.box.unit_state(PRIMARY) != "active" and time.monotonic() < deadline:
            time.sleep(0.1)

    def states(self) -> tuple[str, str]:
        return self.box.unit_state(PRIMARY), self.box.unit_state(FALLBACK)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    host = tmp_path_factory.mktemp("systemd")
    stage.lay_out(host)
    units = {
        PRIMARY: unit("Lavalink Rust (primary)", simulator("rust")),
        FALLBACK: unit("Lavalink Java (fallback)", simulator("java", "--startup-delay 1")),
    }
    with sandbox.booted_systemd(host, units) as box:
        yield World(box, host)


def run_rows(world: World, config: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    db = world.journal(config)
    try:
        run = dict(db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone())
        steps = [
            dict(r)
            for r in db.execute(
                "SELECT * FROM steps WHERE run_id = ? ORDER BY seq, id", (run["id"],)
            )
        ]
    finally:
        db.close()
    return run, steps


def daemon_until_the_run_ends(
    world: World, config: Path, *, within: float, linger: float = 0.0
) -> str:
    """Run the daemon inside the sandbox until the journal's last run has ended (or `within`
    seconds pass), `linger` seconds more, then SIGTERM it; its log's tail, and where it was
    blocked in the kernel, for failure messages."""
    log_path = config.parent / "daemon.log"
    journal_file = config.parent / "state" / "journal.sqlite3"
    with log_path.open("w") as log_file:
        daemon = world.box.popen(
            [PYTHON, "-m", "watchdog", "run", "--config", str(world.box.inside(config))],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        daemon_pid = world.box.program_pid(daemon)
        try:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                if journal_file.exists():
                    try:
                        if run_rows(world, config)[0]["status"] != "running":
                            break
                    except (TypeError, sqlite3.OperationalError):
                        pass  # no run yet, or the schema is still being created
                time.sleep(0.2)
            time.sleep(linger)
        finally:
            where = blocked_at(daemon_pid)  # if it hung: where, for the failure message
            os.kill(daemon_pid, signal.SIGTERM)
            daemon.wait(timeout=30)
    return log_path.read_text()[-3000:] + where


def blocked_at(pid: int) -> str:
    """Where a process and its threads wait in the kernel (wchan, syscall)."""
    lines = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            wchan = (task / "wchan").read_text()
            syscall = (task / "syscall").read_text().split()[0]
        except OSError:
            continue
        lines.append(f"thread {task.name}: wchan {wchan} syscall {syscall}")
    return "\n" + "\n".join(lines)


def armed(world: World, config: Path) -> bool:
    db = world.journal(config)
    try:
        row = db.execute("SELECT armed FROM targets WHERE name = 'lavalink'").fetchone()
    finally:
        db.close()
    return row is None or bool(row["armed"])


def test_happy_path_switches_and_verifies(world: World) -> None:
    world.reset()
    config = world.config("happy")
    done = world.cli(
        "rollback", "--config", str(world.box.inside(config)), "--reason", "drill", "--yes"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for step in STEPS:
        assert f"{step}" in done.stdout
    assert "SUCCEEDED" in done.stdout
    assert world.states() == ("inactive", "active")
    assert world.box.systemctl("is-enabled", PRIMARY).stdout.strip() == "disabled"
    assert world.box.systemctl("is-enabled", FALLBACK).stdout.strip() == "enabled"
    run, steps = run_rows(world, config)
    assert run["status"] == "succeeded" and run["trigger"] == "manual"
    assert [s["name"] for s in steps] == STEPS
    assert {s["status"] for s in steps} == {"ok"}
    assert all(s["finished_at"] >= s["started_at"] for s in steps)
    facts = json.loads(run["data"])
    backup = Path(facts["backup"].replace(str(sandbox.INSIDE_DIR), str(world.host), 1))
    assert (backup / "config" / "application.yml").is_file()
    assert backup.name.startswith("emergency-")
    verification = facts["verification"]
    assert verification["version"]["ok"] and verification["websocket"]["ok"]
    assert verification["port"]["ok"] and "bound by PID" in verification["port"]["detail"]
    assert verification["loadtracks:youtube"]["ok"] and verification["loadtracks:soundcloud"]["ok"]
    assert (world.host / "opt" / "lavalink-java" / "application.yml").is_file()  # carried
    assert not armed(world, config)


def test_rollback_json_is_the_run_s_outcome_and_steps_only(world: World) -> None:
    """``--json`` for scripts: stdout is one JSON document (no progress lines), the run's
    outcome and its journaled steps with RFC 3339 times; the verify step's ticker stays out."""
    world.reset()
    config = world.config("json")
    done = world.cli(
        "rollback",
        "--config",
        str(world.box.inside(config)),
        "--reason",
        "drill",
        "--yes",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)  # nothing but the document
    assert (document["via"], document["target"], document["status"]) == (
        "local",
        "lavalink",
        "succeeded",
    )
    run, steps = run_rows(world, config)
    assert document["run"] == run["id"] and document["outcome"] == run["outcome"]
    assert [s["name"] for s in document["steps"]] == [s["name"] for s in steps] == STEPS
    assert all(s["started_at"].endswith("Z") for s in document["steps"])
    assert world.states() == ("inactive", "active")


@contextlib.contextmanager
def flag_file_units(world: World) -> Iterator[Path]:
    """Both units check a flag file (packaging/examples/ as drop-ins) and are both enabled, as
    mode (b) installs them; yields the flag's inside path. Everything is undone afterwards."""
    flags = world.host / "flags"
    flags.mkdir(exist_ok=True)
    flag = world.box.inside(flags) / "active-fallback"
    drop_ins = {PRIMARY: f"ConditionPathExists=!{flag}", FALLBACK: f"ConditionPathExists={flag}"}
    for name, condition in drop_ins.items():
        folder = world.box.file_inside(f"/etc/systemd/system/{name}.d")
        folder.mkdir(exist_ok=True)
        (folder / "flag.conf").write_text(f"[Unit]\n{condition}\n")
    world.box.systemctl("daemon-reload")
    world.box.systemctl("enable", FALLBACK)  # both enabled once, at install
    try:
        yield flag
    finally:
        for name in drop_ins:
            (world.box.file_inside(f"/etc/systemd/system/{name}.d") / "flag.conf").unlink()
        (flags / "active-fallback").unlink(missing_ok=True)
        world.box.systemctl("daemon-reload")


def flag_file_config(world: World, name: str, flag: Path) -> Path:
    return world.config(name, extra=f"      persistence: flag-file\n      flag_file: {flag}\n")


def test_flag_file_persistence_keeps_both_units_enabled_and_decides_the_boot(
    world: World,
) -> None:
    """The unprivileged mode's switch: no enable/disable (polkit grants only start/stop/
    restart), a flag file both units check with ConditionPathExists= decides which one a boot
    starts. Here as root on the sandbox systemd; the polkit rule is tested on its own."""
    world.reset()
    with flag_file_units(world) as flag:
        config = flag_file_config(world, "flag-file", flag)
        done = world.cli(
            "rollback", "--config", str(world.box.inside(config)), "--reason", "drill", "--yes"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert world.states() == ("inactive", "active")
        assert (world.host / "flags" / "active-fallback").is_file()
        enabled = [world.box.systemctl("is-enabled", u).stdout.strip() for u in (PRIMARY, FALLBACK)]
        assert enabled == ["enabled", "enabled"]  # nothing but start/stop was asked of systemd
        _, steps = run_rows(world, config)
        start = next(s for s in steps if s["name"] == "start-fallback")
        assert "flag" in start["detail"] and "written" in start["detail"]
        # what a boot would do: the primary's condition fails now, the fallback's holds
        world.box.systemctl("stop", FALLBACK)
        world.box.systemctl("start", PRIMARY)
        assert world.box.unit_state(PRIMARY) == "inactive"
        again = world.cli(
            "rollback", "--config", str(world.box.inside(config)), "--reason", "x", "--dry-run"
        )
        assert again.returncode == 1 and "already there" in again.stdout  # never switch twice


def test_a_flag_file_run_killed_after_the_switch_resumes_forward(world: World) -> None:
    """Killed in verify, after the flag was written and the fallback started: the restart
    resumes the run forward. Its own flag must not fail the resumed preflight (which would
    restore the primary: a switch back)."""
    world.reset()
    with flag_file_units(world) as flag:
        config = paused(flag_file_config(world, "flag-resume", flag))
        start_and_kill_in(world, config, "verify")
        assert world.states() == ("inactive", "active")
        log = daemon_until_the_run_ends(world, config, within=90)
        run, steps = run_rows(world, config)
        assert run["status"] == "succeeded", (run, steps, log)
        assert world.states() == ("inactive", "active")
        assert (world.host / "flags" / "active-fallback").is_file()
        assert not any(s["name"] == "restore-primary" for s in steps), steps


def test_a_fallback_that_cannot_start_brings_the_primary_back(world: World) -> None:
    world.reset(fallback_start=simulator("java", "--fail-at-start"))
    try:
        config = world.config("fallback-fails")
        done = world.cli(
            "rollback", "--config", str(world.box.inside(config)), "--reason", "drill", "--yes"
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert world.states()[0] == "active"  # a degraded service beats none
        assert world.states()[1] in ("inactive", "failed")
        run, steps = run_rows(world, config)
        assert run["status"] == "restored"
        names = [s["name"] for s in steps]
        assert names[-1] == "restore-primary" and steps[-1]["status"] == "ok"
        assert any(
            s["status"] == "failed" for s in steps if s["name"] in ("start-fallback", "verify")
        )
        assert not armed(world, config)  # never switches again by itself
    finally:
        world.reset(fallback_start=simulator("java", "--startup-delay 1"))


def test_a_failed_preflight_stops_nothing(world: World) -> None:
    world.reset()
    jar = world.host / "opt" / "lavalink-java" / "Lavalink.jar"
    jar.rename(jar.with_suffix(".gone"))
    try:
        config = world.config("preflight")
        done = world.cli(
            "rollback", "--config", str(world.box.inside(config)), "--reason", "drill", "--yes"
        )
    finally:
        jar.with_suffix(".gone").rename(jar)
    assert done.returncode == 1
    assert "Lavalink.jar does not exist" in done.stdout
    assert world.states() == ("active", "inactive")
    run, steps = run_rows(world, config)
    assert run["status"] == "aborted"
    assert [s["name"] for s in steps] == ["preflight"]
    assert armed(world, config)  # nothing was touched


def test_a_unit_that_does_not_exist_is_a_clear_error(world: World) -> None:
    world.reset()
    config = world.config("missing", fallback_unit="lavalink-jvm.service")
    dry = world.cli(
        "rollback", "--config", str(world.box.inside(config)), "--reason", "x", "--dry-run"
    )
    assert dry.returncode == 1
    assert "1. preflight" in dry.stdout and "8. finish" in dry.stdout
    assert (
        "fallback unit lavalink-jvm.service is not-found (is its unit file installed?)"
        in dry.stdout
    )
    assert world.states() == ("active", "inactive")
    assert not (config.parent / "state").exists()  # a dry run writes nothing


def test_dry_run_passes_preflight_and_changes_nothing(world: World) -> None:
    world.reset()
    config = world.config("dry")
    dry = world.cli(
        "rollback", "--config", str(world.box.inside(config)), "--reason", "x", "--dry-run"
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "preflight: OK" in dry.stdout and "Java 17" in dry.stdout
    assert world.states() == ("active", "inactive")


EFFECTS = {  # once a step's effect is visible, a kill lands after its systemd call
    "stop-primary": ("inactive", None),
    "start-fallback": (None, "active"),
}
KILLS = [(step, "before") for step in STEPS] + [(step, "after") for step in EFFECTS]


@pytest.mark.parametrize(("step", "phase"), KILLS)
def test_sigkill_in_any_step_then_restart_leaves_exactly_one_unit_active(
    world: World, step: str, phase: str
) -> None:
    world.reset()
    config = paused(world.config(f"kill-{step}-{phase}"))

    def effect_visible() -> bool:
        if phase == "before":
            return True
        primary_wanted, fallback_wanted = EFFECTS[step]
        primary_now, fallback_now = world.states()
        return primary_wanted in (None, primary_now) and fallback_wanted in (None, fallback_now)

    start_and_kill_in(world, config, step, when=effect_visible)
    # restart: the daemon reconciles the interrupted run before anything else
    log = daemon_until_the_run_ends(world, config, within=90)
    run, steps = run_rows(world, config)
    primary, fallback = world.states()
    assert sorted([primary, fallback]).count("active") == 1, (primary, fallback, steps)
    interrupted = [s for s in steps if s["detail"].startswith("interrupted")]
    assert [s["name"] for s in interrupted] == [step], (steps, log)  # the journal tells the truth
    assert run["status"] == "succeeded", (run, steps)
    assert (primary, fallback) == ("inactive", "active")
    assert "reconciled" in json.loads(run["data"])
    # resumed: what was done is skipped (a stop or start is never repeated blindly)
    resumed = steps[steps.index(interrupted[0]) + 1 :]
    assert all(s["status"] in ("ok", "skipped") for s in resumed), resumed
    done_before = {s["name"] for s in steps[: steps.index(interrupted[0])] if s["status"] == "ok"}
    for s in resumed:
        if s["name"] in done_before & {"stop-primary", "start-fallback"}:
            assert s["status"] == "skipped", s
    assert not armed(world, config)


def test_status_shows_the_run_and_its_steps(world: World) -> None:
    world.reset()
    config = world.config("status")
    done = world.cli(
        "rollback", "--config", str(world.box.inside(config)), "--reason", "drill", "--yes"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    status = world.cli("status", "--config", str(world.box.inside(config)))
    assert status.returncode == 3, status.stderr  # a rollback by hand: no daemon evaluates
    assert "target lavalink: DISARMED" in status.stdout
    assert re.search(r"run #1 SUCCEEDED \(manual by \S+, ", status.stdout)
    for step in STEPS:
        assert re.search(rf"    {step}\s+ok ", status.stdout), status.stdout


def test_a_second_trigger_joins_the_run_in_flight(world: World) -> None:
    world.reset()
    config = world.config("join")
    config.write_text(config.read_text().replace("verify: {", "step_pause: 1s\n      verify: {"))
    # the second trigger comes while the first run is journaled at its first step: at least
    # seven more paused steps (14 s) to go, however slowly a loaded machine starts Python
    first = rollback_until(world, config, "preflight")
    second = world.cli(*ROLLBACK_ARGS, "--config", str(world.box.inside(config)))
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already in flight: following it" in second.stdout
    assert "SUCCEEDED" in second.stdout
    db = world.journal(config)
    try:
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    finally:
        db.close()
    assert world.states() == ("inactive", "active")


def always_firing(world: World, server_url: str, name: str) -> Path:
    """A config in auto mode whose one rule always fires (a crash loop, for the drill)."""
    rules = world.host / "always.yml"
    rules.write_text(
        textwrap.dedent("""\
        groups:
          - name: drill
            rules:
              - alert: DrillCrashLoop
                expr: vector(3) >= 3
                labels: {severity: critical, rollback_category: instability}
                annotations: {summary: drill, threshold: ">= 3 restarts in 15m"}
        """)
    )
    config = world.config(name)
    text = config.read_text()
    text = text.replace(
        "prometheus: {url: 'http://127.0.0.1:1', timeout: 1s, retries: 1}",
        f"prometheus: {{url: '{server_url}', timeout: 2s, retries: 1}}",
    )
    text = text.replace(
        f"rules: [{Path(__file__).resolve().parents[2] / 'rules' / 'lavalink.yml'}]",
        f"rules: [{world.box.inside(rules)}]\n    presence_query: vector(1)",
    )
    config.write_text(text)
    return config


def test_auto_mode_rolls_back_on_a_rollback_verdict(world: World, tmp_path: Path) -> None:
    world.reset()
    with prometheus.running_prometheus(tmp_path / "prometheus") as server:
        config = always_firing(world, server.url, "auto")
        # linger: more ticks after the run, and the disarmed target must not act again
        log = daemon_until_the_run_ends(world, config, within=60, linger=2.5)
    run, _ = run_rows(world, config)
    assert run["status"] == "succeeded", log
    assert run["trigger"] == "auto" and run["initiated_by"] == "rollback-watchdog"
    assert "DrillCrashLoop firing" in run["reason"]
    assert world.states() == ("inactive", "active")
    db = world.journal(config)
    try:
        decisions = db.execute("SELECT action, outcome FROM decisions").fetchall()
        runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        db.close()
    assert [(d["action"], d["outcome"]) for d in decisions] == [("rollback", "rollback started")]
    assert runs == 1
    assert not armed(world, config)
    after = json.loads(run["data"])["after"]  # the watch after the rollback began at once
    assert after["checks"] >= 1 and after["last_problems"] == [], after
    written = (config.parent / "state" / "reports" / f"run-{run['id']}.md").read_text()
    assert written.startswith(f"# Rollback report: lavalink, run #{run['id']}")
    assert "rollback-watchdog (auto)" in written and "DrillCrashLoop" in written


@pytest.mark.parametrize("step", ["backup", "stop-primary"])
def test_sigterm_mid_run_pauses_at_a_safe_point_and_the_restart_finishes(
    world: World, tmp_path: Path, step: str
) -> None:
    """SIGTERM finishes the current step -- the whole stop/start pair once the primary is being
    stopped -- journals it, exits, and leaves the run for the next start to resume."""
    world.reset()
    with prometheus.running_prometheus(tmp_path / "prometheus") as server:
        config = paused(always_firing(world, server.url, f"term-{step}"))
        log_path = config.parent / "daemon.log"
        with log_path.open("w") as log_file:
            daemon = world.box.popen(
                [PYTHON, "-m", "watchdog", "run", "--config", str(world.box.inside(config))],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
            deadline = time.monotonic() + 60
            while not step_running(world, config, step):
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.05)
            os.kill(world.box.program_pid(daemon), signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        run, steps = run_rows(world, config)
        assert run["status"] == "running", steps  # left open for the next start
        done = [s["name"] for s in steps if s["status"] == "ok"]
        assert all(s["status"] != "running" for s in steps), steps  # nothing left half-journaled
        if step == "backup":
            assert done == ["preflight", "backup"] and world.states() == ("active", "inactive")
        else:  # never halfway through the switch: the fallback was started before stopping
            assert done[-3:] == ["stop-primary", "carry-config", "start-fallback"], steps
            assert world.states() == ("inactive", "active")
        assert "rollback paused for shutdown" in log_path.read_text()
        log = daemon_until_the_run_ends(world, config, within=90)
    run, steps = run_rows(world, config)
    assert run["status"] == "succeeded", log
    assert world.states() == ("inactive", "active")
    assert [s["name"] for s in steps].count("stop-primary") == 1 or any(
        s["name"] == "stop-primary" and s["status"] == "skipped" for s in steps
    )


def start_and_kill_in(
    world: World, config: Path, step: str, *, when: Callable[[], bool] = lambda: True
) -> None:
    """Start `rollback --yes` and SIGKILL it while `step` is journaled as running (and `when`
    holds, e.g. the step's effect is visible)."""
    rollback = rollback_until(world, config, step, when=when)
    os.kill(world.box.program_pid(rollback), signal.SIGKILL)
    rollback.communicate(timeout=30)


ROLLBACK_ARGS = ("rollback", "--reason", "drill", "--yes")


def rollback_until(
    world: World, config: Path, step: str, *, when: Callable[[], bool] = lambda: True
) -> subprocess.Popen[str]:
    """`rollback --yes` started in the background, returned once `step` is journaled running
    and `when` holds (its output is piped: read it with `communicate`)."""
    process = world.box.popen(
        [PYTHON, "-m", "watchdog", *ROLLBACK_ARGS, "--config", str(world.box.inside(config))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (step_running(world, config, step) and when()):
        if time.monotonic() > deadline:
            process.kill()
            process.communicate(timeout=30)
            raise AssertionError(f"never saw {step} running")
        time.sleep(0.05)
    return process


def step_running(world: World, config: Path, step: str) -> bool:
    if not (config.parent / "state" / "journal.sqlite3").exists():
        return False
    db = world.journal(config)
    try:
        row = db.execute(
            "SELECT status FROM steps WHERE name = ? ORDER BY id DESC LIMIT 1", (step,)
        ).fetchone()
    except sqlite3.OperationalError:
        return False  # the schema is still being created
    finally:
        db.close()
    return row is not None and row["status"] == "running"


def paused(config: Path) -> Path:
    config.write_text(config.read_text().replace("verify: {", "step_pause: 600ms\n      verify: {"))
    return config


def test_a_dbus_connection_lost_mid_run_leaves_the_run_to_be_resumed(world: World) -> None:
    """systemd re-executes while the rollback waits in stop-primary: every D-Bus connection to
    it drops. The run is not closed as failed (what systemd did is unknown) and no restore is
    tried blind: the step is journaled as interrupted and the run stays open, and the next
    trigger reconciles and resumes it."""
    world.reset()
    config = paused(world.config("dbus-drop"))
    first = rollback_until(world, config, "stop-primary")
    world.box.systemctl("daemon-reexec")  # drops the client's connection mid-step
    out, _ = first.communicate(timeout=180)
    assert first.returncode == 1, out
    assert "systemd connection lost" in out, out
    run, steps = run_rows(world, config)
    assert run["status"] == "running", (run, steps)  # left for the reconcile, not failed
    lost = [s for s in steps if s["detail"].startswith("interrupted: the systemd connection")]
    assert [s["name"] for s in lost] == ["stop-primary"], steps
    assert not any(s["name"] == "restore-primary" for s in steps)
    # the next trigger reconciles first: the run resumes
    again = world.cli(*ROLLBACK_ARGS, "--config", str(world.box.inside(config)))
    assert again.returncode == 0, again.stdout + again.stderr
    run, steps = run_rows(world, config)
    assert run["id"] == 1 and run["status"] == "succeeded", (run, steps)
    assert world.states() == ("inactive", "active")


def test_killed_while_restoring_the_restart_finishes_the_restore(world: World) -> None:
    world.reset(fallback_start=simulator("java", "--fail-at-start"))
    try:
        config = paused(world.config("kill-restore"))
        config.write_text(config.read_text().replace("timeout: 20s", "timeout: 3s"))
        start_and_kill_in(world, config, "restore-primary")
        again = world.cli(
            "rollback", "--config", str(world.box.inside(config)), "--reason", "x", "--yes"
        )
        assert "run #1" in again.stdout, again.stdout + again.stderr
        run, steps = run_rows(world, config)
        assert run["id"] == 1 and run["status"] == "restored", (run, steps)
        assert world.states()[0] == "active"  # the primary is back, not a second switch
        assert world.states()[1] in ("inactive", "failed")
        names = [s["name"] for s in steps]
        assert "start-fallback" in names and names.count("start-fallback") == 1  # never retried
        assert not armed(world, config)
    finally:
        world.reset(fallback_start=simulator("java", "--startup-delay 1"))


def test_an_orphaned_run_is_finished_by_the_next_rollback(world: World) -> None:
    world.reset()
    config = paused(world.config("orphan"))
    start_and_kill_in(world, config, "start-fallback")
    done = world.cli(
        "rollback", "--config", str(world.box.inside(config)), "--reason", "x", "--yes"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run #1: SUCCEEDED" in done.stdout
    db = world.journal(config)
    try:
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    finally:
        db.close()
    assert world.states() == ("inactive", "active")

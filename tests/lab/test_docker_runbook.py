"""The runbook's Docker method with the same guarantees as the systemd one, on a real, private
Docker Engine: preflight names what is missing, the backup keeps the bind-mounted config and the
inspect records, a fallback that fails brings the primary back, a SIGKILL inside any step and an
engine restarted mid-run are resumed by the next start (never two containers running, never a
stop or start repeated blindly), and the daemon rolls a crash-looping container back on its own,
with no Prometheus at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from watchdog.executor import runbook
from watchdog_lab import dockerd

from .docker_world import (
    answers,
    cli,
    create,
    document,
    free_port,
    inspect,
    popen,
    runs,
    start,
    state,
    step_running,
    until,
    write_config,
)

pytestmark = pytest.mark.skipif(
    dockerd.unavailable_reason() is not None,
    reason=f"no private Docker Engine here: {dockerd.unavailable_reason()}",
)

STEPS = tuple(step.name for step in runbook.STEPS)
PAUSED = "      step_pause: 400ms\n"
_names = count(1)


@pytest.fixture(scope="module")
def engine() -> Iterator[dockerd.Engine]:
    with dockerd.running_engine() as running:
        dockerd.import_base(running)
        yield running


def pair(
    engine: dockerd.Engine,
    *,
    fallback_args: tuple[str, ...] = (),
    primary_args: tuple[str, ...] = (),
    primary_policy: str | None = None,
) -> tuple[str, str, int]:
    """A running Rust primary and a created Java fallback (by Compose labels) on one port."""
    n, port = next(_names), free_port()
    primary, project = f"rust-{n}", f"p{n}"
    create(engine, primary, port, "rust", args=primary_args, policy=primary_policy)
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": "java"}
    create(engine, f"{project}-java-1", port, "java", labels=labels, args=fallback_args)
    start(engine, primary)
    return primary, f"compose:{project}/java", port


def fallback_name(compose: str) -> str:
    project = compose.removeprefix("compose:").partition("/")[0]
    return f"{project}-java-1"


def rollback(config: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return cli("rollback", "--config", str(config), "--reason", "drill", "--local", "--yes", *more)


def test_preflight_names_a_missing_fallback_and_stops_nothing(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    primary, _, port = pair(engine)
    config = write_config(tmp_path, engine, port, primary, "compose:nobody/java")
    done = rollback(config, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    outcome = document(done)
    assert outcome["status"] == "aborted", outcome
    assert "compose:nobody/java: no such container (create it once" in outcome["outcome"]
    assert state(engine, primary) == (True, "unless-stopped")  # nothing was stopped


def test_preflight_names_a_fallback_whose_image_is_gone(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    """The fallback container exists but its image was removed: it could not start, so the
    primary is never stopped."""
    image = f"rollback-watchdog-lab/gone:{next(_names)}"
    dockerd.import_base(engine, image)
    n, port = next(_names), free_port()
    create(engine, f"rust-{n}", port, "rust")
    start(engine, f"rust-{n}")
    create(engine, f"java-{n}", port, "java", image=image)
    with engine.client() as api:
        removed = api.delete(f"/images/{image}", params={"force": "true"})
        assert removed.status_code == 200, removed.text
    config = write_config(tmp_path, engine, port, f"rust-{n}", f"java-{n}")
    done = rollback(config, "--json")
    outcome = document(done)
    assert outcome["status"] == "aborted", outcome
    assert f"java-{n}: its image {image} is not in the engine" in outcome["outcome"], outcome
    assert state(engine, f"rust-{n}") == (True, "unless-stopped")


def test_a_fallback_created_with_rm_is_refused_before_anything_stops(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    """``--rm``: a stop deletes the container, so a restore could never start it again."""
    n, port = next(_names), free_port()
    create(engine, f"rust-{n}", port, "rust")
    start(engine, f"rust-{n}")
    create(engine, f"java-{n}", port, "java", auto_remove=True)
    config = write_config(tmp_path, engine, port, f"rust-{n}", f"java-{n}")
    outcome = document(rollback(config, "--json"))
    assert outcome["status"] == "aborted", outcome
    assert f"java-{n} runs with --rm (AutoRemove)" in outcome["outcome"], outcome
    assert state(engine, f"rust-{n}") == (True, "unless-stopped")


def test_the_backup_keeps_the_bind_mounted_config_and_both_inspect_records(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    settings = tmp_path / "application.yml"
    settings.write_text("lavalink: {server: {password: youshallnotpass}}\n")
    data = tmp_path / "tracks.db"  # a bind-mounted data file: never copied whole
    with data.open("wb") as big:
        big.truncate(17 * 1024**2)
    n, port = next(_names), free_port()
    binds = (f"{settings}:/opt/Lavalink/application.yml:ro", f"{data}:/opt/Lavalink/tracks.db")
    create(engine, f"rust-{n}", port, "rust", binds=binds)
    start(engine, f"rust-{n}")
    create(engine, f"java-{n}", port, "java")
    config = write_config(tmp_path, engine, port, f"rust-{n}", f"java-{n}")
    done = rollback(config, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    ((run, steps),) = runs(config)
    folder = Path(json.loads(run["data"])["backup"])
    kept = folder / "files" / settings.relative_to("/")  # at its full path: no name clashes
    assert kept.read_text() == settings.read_text()
    assert not (folder / "files" / data.relative_to("/")).exists()
    backed_up = next(s for s in steps if s["name"] == "backup")["detail"]
    assert f"{data} not copied (not a regular file under 16 MiB)" in backed_up, backed_up
    for name in (f"rust-{n}", f"java-{n}"):
        path = folder / f"{name}.inspect.json"
        record = json.loads(path.read_text())
        assert record["Name"] == f"/{name}", record["Name"]
        assert path.stat().st_mode & 0o777 == 0o600  # its environment may hold secrets
    assert json.loads((folder / f"rust-{n}.inspect.json").read_text())["State"]["Running"]


def test_a_fallback_that_fails_brings_the_primary_back(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    """The Java container exits at once: verify fails, and the restore stops it and starts
    the Rust one again, with exactly the restart policy it had (not the fallback's default)."""
    primary, fallback, port = pair(
        engine, fallback_args=("--fail-at-start",), primary_policy="on-failure:5"
    )
    config = write_config(tmp_path, engine, port, primary, fallback, verify="{timeout: 3s}")
    done = rollback(config, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    outcome = document(done)
    assert outcome["status"] == "restored", outcome
    names = [step["name"] for step in outcome["steps"]]
    assert names[-1] == "restore-primary" and names.count("start-fallback") == 1, names
    assert state(engine, primary)[0]  # back
    restart = inspect(engine, primary)["HostConfig"]["RestartPolicy"]
    assert restart == {"Name": "on-failure", "MaximumRetryCount": 5}, restart  # as it was
    assert state(engine, fallback_name(fallback)) == (False, "no")


EFFECTS = {  # once a step's effect is visible in Docker, a kill lands after its call
    "stop-primary": (False, None),
    "start-fallback": (None, True),
}
KILLS = [(step, "before") for step in STEPS] + [(step, "after") for step in EFFECTS]


@pytest.mark.parametrize(("step", "phase"), KILLS)
def test_sigkill_in_any_step_then_the_next_start_leaves_exactly_one_container_running(
    engine: dockerd.Engine, tmp_path: Path, step: str, phase: str
) -> None:
    primary, fallback, port = pair(engine)
    java = fallback_name(fallback)
    config = write_config(tmp_path, engine, port, primary, fallback, runbook=PAUSED)

    def reached() -> bool:
        if not step_running(config, step):
            return False
        if phase == "before":
            return True
        primary_wanted, fallback_wanted = EFFECTS[step]
        now = (state(engine, primary)[0], state(engine, java)[0])
        return primary_wanted in (None, now[0]) and fallback_wanted in (None, now[1])

    first = popen("rollback", "--config", str(config), "--reason", "drill", "--local", "--yes")
    try:
        until(reached, 60, f"{step} running ({phase} its effect)")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
    again = rollback(config)  # the next start reconciles the run a dead process left
    assert again.returncode == 0, again.stdout + again.stderr
    ((run, steps),) = runs(config)  # resumed: still run #1, never a second run
    assert run["status"] == "succeeded", (run, steps)
    interrupted = [s for s in steps if s["detail"].startswith("interrupted")]
    assert [s["name"] for s in interrupted] == [step], steps
    assert (state(engine, primary), state(engine, java)) == (
        (False, "no"),
        (True, "unless-stopped"),
    )
    resumed = steps[steps.index(interrupted[0]) + 1 :]
    assert all(s["status"] in ("ok", "skipped") for s in resumed), resumed
    done_before = {s["name"] for s in steps[: steps.index(interrupted[0])] if s["status"] == "ok"}
    for s in resumed:  # what was done is never done again
        if s["name"] in done_before & {"stop-primary", "start-fallback"}:
            assert s["status"] == "skipped", s
    assert asyncio_answers(port)


def test_an_engine_restarted_mid_run_leaves_the_run_to_be_resumed(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    """dockerd stops while the run waits in stop-primary (a package upgrade): the call finds
    no engine, so what Docker did is unknown. The step is journaled interrupted, the run stays
    open (no restore tried blind), and once the engine is back -- the primary with it, by its
    restart policy -- the next start resumes it and finishes the switch."""
    primary, fallback, port = pair(engine)
    java = fallback_name(fallback)
    config = write_config(
        tmp_path, engine, port, primary, fallback, runbook="      step_pause: 3s\n"
    )
    first = popen("rollback", "--config", str(config), "--reason", "drill", "--local", "--yes")
    try:
        until(lambda: step_running(config, "stop-primary"), 60, "stop-primary running")
        dockerd.stop(engine)  # within the step's pause, before its call
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=30)
        dockerd.restart(engine)  # already stopped: started again on the same folders
    assert first.returncode == 1, out
    assert "Docker connection lost" in out, out
    ((run, steps),) = runs(config)
    assert run["status"] == "running", (run, steps)  # left for the reconcile, not failed
    lost = [s for s in steps if s["detail"].startswith("interrupted: the Docker connection")]
    assert [s["name"] for s in lost] == ["stop-primary"], steps
    assert not any(s["name"] == "restore-primary" for s in steps)
    until(lambda: state(engine, primary)[0], 30, "the primary back by its restart policy")
    again = rollback(config)
    assert again.returncode == 0, again.stdout + again.stderr
    ((run, steps),) = runs(config)
    assert run["status"] == "succeeded", (run, steps)
    assert (state(engine, primary), state(engine, java)) == (
        (False, "no"),
        (True, "unless-stopped"),
    )


def test_the_daemon_rolls_a_crash_looping_container_back_without_prometheus(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    """The primary exits 1 a second after every start and Docker restarts it (``always``):
    its RestartCount climbs and each death is on the engine's event stream. The daemon, in
    auto mode with Prometheus switched off, sees the crash loop from the engine alone and
    rolls back to the fallback, verified."""
    n, port = next(_names), free_port()
    primary, java = f"loop-rust-{n}", f"loop-java-{n}"
    create(
        engine,
        primary,
        port,
        "rust",
        args=("--exit-after", "1", "--exit-code", "1"),
        policy="always",
    )
    create(engine, java, port, "java")
    config = write_config(
        tmp_path,
        engine,
        port,
        primary,
        java,
        top=(
            "mode: auto\ninterval: 1s\nprometheus: {enabled: false}\nlisten: {port: 0}\n"
            "policy: {warmup: 0s}\n"
        ),
        target="    watch: {interval: 30s, crash_loop_restarts: 3, crash_loop_window: 5m}\n",
    )
    daemon = popen("run", "--config", str(config), "--log-format", "json")
    try:
        time.sleep(1.0)  # the daemon reads the units once at start, before the loop begins
        start(engine, primary)
        until(
            lambda: bool(runs(config)) and runs(config)[-1][0]["status"] != "running",
            120,
            "the run's end",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            log, _ = daemon.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            log, _ = daemon.communicate(timeout=30)
    ((run, steps),) = runs(config)
    assert run["status"] == "succeeded", (run, steps, log[-4000:])
    assert run["trigger"] == "auto", run
    assert "UnitCrashLoop" in run["reason"], run["reason"]
    # the watch reads every 30 s: only the engine's events can have seen the loop this soon
    assert "Docker event" in log, log[-4000:]
    assert "crash loop seen on Docker" in log, log[-4000:]
    assert state(engine, primary) == (False, "no")
    assert state(engine, java) == (True, "unless-stopped")


def asyncio_answers(port: int) -> bool:
    import asyncio

    return asyncio.run(answers(port))


def test_a_dry_run_on_containers_checks_and_changes_nothing(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    primary, fallback, port = pair(engine)
    config = write_config(tmp_path, engine, port, primary, fallback)
    dry = cli("rollback", "--config", str(config), "--reason", "x", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "stop " + primary + ", restart policy no" in dry.stdout, dry.stdout
    assert "the container's memory < 2048 MiB" in dry.stdout, dry.stdout
    assert "preflight: OK" in dry.stdout, dry.stdout
    assert state(engine, primary) == (True, "unless-stopped")
    assert state(engine, fallback_name(fallback)) == (False, "no")
    gone = write_config(tmp_path / "gone", engine, port, primary, fallback)
    gone.write_text(gone.read_text().replace(str(engine.socket), str(tmp_path / "none.sock")))
    dry = cli("rollback", "--config", str(gone), "--reason", "x", "--dry-run")
    assert dry.returncode == 3, dry.stdout + dry.stderr  # the engine did not answer
    assert "cannot reach Docker at unix://" in dry.stdout + dry.stderr


def test_the_daemon_resumes_a_run_a_killed_process_left_on_containers(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    """``rollback`` is SIGKILLed after the Java container started; the daemon, started next,
    reconciles the run on the Docker Engine before its first tick and finishes it."""
    primary, fallback, port = pair(engine)
    java = fallback_name(fallback)
    config = write_config(
        tmp_path,
        engine,
        port,
        primary,
        fallback,
        runbook=PAUSED,
        top="interval: 1s\nprometheus: {enabled: false}\nlisten: {port: 0}\n",
    )
    first = popen("rollback", "--config", str(config), "--reason", "drill", "--local", "--yes")
    try:
        until(lambda: step_running(config, "verify"), 60, "verify running")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
    daemon = popen("run", "--config", str(config), "--log-format", "json")
    try:
        until(lambda: runs(config)[-1][0]["status"] != "running", 120, "the run's end")
    finally:
        daemon.send_signal(signal.SIGTERM)
        log, _ = daemon.communicate(timeout=60)
    ((run, steps),) = runs(config)
    assert run["status"] == "succeeded", (run, steps, log[-3000:])
    assert "reconciled" in json.loads(run["data"]), run["data"]
    assert [s["name"] for s in steps if s["detail"].startswith("interrupted")] == ["verify"]
    assert (state(engine, primary), state(engine, java)) == (
        (False, "no"),
        (True, "unless-stopped"),
    )

"""The Docker executor's service manager (``executor.docker.Containers``) on a real, private
Docker Engine: the runbook's switch -- stop and disable the primary container, enable and start
the fallback found by its Compose labels -- read back from Docker, the port bound by the
container's process, and names that do not name exactly one container refused, saying why."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdog import config, journal, model
from watchdog.executor import docker, runbook, verify
from watchdog_lab import dockerd

from .docker_world import answers, create, free_port

pytestmark = pytest.mark.skipif(
    dockerd.unavailable_reason() is not None,
    reason=f"no private Docker Engine here: {dockerd.unavailable_reason()}",
)


@pytest.fixture(scope="module")
def engine() -> Iterator[dockerd.Engine]:
    with dockerd.running_engine() as running:
        dockerd.import_base(running)
        yield running


async def test_the_switch_on_containers(engine: dockerd.Engine) -> None:
    port = free_port()
    create(engine, "rust", port, "rust")
    compose = {"com.docker.compose.project": "lavalink", "com.docker.compose.service": "java"}
    create(engine, "lavalink-java-1", port, "java", labels=compose)
    units = await docker.Containers.connect(f"unix://{engine.socket}", call_timeout=30)
    try:
        assert await units.start("rust") == "done"
        assert await answers(port)
        primary = await units.status("rust")
        fallback = await units.status("compose:lavalink/java")
        assert (primary.active, primary.enabled, primary.main_pid > 0) == (True, True, True)
        assert (fallback.active_state, fallback.enabled) == ("inactive", False)
        # the runbook's switch: stop + disable the primary, enable + start the fallback
        assert await units.stop("rust") == "done"
        assert await units.disable(["rust"]) == [("restart-policy", "rust", "no")]
        assert await units.enable(["compose:lavalink/java"]) == [
            ("restart-policy", "compose:lavalink/java", "unless-stopped")
        ]
        assert await units.start("compose:lavalink/java") == "done"
        assert await answers(port)
        primary = await units.status("rust")
        fallback = await units.status("compose:lavalink/java")
        assert (primary.stopped, primary.enabled) == (True, False)
        assert (fallback.active, fallback.enabled) == (True, True)
        assert fallback.active_enter_timestamp is not None
        bound = verify.port_bound(fallback.main_pid, port)  # host network: the host's /proc
        assert bound.ok, bound.detail
    finally:
        await units.aclose()


async def test_names_that_do_not_name_one_container_are_refused(engine: dockerd.Engine) -> None:
    labels = {"com.docker.compose.project": "twice", "com.docker.compose.service": "web"}
    create(engine, "twice-web-1", free_port(), "java", labels=labels)
    create(engine, "twice-web-2", free_port(), "java", labels=labels)
    units = await docker.Containers.connect(f"unix://{engine.socket}", call_timeout=30)
    try:
        missing = await units.status("no-such-container")
        assert missing.load_state == "not-found"
        with pytest.raises(docker.DockerError, match="no-such-container"):
            await units.start("no-such-container")
        with pytest.raises(docker.DockerError, match="2 containers carry these Compose labels"):
            await units.status("compose:twice/web")
        with pytest.raises(docker.DockerError, match="write compose:<project>/<service>"):
            await units.status("compose:twice")
    finally:
        await units.aclose()


async def test_an_unreachable_engine_says_where(tmp_path: Any) -> None:
    with pytest.raises(docker.DockerError, match="cannot reach Docker at unix://"):
        await docker.Containers.connect(f"unix://{tmp_path}/none.sock", call_timeout=5)


async def test_the_runbook_rolls_back_containers_and_verifies(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    """The same runbook, the Docker method: preflight, backup, snapshot, stop and disable the
    Rust container, start the Java one found by its Compose labels, verify it (answers, port
    bound by its process, memory, CPU) -- every step journaled."""
    port = free_port()
    create(engine, "runbook-rust", port, "rust")
    compose = {"com.docker.compose.project": "runbook", "com.docker.compose.service": "java"}
    create(engine, "runbook-java-1", port, "java", labels=compose)
    target = config.TargetSettings.model_validate(
        {
            "name": "lavalink",
            "executor": "docker",
            "primary": {"unit": "runbook-rust", "job": "lavalink-rust"},
            "fallback": {"unit": "compose:runbook/java", "job": "lavalink-java"},
            "rules": [str(dockerd.ROOT / "rules" / "lavalink.yml")],
            "runbook": {
                "url": f"http://127.0.0.1:{port}",
                "password_env": "LAVALINK_TEST_PASSWORD",
                "verify": {"timeout": "30s", "settle": "5s"},
            },
        }
    )
    os.environ["LAVALINK_TEST_PASSWORD"] = "youshallnotpass"
    units = await docker.Containers.connect(f"unix://{engine.socket}", call_timeout=30)
    store = journal.Journal.open(tmp_path / "state")
    try:
        await units.start("runbook-rust")
        assert await answers(port)
        outcome = await runbook.start_run(
            target,
            store,
            units,
            tmp_path / "state",
            trigger=model.Trigger.MANUAL,
            initiated_by="alice",
            reason="drill on containers",
            incident_id=None,
        )
        steps = [(s.name, s.status.value) for s in store.steps(outcome.run_id)]
        assert outcome.succeeded, (outcome, steps, [s.detail for s in store.steps(outcome.run_id)])
        assert [name for name, _ in steps] == [step.name for step in runbook.STEPS]
        primary = await units.status("runbook-rust")
        fallback = await units.status("compose:runbook/java")
        assert (primary.stopped, primary.enabled, fallback.active, fallback.enabled) == (
            True,
            False,
            True,
            True,
        )
        verification = store.run(outcome.run_id).facts["verification"]
        assert verification["port"]["ok"] and verification["memory"]["ok"], verification
        # memory and CPU are the container's, from Docker's stats
        assert verification["memory"]["detail"].startswith("container memory "), verification
        assert verification["cpu"]["detail"].startswith("container: "), verification
    finally:
        store.close()
        await units.aclose()
        os.environ.pop("LAVALINK_TEST_PASSWORD", None)


def test_the_cli_rolls_containers_back_as_an_operator_does(
    engine: dockerd.Engine, tmp_path: Path
) -> None:
    """``rollback --local --yes --json`` on a target with ``executor: docker``: the runbook's
    Method 3 by hand, through the engine the config names."""
    port = free_port()
    create(engine, "cli-rust", port, "rust")
    compose = {"com.docker.compose.project": "cli", "com.docker.compose.service": "java"}
    create(engine, "cli-java-1", port, "java", labels=compose)
    with engine.client() as api:
        assert api.post("/containers/cli-rust/start").status_code == 204
    assert asyncio.run(answers(port))
    path = tmp_path / "config.yml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"docker: {{url: 'unix://{engine.socket}'}}\n"
        "targets:\n"
        "  - name: lavalink\n"
        "    executor: docker\n"
        "    primary: {unit: cli-rust, job: lavalink-rust}\n"
        "    fallback: {unit: 'compose:cli/java', job: lavalink-java}\n"
        f"    rules: [{dockerd.ROOT / 'rules' / 'lavalink.yml'}]\n"
        "    runbook:\n"
        f"      url: http://127.0.0.1:{port}\n"
        "      password_env: LAVALINK_TEST_PASSWORD\n"
        "      verify: {timeout: 30s, settle: 5s}\n"
    )
    order = ["rollback", "--config", str(path), "--reason", "drill", "--local", "--yes", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "watchdog", *order],
        capture_output=True,
        text=True,
        cwd=dockerd.ROOT,
        env={**os.environ, "LAVALINK_TEST_PASSWORD": "youshallnotpass"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert (document["status"], document["steps"][-1]["name"]) == ("succeeded", "finish")
    with engine.client() as api:
        rust = api.get("/containers/cli-rust/json").json()
        java = api.get("/containers/cli-java-1/json").json()
    assert (rust["State"]["Running"], rust["HostConfig"]["RestartPolicy"]["Name"]) == (False, "no")
    assert (java["State"]["Running"], java["HostConfig"]["RestartPolicy"]["Name"]) == (
        True,
        "unless-stopped",
    )

"""The lab's private Docker Engine: started and stopped by PID with nothing left mounted, an
image imported here (no registry), and the Lavalink simulator running in a container on the
host's network from the host's Python -- found by Compose's labels, stopped, its restart policy
changed: what the Docker executor will do to a deployment."""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import httpx
import pytest

from watchdog_lab import dockerd

pytestmark = pytest.mark.skipif(
    dockerd.unavailable_reason() is not None,
    reason=f"no private Docker Engine here: {dockerd.unavailable_reason()}",
)

LABELS = {"com.docker.compose.project": "lavalink", "com.docker.compose.service": "java"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(port: int) -> bool:
    try:
        done = httpx.get(
            f"http://127.0.0.1:{port}/version",
            headers={"Authorization": "youshallnotpass"},
            timeout=1.0,
            trust_env=False,
        )
    except httpx.HTTPError:
        return False
    return done.status_code == 200


def until(check: object, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_a_simulator_container_by_compose_labels_started_stopped_and_left_clean() -> None:
    port = free_port()
    with dockerd.running_engine() as engine:
        folder, pid = engine.folder, engine.process.pid
        image = dockerd.import_base(engine)
        assert image.startswith("sha256:")
        with engine.client() as api:
            spec = {
                "Image": dockerd.BASE_IMAGE,
                "Cmd": [sys.executable, "-m", "watchdog_lab.lavalink", "--port", str(port)],
                "WorkingDir": str(dockerd.ROOT),
                "Labels": LABELS,
                "HostConfig": {
                    "NetworkMode": "host",
                    "Binds": dockerd.host_binds(),
                    "RestartPolicy": {"Name": "no"},
                },
            }
            made = api.post("/containers/create", params={"name": "lavalink-java"}, json=spec)
            assert made.status_code == 201, made.text
            container = made.json()["Id"]
            assert api.post(f"/containers/{container}/start").status_code == 204
            assert until(lambda: answers(port), 30), api.get(
                f"/containers/{container}/logs", params={"stdout": 1, "stderr": 1}
            ).content[-2000:]
            # found as Compose finds it, without the Compose CLI
            filters = json.dumps({"label": [f"{k}={v}" for k, v in LABELS.items()]})
            listed = api.get("/containers/json", params={"filters": filters}).json()
            assert [c["Id"] for c in listed] == [container]
            # Docker's "enable": a restart policy, changed on the live container
            changed = api.post(
                f"/containers/{container}/update",
                json={"RestartPolicy": {"Name": "unless-stopped"}},
            )
            assert changed.status_code == 200, changed.text
            inspected = api.get(f"/containers/{container}/json").json()
            assert inspected["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
            assert inspected["State"]["Running"] is True
            assert api.post(f"/containers/{container}/stop", params={"t": 10}).status_code == 204
            assert not answers(port)
            assert api.get(f"/containers/{container}/json").json()["State"]["Running"] is False
    assert not os.path.exists(f"/proc/{pid}")  # stopped by its PID
    assert dockerd.mounts_under(folder) == []  # the netns bind mount and the rest undone
    assert not folder.exists()

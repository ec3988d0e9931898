"""What the Docker executor's lab tests share: the Lavalink simulator as a container on the
private engine, a config for a ``executor: docker`` target, the CLI and the journal as an
operator reads them."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from watchdog_lab import dockerd

SIMULATOR = (sys.executable, "-m", "watchdog_lab.lavalink")
PASSWORD_ENV = {"LAVALINK_TEST_PASSWORD": "youshallnotpass"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def create(
    engine: dockerd.Engine,
    name: str,
    port: int,
    flavour: str,
    *,
    labels: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    policy: str | None = None,
    binds: tuple[str, ...] = (),
    image: str = dockerd.BASE_IMAGE,
    auto_remove: bool = False,
) -> str:
    """A simulator container (not started); its id. The Rust primary is "enabled"
    (``unless-stopped``), the Java fallback not, unless ``policy`` says otherwise."""
    kind, _, retries = (policy or ("unless-stopped" if flavour == "rust" else "no")).partition(":")
    restart: dict[str, Any] = {"Name": kind}
    if retries:
        restart["MaximumRetryCount"] = int(retries)
    spec: dict[str, Any] = {
        "Image": image,
        "Cmd": [*SIMULATOR, "--port", str(port), "--flavour", flavour, *args],
        "WorkingDir": str(dockerd.ROOT),
        "Labels": labels or {},
        "HostConfig": {
            "NetworkMode": "host",
            "Binds": [*dockerd.host_binds(), *binds],
            "RestartPolicy": restart,
            "AutoRemove": auto_remove,
        },
    }
    with engine.client() as api:
        made = api.post("/containers/create", params={"name": name}, json=spec)
        assert made.status_code == 201, made.text
        return str(made.json()["Id"])


def start(engine: dockerd.Engine, name: str) -> None:
    with engine.client() as api:
        started = api.post(f"/containers/{name}/start")
        assert started.status_code in (204, 304), started.text


def inspect(engine: dockerd.Engine, name: str) -> dict[str, Any]:
    with engine.client() as api:
        found = api.get(f"/containers/{name}/json")
        assert found.status_code == 200, found.text
        record: dict[str, Any] = found.json()
        return record


def state(engine: dockerd.Engine, name: str) -> tuple[bool, str]:
    """(running, restart policy) as Docker says."""
    record = inspect(engine, name)
    return bool(record["State"]["Running"]), str(record["HostConfig"]["RestartPolicy"]["Name"])


async def answers(port: int, within: float = 30.0) -> bool:
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
        for _ in range(int(within / 0.2)):
            try:
                done = await client.get(
                    f"http://127.0.0.1:{port}/version",
                    headers={"Authorization": "youshallnotpass"},
                )
                if done.status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    return False


def write_config(
    folder: Path,
    engine: dockerd.Engine,
    port: int,
    primary: str,
    fallback: str,
    *,
    runbook: str = "",
    top: str = "",
    target: str = "",
    verify: str = "{timeout: 20s, settle: 5s}",
) -> Path:
    """A config with one ``executor: docker`` target; ``runbook``/``top``/``target``: more
    YAML lines at those levels (already indented for the runbook, none for the others)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yml"
    path.write_text(
        f"state_dir: {folder / 'state'}\n"
        f"docker: {{url: 'unix://{engine.socket}'}}\n"
        f"{top}"
        "targets:\n"
        "  - name: lavalink\n"
        "    executor: docker\n"
        f"    primary: {{unit: '{primary}', job: lavalink-rust}}\n"
        f"    fallback: {{unit: '{fallback}', job: lavalink-java}}\n"
        f"    rules: [{dockerd.ROOT / 'rules' / 'lavalink.yml'}]\n"
        f"{target}"
        "    runbook:\n"
        f"      url: http://127.0.0.1:{port}\n"
        "      password_env: LAVALINK_TEST_PASSWORD\n"
        f"      verify: {verify}\n"
        f"{runbook}"
    )
    return path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "watchdog", *args]


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        cwd=dockerd.ROOT,
        env={**os.environ, **PASSWORD_ENV},
        timeout=timeout,
        check=False,
    )


def popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=dockerd.ROOT,
        env={**os.environ, **PASSWORD_ENV},
    )


def journal(config: Path) -> sqlite3.Connection:
    db = sqlite3.connect(config.parent / "state" / "journal.sqlite3", timeout=10)
    db.row_factory = sqlite3.Row
    return db


def runs(config: Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each run with its steps, oldest first."""
    db = journal(config)
    try:
        found = []
        for run in db.execute("SELECT * FROM runs ORDER BY id").fetchall():
            steps = db.execute(
                "SELECT * FROM steps WHERE run_id = ? ORDER BY id", (run["id"],)
            ).fetchall()
            found.append((dict(run), [dict(s) for s in steps]))
        return found
    finally:
        db.close()


def step_running(config: Path, step: str) -> bool:
    if not (config.parent / "state" / "journal.sqlite3").exists():
        return False
    db = journal(config)
    try:
        row = db.execute(
            "SELECT status FROM steps WHERE name = ? ORDER BY id DESC LIMIT 1", (step,)
        ).fetchone()
    except sqlite3.OperationalError:
        return False  # the schema is still being created
    finally:
        db.close()
    return row is not None and row["status"] == "running"


def until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what} within {within:g}s")
        time.sleep(0.05)


def document(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        parsed: dict[str, Any] = json.loads(done.stdout)
    except ValueError as exc:
        raise AssertionError(f"not JSON: {done.stdout}\n{done.stderr}") from exc
    return parsed

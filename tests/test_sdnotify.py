"""sd_notify over real AF_UNIX datagram sockets, path and abstract, as systemd listens."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchdog.sdnotify import SystemdNotifier


@pytest.fixture(params=["path", "abstract"])
def listening(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, socket.socket]]:
    """systemd's side: a datagram socket, and the NOTIFY_SOCKET value that names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify")
        sock.bind(name)
    else:
        name = f"@rollback-watchdog-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name[1:])
    sock.settimeout(2)
    try:
        yield name, sock
    finally:
        sock.close()


def test_ready_status_alive_reloading_stopping(listening: tuple[str, socket.socket]) -> None:
    name, sock = listening
    notifier = SystemdNotifier({"NOTIFY_SOCKET": name})
    assert notifier.enabled
    assert notifier.ready("watching lavalink\nmode auto")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching lavalink mode auto"  # one line
    assert notifier.alive() and sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.status("lavalink: hold") and sock.recv(4096) == b"STATUS=lavalink: hold"
    assert notifier.reloading()
    reload = sock.recv(4096).decode().split("\n")
    assert reload[0] == "RELOADING=1" and reload[1].startswith("MONOTONIC_USEC=")
    assert int(reload[1].split("=")[1]) > 0
    assert notifier.stopping() and sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_outside_systemd_every_call_is_a_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.ready("x") is False
    assert SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled is False


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled and notifier.alive() is False


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_sec(
    environ: dict[str, str], interval: float | None
) -> None:
    assert SystemdNotifier(environ, pid=4242).watchdog_interval == interval

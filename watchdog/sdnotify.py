"""sd_notify for the watchdog's own unit (``Type=notify``, ``WatchdogSec=``), in plain Python.

systemd learns from these datagrams that the daemon is up (``READY=1``, only once the journal,
the listener and every loop are), what it is doing (``STATUS=``, shown by ``systemctl status``),
that it is alive (``WATCHDOG=1``, sent only while the evaluation loops make progress, so a
wedged daemon is restarted rather than trusted), reloading or stopping. The protocol is one
``AF_UNIX`` datagram to ``$NOTIFY_SOCKET`` (``@name`` is the abstract namespace); outside
systemd there is no socket and every call is a no-op. A send that fails is logged once and
never raised: supervision must not take the watchdog down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("watchdog.sdnotify")


class SystemdNotifier:
    """The ``$NOTIFY_SOCKET`` of this process, if it has one."""

    def __init__(self, environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._address = _address(environ.get("NOTIFY_SOCKET", ""))
        self._watchdog = _watchdog_interval(environ, os.getpid() if pid is None else pid)
        self._complained = False

    @property
    def enabled(self) -> bool:
        """Whether systemd listens (the process runs as a ``Type=notify`` unit)."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alive pings (half of ``WatchdogSec=``), or None if not asked."""
        return self._watchdog

    def send(self, *assignments: str) -> bool:
        """One datagram of ``KEY=VALUE`` lines; False when not under systemd or it failed."""
        if self._address is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            if not self._complained:  # once: a missing socket would otherwise flood the log
                self._complained = True
                log.warning("cannot notify systemd", error=exc.strerror or str(exc))
            return False
        self._complained = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def alive(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")


def _address(name: str) -> str | None:
    if name.startswith("@"):
        return "\0" + name[1:]  # Linux abstract namespace
    if name.startswith("/"):
        return name
    return None  # unset, or a kind we do not speak (vsock:)


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    usec, for_pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if for_pid and (not for_pid.isdigit() or int(for_pid) != pid):
        return None  # meant for another process (our parent, say)
    return int(usec) / 2e6

"""The runtime: the long-running daemon, wired from the settings and supervised.

``main`` builds everything and runs it (``run``); ``guard`` is one target's loops; ``link`` the
connection to systemd; ``intake`` what arrives over HTTP and Socket Mode; ``reload`` SIGHUP;
``health`` the heartbeat, readiness and the journal's housekeeping; ``secrets`` every secret,
read once.
"""

from __future__ import annotations

from watchdog.runtime.main import Running, run

__all__ = ["Running", "run"]

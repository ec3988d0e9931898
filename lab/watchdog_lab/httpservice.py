"""A small HTTP service for the ``http`` profile's tests: a health endpoint and a few faults.

Not Lavalink: any service with ``GET /health``. It answers ``{"status": "ok", "name": ...}``
with 200, or, as told on its command line, starts slowly, refuses to start, crashes after a
while (the crash loop systemd restarts), answers slowly or answers an error status. It runs on a
real socket under the sandbox systemd as the primary and the fallback of an ``http`` target.
Standard library only: it starts in a fraction of a second, so a crash loop loops fast.

Run: ``python -m watchdog_lab.httpservice --port 8080 --name app-old``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m watchdog_lab.httpservice")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="app", help="said in every answer")
    parser.add_argument("--token", default="", help="if set, /health needs this Authorization")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds before listening")
    parser.add_argument("--fail-at-start", action="store_true", help="exit 1 instead of starting")
    parser.add_argument("--exit-after", type=float, default=None, help="crash (exit 1) after S s")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument("--status", type=int, default=200, help="the status /health answers")
    return parser.parse_args(argv)


def handler(options: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    """The request handler for these options."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/health":
                self._answer(404, {"error": "not found"})
                return
            if options.token and self.headers.get("Authorization") != options.token:
                self._answer(401, {"error": "unauthorized"})
                return
            time.sleep(options.slow)
            state = "ok" if options.status == 200 else "failing"
            self._answer(options.status, {"status": state, "name": options.name})

        def _answer(self, status: int, body: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the tests read the journal, not this log

    return Health


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    if options.fail_at_start:
        print(f"{options.name}: refusing to start (--fail-at-start)", file=sys.stderr)
        return 1
    time.sleep(options.startup_delay)
    server = ThreadingHTTPServer((options.host, options.port), handler(options))
    server.daemon_threads = True
    if options.exit_after is not None:
        threading.Timer(options.exit_after, _crash, args=(options.name,)).start()
    print(f"{options.name}: listening on {options.host}:{options.port}", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def _crash(name: str) -> None:
    print(f"{name}: crashing (--exit-after)", file=sys.stderr, flush=True)
    os._exit(1)  # at once, as a crash does: no cleanup


def command_line(name: str, *extra: str, port: int = 8080) -> str:
    """The shell command that runs one service with this interpreter (an ExecStart)."""
    return " ".join(
        [
            sys.executable,
            "-m",
            "watchdog_lab.httpservice",
            "--port",
            str(port),
            "--name",
            name,
            *extra,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())

"""A throwaway real Prometheus, loaded with synthetic history, for tests and the benchmark.

Rules and the daemon's queries must be checked against the real query engine, not a mock: this
module backfills blocks with promtool and runs /usr/bin/prometheus on a free local port for the
duration of a `with` block.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog_lab import logs
from watchdog_lab.openmetrics import Series, write_openmetrics

# No scrape jobs: the server only serves the backfilled blocks.
DEFAULT_CONFIG_YAML = """\
global:
  scrape_interval: 15s
  evaluation_interval: 15s
"""

# promtool re-reads the whole input once per block: with its default 2h blocks a week takes ~110 s
# to import, with this ~6 s. It rounds down to its largest compatible block range (486h).
LONG_BLOCK_DURATION = "1000h"
_STOP_GRACE_SECONDS = 10.0


class PrometheusUnavailable(RuntimeError):
    """A Prometheus binary is missing, or Prometheus/promtool failed to do its job."""


@dataclass(frozen=True)
class RunningPrometheus:
    """Where a started Prometheus listens, and which process and data it has."""

    url: str
    port: int
    pid: int
    data_dir: Path


def require_binary(name: str, *, package: str = "prometheus") -> str:
    """The binary's path; ``PrometheusUnavailable`` naming the Debian package if missing."""
    path = shutil.which(name)
    if path is None:
        raise PrometheusUnavailable(
            f"`{name}` was not found on PATH; install it with `apt-get install {package}`"
        )
    return path


def create_blocks(
    openmetrics_file: Path,
    data_dir: Path,
    *,
    max_block_duration: str | None = LONG_BLOCK_DURATION,
) -> None:
    """Backfill TSDB blocks into `data_dir` from an OpenMetrics file with promtool.

    `max_block_duration` is promtool's hidden `--max-block-duration` flag (None: promtool's 2h).
    """
    promtool = require_binary("promtool")
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet"]
    if max_block_duration is not None:
        command.append(f"--max-block-duration={max_block_duration}")
    command += [str(openmetrics_file), str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PrometheusUnavailable(
            f"promtool could not create blocks from {openmetrics_file} "
            f"(exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
        )


def load_history(
    series: Iterable[Series],
    workdir: Path,
    *,
    max_block_duration: str | None = LONG_BLOCK_DURATION,
) -> Path:
    """Write `series` to `workdir/history.om`, backfill `workdir/data` from it, return that dir."""
    workdir.mkdir(parents=True, exist_ok=True)
    openmetrics_file = workdir / "history.om"
    write_openmetrics(series, openmetrics_file)
    data_dir = workdir / "data"
    create_blocks(openmetrics_file, data_dir, max_block_duration=max_block_duration)
    return data_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _is_ready(url: str) -> bool:
    # A server behind a web config (TLS, basic auth) is polled without verifying its test
    # certificate, and a 401 means it is up and guarding itself.
    context = ssl._create_unverified_context() if url.startswith("https:") else None  # noqa: S323
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2.0, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        return error.code == 401
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ready(
    process: subprocess.Popen[bytes],
    url: str,
    log_file: Path,
    ready_timeout: float,
    *,
    name: str = "prometheus",
) -> None:
    """Poll ``url/-/ready`` (Prometheus and Alertmanager both serve it) until it answers."""
    deadline = time.monotonic() + ready_timeout
    while True:
        exit_code = process.poll()
        if exit_code is not None:
            raise PrometheusUnavailable(
                f"{name} exited with code {exit_code} before it was ready; "
                f"log tail from {log_file}:\n{logs.tail(log_file)}"
            )
        if _is_ready(url):
            return
        if time.monotonic() >= deadline:
            raise PrometheusUnavailable(
                f"{name} at {url} was not ready within {ready_timeout:g} s; "
                f"log tail from {log_file}:\n{logs.tail(log_file)}"
            )
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process by its PID, give it time to flush, then SIGKILL it."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_prometheus(
    data_dir: Path,
    *,
    port: int | None = None,
    retention: str = "3650d",
    config_yaml: str | None = None,
    web_config_yaml: str | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[RunningPrometheus]:
    """Run Prometheus on 127.0.0.1 over `data_dir` until the `with` block ends.

    The config (scrape and evaluation interval 15 s, no scrape jobs, unless `config_yaml` is given)
    goes into a temporary directory; the server's log goes to `<data_dir>.prometheus.log`. The long
    default retention keeps old backfilled history from being deleted at start-up.
    `web_config_yaml` is Prometheus's web config (TLS, basic auth); with TLS the URL is https.
    """
    prometheus = require_binary("prometheus")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    scheme = "https" if web_config_yaml and "tls_server_config" in web_config_yaml else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    log_file = data_dir.with_name(data_dir.name + ".prometheus.log")
    with tempfile.TemporaryDirectory(prefix="prometheus-config-") as config_dir:
        config_file = Path(config_dir) / "prometheus.yml"
        config_file.write_text(DEFAULT_CONFIG_YAML if config_yaml is None else config_yaml)
        command = [
            prometheus,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={data_dir}",
            f"--storage.tsdb.retention.time={retention}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        if web_config_yaml is not None:  # TLS and basic auth, Prometheus's own way
            web_config = Path(config_dir) / "web.yml"
            web_config.write_text(web_config_yaml)
            command.append(f"--web.config.file={web_config}")
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_until_ready(process, url, log_file, ready_timeout)
            yield RunningPrometheus(url=url, port=port, pid=process.pid, data_dir=data_dir)
        finally:
            stop(process)

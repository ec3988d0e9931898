"""A throwaway real Alertmanager, for the benchmark's standard path and the webhook tests.

The comparison "how soon would Prometheus + Alertmanager have told us" is only honest against
the real thing -- its grouping, ``group_wait`` and webhook delivery -- so this runs
``prometheus-alertmanager`` (the Debian package's binary) on a free local port for the duration
of a ``with`` block, clustering off (no gossip port), its data in a directory of the caller's.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog_lab import prometheus

BINARY = "prometheus-alertmanager"


@dataclass(frozen=True)
class RunningAlertmanager:
    """Where a started Alertmanager listens, and which process it is."""

    url: str
    port: int
    pid: int

    @property
    def address(self) -> str:
        """``host:port``, as Prometheus's ``alertmanagers.static_configs`` wants it."""
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def running_alertmanager(
    data_dir: Path, config_yaml: str, *, ready_timeout: float = 30.0
) -> Iterator[RunningAlertmanager]:
    """Run Alertmanager with ``config_yaml`` on 127.0.0.1 until the ``with`` block ends.

    Its log goes to ``<data_dir>.alertmanager.log``. Raises ``prometheus.PrometheusUnavailable``
    if the binary is missing or does not become ready.
    """
    binary = prometheus.require_binary(BINARY, package="prometheus-alertmanager")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = prometheus.free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = data_dir.with_name(data_dir.name + ".alertmanager.log")
    with tempfile.TemporaryDirectory(prefix="alertmanager-config-") as config_dir:
        config_file = Path(config_dir) / "alertmanager.yml"
        config_file.write_text(config_yaml)
        command = [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no HA gossip: nothing else listens
        ]
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            prometheus.wait_until_ready(process, url, log_file, ready_timeout, name="alertmanager")
            yield RunningAlertmanager(url=url, port=port, pid=process.pid)
        finally:
            prometheus.stop(process)

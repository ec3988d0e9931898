"""A live Lavalink deployment in a box, for the demo, the end-to-end test and the benchmark.

Everything real that can run here: a sandboxed systemd (``sandbox``) runs two simulator nodes
as ``lavalink-rust.service`` (primary, Rust flavour, ``Restart=always``) and
``lavalink-java.service`` (fallback, Java flavour, slow to start); a real Prometheus scrapes the
primary and the watchdog; the watchdog itself runs inside the sandbox in ``auto`` mode, so it
talks to that systemd over D-Bus, probes the node, and switches the units when the rules say so.

Faults are injected as a user would meet them: through the simulator's control endpoint
(``POST /sim/faults``) for a live fault, and for a crash loop through the unit's environment
file (``FAULT_FLAGS``, read at every start) plus one crash, so each restart crashes again.

``speed`` divides every rule's ``for`` (and ``keep_firing_for``) so scenes that take minutes in
production fit in seconds; ``speed=1`` runs the shipped rules unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from watchdog import timefmt
from watchdog_lab import lavalink, prometheus, sandbox

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules" / "lavalink.yml"
PASSWORD = "youshallnotpass"  # noqa: S105 - Lavalink's documented default, a simulator's
PORT = 2333
PRIMARY, FALLBACK = "lavalink-rust.service", "lavalink-java.service"
SERVICE_URL = f"http://127.0.0.1:{PORT}"


@dataclass(frozen=True)
class StageOptions:
    """How fast the stage runs and what else Prometheus does."""

    interval: int = 2  # scrape, rule evaluation, watchdog evaluation and probes, seconds
    speed: float = 30.0  # every rule's `for` is divided by this
    fallback_startup: float = 3.0  # the Java node's start-up delay, seconds
    warmup: str = "5s"
    prometheus_rules: bool = False  # Prometheus evaluates the same rules (the standard path)
    alertmanager: str | None = None  # host:port Prometheus sends alerts to
    mode: str = "auto"  # the watchdog's; observe decides without acting


@dataclass
class Stage:
    """The running deployment and what a scene needs to act on it and read it."""

    box: sandbox.Sandbox
    workdir: Path
    options: StageOptions
    prometheus_url: str
    watchdog_port: int
    config: Path  # host path of the watchdog's config
    daemon_log: Path
    daemon: subprocess.Popen[str] | None = None

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"

    @property
    def rules_file(self) -> Path:
        """The rules the watchdog reads: the shipped ones at the stage's speed."""
        return self.workdir / "rules" / "lavalink.yml"

    def states(self) -> tuple[str, str]:
        return self.box.unit_state(PRIMARY), self.box.unit_state(FALLBACK)

    def fault(self, **change: Any) -> dict[str, Any]:
        """Change the primary node's faults live (the simulator's control endpoint)."""
        answer = httpx.post(
            f"{SERVICE_URL}/sim/faults",
            json=change,
            headers={"Authorization": PASSWORD},
            timeout=5,
        )
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def crash_loop(self) -> None:
        """Make every start of the primary crash after a second, then crash it now."""
        self._fault_flags("--exit-after 1")
        with contextlib.suppress(httpx.HTTPError):  # it may be between two lives already
            self.fault(crash={"after": 0, "exit_code": 1})

    def _fault_flags(self, flags: str) -> None:
        (self.workdir / "rust.env").write_text(f"FAULT_FLAGS={flags}\n")

    def restore_primary_units(self) -> None:
        """The operator's way back after a scene: no faults, the Rust node serving again. The
        target stays disarmed until someone re-arms it (the watchdog never switches back)."""
        self._fault_flags("")
        self.box.systemctl("disable", "--now", FALLBACK)
        self.box.systemctl("reset-failed")
        self.box.systemctl("enable", "--now", PRIMARY)
        wait_for_node(timeout=30)
        wait_for_scrape(self.prometheus_url, timeout=30)  # the swap's gap is not an outage

    def start_watchdog(self) -> None:
        """The daemon, inside the sandbox, logging JSON lines to ``daemon_log``."""
        log_file = self.daemon_log.open("a")
        self.daemon = self.box.popen(
            [
                sys.executable,
                "-m",
                "watchdog",
                "run",
                "--config",
                str(self.box.inside(self.config)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        log_file.close()

    def stop_watchdog(self) -> None:
        if self.daemon is None:
            return
        with contextlib.suppress(ProcessLookupError, sandbox.SandboxUnavailable):
            pid = self.box.program_pid(self.daemon, timeout=1)
            os.kill(pid, signal.SIGTERM)  # the daemon itself, by PID: a clean stop
        try:
            self.daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait(timeout=10)
        self.daemon = None


def wait_for_scrape(prometheus_url: str, *, timeout: float) -> None:
    """Until Prometheus's latest scrape of the Rust node succeeded (``up == 1``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = httpx.get(
                f"{prometheus_url}/api/v1/query",
                params={"query": 'up{job="lavalink-rust"}'},
                timeout=2,
            ).json()
            series = answer.get("data", {}).get("result", [])
            if series and all(float(s["value"][1]) == 1 for s in series):
                return
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus did not scrape the node within {timeout:g}s")
        time.sleep(0.2)


def wait_for_node(*, timeout: float) -> None:
    """Until the node on :2333 answers ``/version``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (
                httpx.get(
                    f"{SERVICE_URL}/version", headers={"Authorization": PASSWORD}, timeout=1
                ).status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Lavalink node answered on :{PORT} within {timeout:g}s")
        time.sleep(0.1)


_RANGE = re.compile(r"\[(\d+(?:ms|s|m|h|d|w|y))\]")


def fast_rules(source: Path, speed: float, *, shortest_range: float = 10.0) -> str:
    """The rule file with every ``for``, ``keep_firing_for`` and range window divided by
    ``speed`` (a window never below ``shortest_range`` seconds: it needs a few scrapes)."""

    def scaled_range(match: re.Match[str]) -> str:
        seconds = max(shortest_range, round(timefmt.parse_duration(match[1]) / speed))
        return f"[{timefmt.format_duration(seconds)}]"

    document = yaml.safe_load(source.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    seconds = max(1.0, round(timefmt.parse_duration(rule[key]) / speed))
                    rule[key] = timefmt.format_duration(seconds)
            rule["expr"] = _RANGE.sub(scaled_range, rule["expr"])
    header = f"# {source.name} with `for` and range windows divided by {speed:g} (demo speed)\n"
    return header + yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=100)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL) as literal blocks, as the shipped file does."""


def _block(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _block)


def _units(box_inside: Path, options: StageOptions) -> dict[str, str]:
    rust = lavalink.command_line("rust", password=PASSWORD, port=PORT) + " $FAULT_FLAGS"
    java = lavalink.command_line(
        "java", "--startup-delay", f"{options.fallback_startup:g}", password=PASSWORD, port=PORT
    )
    primary = textwrap.dedent(f"""\
        [Unit]
        Description=Lavalink Rust (primary, simulated)
        DefaultDependencies=no
        StartLimitIntervalSec=0
        Conflicts={FALLBACK}

        [Service]
        Type=simple
        EnvironmentFile=-{box_inside}/rust.env
        ExecStart={rust}
        Restart=always
        RestartSec=1

        [Install]
        WantedBy=wd-test.target
        """)
    fallback = sandbox.service_unit("Lavalink Java (fallback, simulated)", java)
    return {PRIMARY: primary, FALLBACK: fallback}


def _prometheus_config(options: StageOptions, watchdog_port: int, rules_file: Path) -> str:
    interval = f"{options.interval}s"
    text = textwrap.dedent(f"""\
        global:
          scrape_interval: {interval}
          evaluation_interval: {interval}
        scrape_configs:
          - job_name: lavalink-rust
            static_configs: [{{targets: ['127.0.0.1:{PORT}']}}]
          - job_name: rollback-watchdog
            static_configs: [{{targets: ['127.0.0.1:{watchdog_port}']}}]
        """)
    if options.prometheus_rules:
        text += f"rule_files: ['{rules_file}']\n"
    if options.alertmanager is not None:
        text += textwrap.dedent(f"""\
            alerting:
              alertmanagers:
                - static_configs: [{{targets: ['{options.alertmanager}']}}]
            """)
    return text


def _watchdog_config(options: StageOptions, url: str, port: int) -> str:
    """Paths are relative to the config file, so it reads the same inside the sandbox (under
    /run/wd) and on the host (``status``, ``report`` from outside)."""
    interval = f"{options.interval}s"
    return textwrap.dedent(f"""\
        # The stage's watchdog: everything every {interval}, demo-speed policy.
        mode: {options.mode}
        interval: {interval}
        state_dir: state
        systemd: {{bus: 'unix:path=/run/systemd/private'}}
        prometheus: {{url: '{url}', timeout: 2s, retries: 1}}
        listen: {{host: 127.0.0.1, port: {port}}}
        policy: {{warmup: {options.warmup}, cooldown: 0s, inconclusive_after: 1m}}
        targets:
          - name: lavalink
            primary:
              unit: {PRIMARY}
              job: lavalink-rust
              config_dir: opt/lavalink-rust/config
            fallback:
              unit: {FALLBACK}
              job: lavalink-java
              config_dir: opt/lavalink-java
              binary: opt/lavalink-java/Lavalink.jar
            rules: [rules/lavalink.yml]
            runbook:
              url: {SERVICE_URL}
              password_file: password
              verify: {{timeout: 30s, settle: 10s}}
            probes: {{interval: {interval}, loadtracks_interval: {interval}, timeout: 2s}}
            watch: {{interval: 1s}}
        """)


def lay_out(root: Path) -> None:
    """The files of a Lavalink host under ``root``, as the runbook finds them: the Rust side's
    ``opt/lavalink-rust/config/application.yml``, the Java side's ``opt/lavalink-java/`` with a
    stand-in ``Lavalink.jar`` (the simulator plays Java; preflight only checks the file), and
    the service ``password``."""
    config_dir = root / "opt" / "lavalink-rust" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "application.yml").write_text(
        f"server: {{port: {PORT}}}\nlavalink: {{server: {{password: {PASSWORD}}}}}\n"
    )
    (root / "opt" / "lavalink-java").mkdir(parents=True, exist_ok=True)
    (root / "opt" / "lavalink-java" / "Lavalink.jar").write_bytes(b"PK\x03\x04 stand-in")
    (root / "password").write_text(PASSWORD + "\n")


@contextlib.contextmanager
def staged(workdir: Path, options: StageOptions = StageOptions()) -> Iterator[Stage]:
    """Boot the deployment in ``workdir`` (kept afterwards: the journal and logs stay there),
    start the watchdog, yield; on exit stop the watchdog, systemd and Prometheus."""
    lay_out(workdir)
    (workdir / "rust.env").write_text("FAULT_FLAGS=\n")
    (workdir / "rules").mkdir(exist_ok=True)
    rules_file = workdir / "rules" / "lavalink.yml"
    if options.speed == 1:
        rules_file.write_text(RULES.read_text())
    else:
        rules_file.write_text(fast_rules(RULES, options.speed))
    watchdog_port = prometheus.free_port()
    inside = sandbox.INSIDE_DIR  # workdir is the sandbox's host_dir
    units = _units(inside, options)
    with prometheus.running_prometheus(
        workdir / "prometheus", config_yaml=_prometheus_config(options, watchdog_port, rules_file)
    ) as server:
        config_file = workdir / "config.yml"
        config_file.write_text(_watchdog_config(options, server.url, watchdog_port))
        with sandbox.booted_systemd(workdir, units) as box:
            stage = Stage(
                box=box,
                workdir=workdir,
                options=options,
                prometheus_url=server.url,
                watchdog_port=watchdog_port,
                config=config_file,
                daemon_log=workdir / "watchdog.log",
            )
            box.systemctl("enable", "--now", PRIMARY)
            wait_for_node(timeout=30)
            # Prometheus scraped the port before the node listened: a watchdog started now would
            # read that `up == 0` (and its `for`, at demo speed, in the replayed history) as an
            # outage. A real deployment does not start both in the same second.
            wait_for_scrape(server.url, timeout=30)
            stage.start_watchdog()
            try:
                yield stage
            finally:
                stage.stop_watchdog()

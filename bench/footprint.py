"""Benchmark: what the watchdog costs beside the service it guards.

Three figures, as an operator's install has them -- the package installed with ``pip install .``
into a venv of its own, without the development extras (which pull in ``rich`` and ``click``
that httpx and structlog would load):

- ``rollback-watchdog --help`` wall time, and ``validate --config`` of a one-target config, side
  by side with ``promtool check rules`` on the same rules (rendered as Prometheus loads them);
- the daemon's resident memory (VmRSS) once idle: observe mode, one target, a real Prometheus
  with no data, the listener on, systemd not reachable (as on a machine without a system bus).

Prints one JSON object with the median, min and max of each, and whether the issue's targets
hold (``--help`` < 0.3 s, ``validate`` < 0.6 s, idle RSS < 55 MB).

Run: ``make bench-footprint`` (or ``.venv/bin/python bench/footprint.py --runs 10``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from watchdog_lab import prometheus

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench" / "footprint-venv"
TARGETS = {"help_seconds": 0.3, "validate_seconds": 0.6, "daemon_idle_rss_mb": 55.0}
PASSWORD = "bench-lavalink-password-0123456789"  # noqa: S105 - a throwaway for validate


def production_venv() -> Path:
    """A venv with the package and its runtime dependencies only; refreshed each run."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True)
    else:  # the dependencies stay; this checkout's code goes in
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--force-reinstall",
                str(ROOT),
            ],
            check=True,
        )
    return VENV / "bin" / "rollback-watchdog"


def timed(command: list[str], runs: int, env: dict[str, str]) -> dict[str, float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, env=env, check=False, cwd="/")
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{command[:3]} failed: {done.stderr.decode()[-500:]}")
    return summary(seconds)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "runs": len(values),
    }


def write_config(folder: Path, prometheus_url: str, port: int) -> Path:
    path = folder / "config.yml"
    path.write_text(
        f"mode: observe\n"
        f"interval: 5s\n"
        f"state_dir: {folder / 'state'}\n"
        f"prometheus: {{url: '{prometheus_url}'}}\n"
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"targets:\n"
        f"  - name: lavalink\n"
        f"    primary: {{unit: lavalink-rust.service, job: lavalink-rust}}\n"
        f"    fallback: {{unit: lavalink-java.service, job: lavalink-java}}\n"
        f"    rules: [{ROOT / 'rules' / 'lavalink.yml'}]\n"
        f"    runbook: {{url: 'http://127.0.0.1:{prometheus.free_port()}', "
        f"password_env: LAVALINK_PASSWORD}}\n"
    )
    (folder / "state").mkdir()
    return path


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def idle_rss(binary: Path, config: Path, env: dict[str, str], settle: float) -> float:
    """MB resident after ``settle`` seconds of idling (several evaluations)."""
    log = config.with_name("daemon.log")
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(binary), "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
            cwd="/",
        )
    try:
        time.sleep(settle)
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited: {log.read_text()[-800:]}")
        return rss_kb(daemon.pid) / 1000.0
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each command [10]")
    parser.add_argument("--daemon-runs", type=int, default=3, help="daemons measured [3]")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds idle first [30]")
    args = parser.parse_args()
    promtool = shutil.which("promtool")
    if promtool is None:
        raise SystemExit("promtool is missing (Debian: apt-get install prometheus)")
    binary = production_venv()
    env = {"PATH": os.environ.get("PATH", ""), "LAVALINK_PASSWORD": PASSWORD}
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as temp:
        work = Path(temp)
        with prometheus.running_prometheus(work / "tsdb") as server:
            figures: dict[str, object] = {}
            config = write_config(work, server.url, prometheus.free_port())
            rendered = work / "lavalink.rules.yml"
            done = subprocess.run(
                [str(binary), "rules", "--config", str(config)],
                capture_output=True,
                env=env,
                check=True,
            )
            rendered.write_bytes(done.stdout)
            figures["help_seconds"] = timed([str(binary), "--help"], args.runs, env)
            figures["validate_seconds"] = timed(
                [str(binary), "validate", "--config", str(config)], args.runs, env
            )
            figures["promtool_check_rules_seconds"] = timed(
                [promtool, "check", "rules", str(rendered)], args.runs, env
            )
            sizes = []
            for _ in range(args.daemon_runs):
                shutil.rmtree(work / "state")
                (work / "state").mkdir()
                sizes.append(idle_rss(binary, config, env, args.settle))
            figures["daemon_idle_rss_mb"] = summary(sizes)
    met = {
        name: figures[name]["median"] < limit  # type: ignore[index]
        for name, limit in TARGETS.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "footprint",
                "install": "pip install . into its own venv (runtime dependencies only)",
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                **figures,
                "targets": TARGETS,
                "met": met,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

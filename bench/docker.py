"""Benchmark: the Docker executor's rollback vs the procedure's Method 3, on a private engine.

Issue 15 claims that with ``executor: docker`` the watchdog adds under 1 s to the fallback
container's own start, and ends at least 2x sooner than Method 3 run as a script. Each run, on
fresh containers of a private dockerd (``watchdog_lab.dockerd``, host network) -- the Lavalink
simulator's ``rust`` flavour as the primary, running; its ``java`` flavour as the fallback,
stopped, binding its port ``--startup-delay`` s after it starts -- measures:

- ``fallback_start_s``: ``POST /containers/{id}/start`` of the fallback (primary stopped) until
  ``GET /version`` answers 200;
- ``watchdog_total_s``: wall time of ``rollback --local --yes --json``, verification included
  (``watchdog_overhead_s``: minus ``fallback_start_s``);
- ``method3_total_s``: Method 3 as a bash script (docker stop/start, ``sleep 15``, curl).

The methods alternate which goes first, from the same reset state. Prints one JSON object.
Run: ``make bench-docker`` (root: dockerd needs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from watchdog_lab import dockerd, prometheus

PASSWORD = "youshallnotpass"  # noqa: S105 - the simulator's default, and the procedure's
AUTH = {"Authorization": PASSWORD}
TARGETS = {"overhead_below_s": 1.0, "speedup_at_least": 2.0}
METHOD3 = """\
#!/bin/bash
# The procedure's Method 3 (ROLLBACK_PROCEDURES.md) as a script. There is no Compose CLI here:
# docker stop/start of the same containers stand in for `down` / `up -d`, docker ps for `ps`.
set -eu
{docker} stop {primary}     # docker-compose -f deployment/docker-compose.yml down
{docker} start {fallback}   # docker-compose -f deployment/docker-compose-java.yml up -d
sleep 15                    # "Wait for startup" (Phase 2, step 4)
{docker} ps --filter name={fallback}   # docker-compose -f deployment/docker-compose-java.yml ps
curl -s --noproxy '*' -w '\\nversion_status=%{{http_code}}\\n' http://localhost:{port}/version
curl -sf --noproxy '*' -w '\\ninfo_status=%{{http_code}}\\n' \\
  -H "Authorization: {password}" http://localhost:{port}/v4/info
"""
NOTES = [
    "no Compose CLI here: Method 3's `docker-compose down` / `up -d` / `ps` are `docker stop` / "
    "`docker start` / `docker ps` of the same containers",
    "Method 3 as written has no sleep; its `sleep 15` is the procedure's Phase 2 step 4 ('Wait "
    "for startup'), as issue 15 describes Method 3",
    "Method 3's `curl /version` has no password: the simulator answers 401 (as Lavalink does); "
    "the script fails if curl cannot connect, or /v4/info (with the password) is not 2xx",
    "overhead_below_s is judged on watchdog_run_overhead_s, the run as the daemon makes it "
    "(preflight to finish, from its journal); overhead_below_s_cli on the whole "
    "`rollback --local` command, whose process start and imports (about 0.5 s) the daemon "
    "does not pay",
    "derived_fallback_start_s: the watchdog's start-fallback step + its verify step's 'up after' "
    "(0.1 s resolution), a cross-check; watchdog_run_s: its journal's first step to finish",
]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "stdev": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
        "runs": len(values),
    }


def answers(port: int, within: float) -> float:
    """Seconds until ``GET /version`` (with the password) answers 200; raises past ``within``."""
    started = time.monotonic()
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while time.monotonic() - started < within:
            with contextlib.suppress(httpx.HTTPError):
                done = client.get(f"http://127.0.0.1:{port}/version", headers=AUTH)
                if done.status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.01)
    raise RuntimeError(f"nothing answered /version on port {port} within {within:g}s")


def call(api: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    done = api.request(method, path, **kwargs)
    if done.status_code >= 400:
        raise RuntimeError(f"{method} {path}: {done.status_code} {done.text}")
    return done


def create(api: httpx.Client, name: str, port: int, flavour: str, delay: float) -> None:
    command = [sys.executable, "-m", "watchdog_lab.lavalink", "--port", str(port)]
    command += ["--flavour", flavour, "--startup-delay", str(delay)]
    spec = {
        "Image": dockerd.BASE_IMAGE,
        "Cmd": command,
        "WorkingDir": str(dockerd.ROOT),
        "HostConfig": {
            "NetworkMode": "host",
            "Binds": dockerd.host_binds(),
            "RestartPolicy": {"Name": "unless-stopped" if flavour == "rust" else "no"},
        },
    }
    call(api, "POST", "/containers/create", params={"name": name}, json=spec)


def reset(api: httpx.Client, primary: str, fallback: str, port: int) -> None:
    """The normal state: primary running (restart policy on) and answering, fallback stopped."""
    call(api, "POST", f"/containers/{fallback}/stop", params={"t": 10})
    call(api, "POST", f"/containers/{fallback}/update", json={"RestartPolicy": {"Name": "no"}})
    policy = {"RestartPolicy": {"Name": "unless-stopped"}}
    call(api, "POST", f"/containers/{primary}/update", json=policy)
    call(api, "POST", f"/containers/{primary}/start")
    answers(port, 30.0)


def fallback_start(api: httpx.Client, primary: str, fallback: str, port: int) -> float:
    call(api, "POST", f"/containers/{primary}/stop", params={"t": 10})
    started = time.monotonic()
    call(api, "POST", f"/containers/{fallback}/start")
    answers(port, 60.0)
    seconds = time.monotonic() - started
    reset(api, primary, fallback, port)
    return seconds


def write_config(folder: Path, socket: Path, primary: str, fallback: str, port: int) -> Path:
    folder.mkdir()
    path = folder / "config.yml"
    path.write_text(
        f"state_dir: {folder / 'state'}\n"
        f"docker: {{url: 'unix://{socket}'}}\n"
        "targets:\n"
        "  - name: lavalink\n"
        "    executor: docker\n"
        f"    primary: {{unit: {primary}, job: lavalink-rust}}\n"
        f"    fallback: {{unit: {fallback}, job: lavalink-java}}\n"
        f"    rules: [{dockerd.ROOT / 'rules' / 'lavalink.yml'}]\n"
        "    runbook:\n"
        f"      url: http://127.0.0.1:{port}\n"
        "      password_env: LAVALINK_BENCH_PASSWORD\n"
    )
    return path


def instant(text: str) -> float:
    """The CLI's RFC 3339 instants (millisecond precision) as seconds."""
    return datetime.fromisoformat(text).timestamp()


def timed(command: list[str], **options: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False, **options)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited {done.returncode}: {done.stdout}{done.stderr}")
    return time.monotonic() - started, done


def watchdog_run(config: Path) -> dict[str, Any]:
    order = ["rollback", "--config", str(config), "--reason", "bench", "--local", "--yes"]
    env = {**os.environ, "LAVALINK_BENCH_PASSWORD": PASSWORD}
    command = [sys.executable, "-m", "watchdog", *order, "--json"]
    total, done = timed(command, cwd=dockerd.ROOT, env=env, timeout=300)
    steps = json.loads(done.stdout)["steps"]
    seconds = {s["name"]: instant(s["finished_at"]) - instant(s["started_at"]) for s in steps}
    verified = next(s["detail"] for s in steps if s["name"] == "verify")
    up = re.search(r"up after ([0-9.]+)s", verified)
    derived = seconds["start-fallback"] + float(up.group(1)) if up else float("nan")
    run = instant(steps[-1]["finished_at"]) - instant(steps[0]["started_at"])
    return {"total": total, "run": run, "steps": seconds, "derived": derived}


def method3_run(script: Path, fallback: str, api: httpx.Client) -> tuple[float, dict[str, str]]:
    total, done = timed(["bash", str(script)], timeout=120)
    if not call(api, "GET", f"/containers/{fallback}/json").json()["State"]["Running"]:
        raise RuntimeError(f"Method 3 left {fallback} stopped: {done.stdout}{done.stderr}")
    return total, dict(re.findall(r"^(\w+_status)=(\d+)$", done.stdout, re.MULTILINE))


def one_run(engine: dockerd.Engine, folder: Path, index: int, docker: str, delay: float) -> Any:
    primary, fallback, port = f"bench-rust-{index}", f"bench-java-{index}", prometheus.free_port()
    names = {"docker": f"{docker} -H unix://{engine.socket}", "primary": primary, "port": port}
    script = folder / f"method3-{index}.sh"
    script.write_text(METHOD3.format(fallback=fallback, password=PASSWORD, **names))
    order = ["watchdog", "method3"] if index % 2 == 0 else ["method3", "watchdog"]
    result: dict[str, Any] = {"first": order[0]}
    with engine.client() as api:
        create(api, primary, port, "rust", 0.0)
        create(api, fallback, port, "java", delay)
        try:
            call(api, "POST", f"/containers/{primary}/start")
            answers(port, 30.0)
            result["fallback_start"] = fallback_start(api, primary, fallback, port)
            for position, method in enumerate(order):
                if position:
                    reset(api, primary, fallback, port)
                if method == "watchdog":
                    config = write_config(
                        folder / f"run-{index}", engine.socket, primary, fallback, port
                    )
                    result["watchdog"] = watchdog_run(config)
                else:
                    result["method3"], result["statuses"] = method3_run(script, fallback, api)
        finally:
            for name in (primary, fallback):
                api.delete(f"/containers/{name}", params={"force": "true"})
    return result


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    starts = [r["fallback_start"] for r in runs]
    totals = [r["watchdog"]["total"] for r in runs]
    method3 = [r["method3"] for r in runs]
    overheads = [total - start for total, start in zip(totals, starts, strict=True)]
    ran = [r["watchdog"]["run"] for r in runs]
    run_overheads = [run - start for run, start in zip(ran, starts, strict=True)]
    speedup = statistics.median(method3) / statistics.median(totals)
    steps = runs[0]["watchdog"]["steps"]
    return {
        "benchmark": "docker: watchdog rollback --local vs the procedure's Method 3",
        "method": "direct: the fallback started through the Engine API (primary stopped) until "
        "GET /version answers 200, before both methods; then reset",
        "fallback_startup_delay_s": args.startup_delay,
        "fallback_start_s": summary(starts),
        "watchdog_total_s": summary(totals),
        "watchdog_overhead_s": summary(overheads),
        "watchdog_run_s": summary(ran),
        # the daemon's path: it is running already when it rolls back, so no process start
        "watchdog_run_overhead_s": summary(run_overheads),
        "watchdog_step_s_median": {
            name: round(statistics.median(r["watchdog"]["steps"][name] for r in runs), 3)
            for name in steps
        },
        "derived_fallback_start_s": summary([r["watchdog"]["derived"] for r in runs]),
        "method3_total_s": summary(method3),
        "method3_curl_statuses": [r["statuses"] for r in runs],
        "speedup_end_to_end": round(speedup, 2),
        "first_method": [r["first"] for r in runs],
        "targets": TARGETS,
        "met": {
            "overhead_below_s": statistics.median(run_overheads) < TARGETS["overhead_below_s"],
            "overhead_below_s_cli": statistics.median(overheads) < TARGETS["overhead_below_s"],
            "speedup_at_least": speedup >= TARGETS["speedup_at_least"],
        },
        "notes": NOTES,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs, fresh containers each [5]")
    parser.add_argument("--startup-delay", type=float, default=3.0, help="fallback's, s [3]")
    parser.add_argument("--docker", default=shutil.which("docker"), help="the docker CLI")
    args = parser.parse_args()
    reason = dockerd.unavailable_reason() or (None if args.docker else "no docker CLI")
    if reason is not None:
        print(json.dumps({"benchmark": "docker", "skipped": reason}))
        return 2
    cli = subprocess.run([args.docker, "--version"], capture_output=True, text=True, check=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with (
        tempfile.TemporaryDirectory(prefix="bench-docker-") as temp,
        dockerd.running_engine() as engine,
    ):
        dockerd.import_base(engine)
        with engine.client() as api:
            version = call(api, "GET", "/version").json()
        runs = [
            one_run(engine, Path(temp), index, args.docker, args.startup_delay)
            for index in range(args.runs)
        ]
    document = report(runs, args)
    document["engine"] = {"version": version["Version"], "api": version["ApiVersion"]}
    document["docker_cli"] = {"path": args.docker, "version": cli.stdout.strip()}
    document["cpus"] = os.cpu_count()
    document["load_average"] = {
        "before": load_before,
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

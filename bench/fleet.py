"""Benchmark: fleet mode with 50 real daemons of one group on one private PostgreSQL.

Every node is a real ``rollback-watchdog run`` process (approve mode, Slack on the lab's fake)
guarding its own pair of units on one sandbox systemd: the executor is the sandbox's real
systemd, not a recording one. A bad release is injected on 5 nodes (their primaries crash
loop). The bench measures what fleet mode promises:

- ``slack_messages``/``approvals_needed``: top-level Slack messages and fleet approvals asked
  for the 5 failing nodes (target: 1 and 1);
- ``approval_to_action_ms``: from one Approve click, delivered to a node that is *not* one of
  the 5, until each of the 5 starts its run (p50/p99 over the 5);
- the 5 rollbacks make the release bad (``release_bad_when: {nodes: 5}``, ``on_bad_release:
  auto``): the other 45 are rolled back in waves of ``max_parallel``;
  ``seconds_release_bad_to_last_wave`` is from the rollout's start to the last wave's end;
- ``max_concurrent_switches`` over every run's [start, end] in the journals (target: never above
  ``max_parallel``); ``double_switches``: nodes with more than one run, or both units active;
- PostgreSQL is stopped for ``--outage`` seconds mid-rollout; ``store_outage_actions_lost`` is
  every local run the store does not have afterwards (target: 0);
- ``store_queries_per_node_per_tick``: statements (pg_stat_statements) and transactions
  (pg_stat_database) per node per evaluation tick while the group is idle, at two group sizes
  (``--nodes`` and a fifth of it), to show it does not grow with the group.

Prints one JSON object. Run: ``make bench-fleet`` (root: the sandbox systemd needs it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from watchdog import timefmt
from watchdog_lab import fleetlab, postgres, sandbox

ROOT = Path(__file__).resolve().parent.parent
INTERVAL = 5.0  # each daemon's evaluation interval (seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--bad", type=int, default=5)
    parser.add_argument("--max-parallel", type=int, default=5)
    parser.add_argument("--outage", type=float, default=10.0, help="seconds PostgreSQL is down")
    args = parser.parse_args()
    for reason in (sandbox.unavailable_reason(), postgres.unavailable_reason()):
        if reason is not None:
            print(json.dumps({"skipped": reason}))
            return 2
    nodes = fleetlab.names(args.nodes)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as folder:
        host = Path(folder)
        rules = ROOT / "rules" / "http-service.yml"
        with (
            fleetlab.slack_in_thread() as slack,
            fleetlab.running(
                host,
                nodes,
                rules,
                base_port=19000,
                settings={
                    "shared_preload_libraries": "pg_stat_statements",
                    "max_connections": "400",
                },
            ) as fleet,
        ):
            small = nodes[: max(2, args.nodes // 5)]
            idle_small = idle_queries(fleet, small, "idle_small", slack.api_url)
            result = scenario(fleet, nodes, args, slack)
            result["store_queries_per_node_per_tick"] = {
                f"{len(small)}_nodes": idle_small,
                f"{len(nodes)}_nodes": result.pop("idle"),
            }
    print(json.dumps(result, indent=2))
    return 0


def configs_for(
    fleet: fleetlab.Fleet, case: str, nodes: tuple[str, ...], dsn: str, slack_url: str, **more: Any
) -> dict[str, Path]:
    return {
        node: fleet.config(
            case,
            node,
            dsn,
            interval=f"{int(INTERVAL)}s",
            probes="{enabled: false}",  # no Prometheus here to read them: spare the CPU
            watch="2s",
            # 100 processes share 2 cores here: a lease of 4 s would be lost to CPU starvation
            heartbeat="3s",
            lease="20s",
            **fleet.approving(case, node, slack_url),
            **more,
        )
        for node in nodes
    }


def status(fleet: fleetlab.Fleet, config: Path) -> dict[str, Any] | None:
    """``fleet status --json`` as a node's operator sees it; None while it cannot answer."""
    shown = fleet.cli(config, "fleet", "status", "--json")
    if shown.returncode not in (0, 1) or not shown.stdout.strip():
        return None
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


def members(fleet: fleetlab.Fleet, config: Path) -> int:
    found = status(fleet, config)
    return len(found["nodes"]) if found else 0


def counters(dsn: str) -> tuple[int, int]:
    """(statements, transactions) the fleet database has seen so far."""
    with psycopg.connect(dsn, autocommit=True) as db:
        calls = db.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()"
        ).fetchone()
        xacts = db.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
    return int(calls[0] if calls else 0), int(xacts[0] if xacts else 0)


def measure_idle(dsn: str, count: int, seconds: float = 20.0) -> dict[str, float]:
    before = counters(dsn)
    time.sleep(seconds)
    after = counters(dsn)
    ticks = count * seconds / INTERVAL
    return {
        "statements": round((after[0] - before[0]) / ticks, 2),
        "transactions": round((after[1] - before[1]) / ticks, 2),
    }


def idle_queries(
    fleet: fleetlab.Fleet, nodes: tuple[str, ...], case: str, slack_url: str
) -> dict[str, float]:
    dsn = fleet.database(case)
    enable_statements(dsn)
    configs = configs_for(fleet, case, nodes, dsn, slack_url)
    for node in nodes:
        fleet.reset(node)
    with fleet.daemons(configs):
        fleetlab.wait_for(
            "every member", lambda: members(fleet, configs[nodes[0]]) == len(nodes), 180, []
        )
        time.sleep(5)  # settled: warm starts done
        return measure_idle(dsn, len(nodes))


def enable_statements(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def scenario(
    fleet: fleetlab.Fleet, nodes: tuple[str, ...], args: argparse.Namespace, slack: Any
) -> dict[str, Any]:
    dsn = fleet.database("bench")
    enable_statements(dsn)
    configs = configs_for(
        fleet,
        "bench",
        nodes,
        dsn,
        slack.api_url,
        max_parallel=args.max_parallel,
        release_bad_when=f"{{nodes: {args.bad}, within: 30m}}",
        on_bad_release="auto",
        wave_pause="1s",
    )
    logs = [c.parent / "daemon.log" for c in configs.values()]
    for node in nodes:
        fleet.reset(node)
    bad, rest = nodes[: args.bad], nodes[args.bad :]
    first = configs[nodes[0]]
    with fleet.daemons(configs):
        fleetlab.wait_for("every member", lambda: members(fleet, first) == len(nodes), 300, logs)
        time.sleep(5)
        idle = measure_idle(dsn, len(nodes))
        posted_before = len(slack.calls_to("chat.postMessage"))
        for node in bad:
            fleet.faults(node, "new", "--exit-after 1")
        fleet.box.systemctl("restart", *(fleetlab.primary(n) for n in bad))

        def incident() -> dict[str, Any] | None:
            found = status(fleet, first)
            return found["incidents"][0] if found and found["incidents"] else None

        fleetlab.wait_for(
            "the failing nodes in one incident",
            lambda: (i := incident()) is not None and len(i["members"]) == len(bad),
            120,
            logs,
        )
        time.sleep(2 * INTERVAL)  # every failing node ticked with its approval pending
        found = incident()
        if found is None:
            raise RuntimeError("the fleet incident is gone")
        top_level = [
            c
            for c in slack.calls_to("chat.postMessage")[posted_before:]
            if not c.args.get("thread_ts")
        ]
        with psycopg.connect(dsn) as db:
            asked = db.execute("SELECT count(*) FROM fleet_incidents WHERE asks").fetchone()
        clicked_at = time.time()
        answered = fleet.click(nodes[-1], found["id"], user="U0ALICE", action_ts="1.000001")
        if answered != 200:
            raise RuntimeError(f"the click was answered {answered}")
        fleetlab.wait_for(
            "the failing nodes' runs",
            lambda: all(fleetlab.runs(configs[n]) for n in bad),
            120,
            logs,
        )
        to_action = sorted(
            (fleetlab.runs(configs[n])[0]["started_at"] - clicked_at) * 1000 for n in bad
        )
        fleetlab.wait_for("the rollout", lambda: rollout_started(dsn) is not None, 120, logs)
        fleetlab.wait_for(
            "a third of the rest switched",
            lambda: sum(1 for n in rest if fleetlab.runs(configs[n])) >= len(rest) // 3,
            300,
            logs,
        )
        fleet.cluster.stop()
        time.sleep(args.outage)
        fleet.cluster.start()
        fleetlab.wait_for(
            "every node switched",
            lambda: all(
                (r := fleetlab.runs(configs[n])) and r[-1]["status"] != "running" for n in nodes
            ),
            600,
            logs,
        )
        time.sleep(3)  # the last runs reach the store
        every = {n: fleetlab.runs(configs[n]) for n in nodes}
        stored = set(fleetlab.store_runs(dsn))
        bad_at = rollout_started(dsn)
        slots_held, freed_by_lease = slot_history(dsn)
        both_active = [
            n
            for n in nodes
            if fleet.box.unit_state(fleetlab.primary(n)) == "active"
            and fleet.box.unit_state(fleetlab.fallback(n)) == "active"
        ]
    spans = [(r["started_at"], r["finished_at"]) for found in every.values() for r in found]
    wave_ends = [r["finished_at"] for n in rest for r in every[n]]
    return {
        "nodes": len(nodes),
        "bad_release_on": len(bad),
        "max_parallel": args.max_parallel,
        "executor": "the sandbox's real systemd (every node its own pair of units)",
        "slack_messages": len(top_level),
        "approvals_needed": int(asked[0]) if asked else None,
        "double_switches": sum(len(r) - 1 for r in every.values() if len(r) > 1) + len(both_active),
        "max_concurrent_switches": max_overlap(spans),
        "max_slots_held": slots_held,  # by the store's own audit trail (taken, released, freed)
        "slots_freed_by_lease": freed_by_lease,
        "seconds_release_bad_to_last_wave": round(max(wave_ends) - bad_at, 1)
        if wave_ends and bad_at
        else None,
        "runs_succeeded": sum(1 for r in every.values() for x in r if x["status"] == "succeeded"),
        "approval_to_action_ms": {
            "p50": round(statistics.median(to_action), 1),
            "p99": round(quantile(to_action, 0.99), 1),
            "min": round(to_action[0], 1),
            "samples": len(to_action),
        },
        "store_outage_seconds": args.outage,
        "store_outage_actions_lost": sum(
            1
            for n, found in every.items()
            for r in found
            if (n, r["id"], r["status"]) not in stored
        ),
        "idle": idle,
        "measured_at": timefmt.format_instant(time.time()),
    }


def slot_history(dsn: str) -> tuple[int, int]:
    """The most slots held at once, replaying the audit trail; slots freed by a lease."""
    with psycopg.connect(dsn) as db:
        events = db.execute(
            "SELECT event FROM fleet_audit WHERE event IN"
            " ('slot taken', 'slot released', 'slot freed') ORDER BY id"
        ).fetchall()
    held = most = freed = 0
    for (event,) in events:
        held += 1 if event == "slot taken" else -1
        freed += event == "slot freed"
        most = max(most, held)
    return most, freed


def rollout_started(dsn: str) -> float | None:
    with psycopg.connect(dsn) as db:
        row = db.execute(
            "SELECT extract(epoch FROM min(at)) FROM fleet_audit WHERE event = 'rollout started'"
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def max_overlap(spans: list[tuple[float, float | None]]) -> int:
    events = sorted(
        itertools.chain.from_iterable(
            ((start, 1), (end if end is not None else float("inf"), -1)) for start, end in spans
        ),
        key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
    )
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


if __name__ == "__main__":
    sys.exit(main())

"""Fleet mode with real parts: watchdog daemons (real processes) against one private
PostgreSQL, each guarding its own pair of units on one sandbox systemd (``watchdog_lab.fleetlab``).

- three crash-looping nodes with ``max_parallel: 1`` switch one at a time in one fleet incident,
  every switch verified, and the store's copy of the runs agrees with each node's journal;
- a switch that fails its verification halts the group: a second failing node waits (its
  decisions say why) until ``fleet resume``, then switches at once (LISTEN wakes it);
- cut off from the store (PostgreSQL stopped), a crash-looping node still switches once on
  local evidence, and its run reaches the store when PostgreSQL is back;
- approve mode: one Slack message and one approval for three failing nodes, the click
  delivered to a node that does not own the message; every node acts, one at a time;
- the release is bad: the rest is rolled back in waves; upstream, not the release;
- ``kill -9`` of a node holding a slot mid-switch; PostgreSQL down for 60 s mid-wave.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from watchdog import timefmt
from watchdog_lab import fleetlab, postgres, sandbox
from watchdog_lab.fleetlab import (
    Fleet,
    approvals,
    fallback,
    outcomes,
    primary,
    runs,
    slack_in_thread,
    steps,
    store_runs,
    wait_for,
)

psycopg = pytest.importorskip("psycopg")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        sandbox.unavailable_reason() is not None or postgres.unavailable_reason() is not None,
        reason=f"needs the sandbox and PostgreSQL: {sandbox.unavailable_reason()} "
        f"{postgres.unavailable_reason()}",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
NODES = fleetlab.names(3)
BYSTANDER = "n4"  # a healthy member of the group: a click may reach it, it never switches
OUTAGE = 60.0  # seconds PostgreSQL is down mid-incident and mid-wave (the figure)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    host = tmp_path_factory.mktemp("fleet")
    nodes = (*NODES, BYSTANDER)
    with fleetlab.running(host, nodes, ROOT / "rules" / "http-service.yml") as running:
        yield running


def test_three_failing_nodes_switch_one_at_a_time_and_the_store_agrees(fleet: Fleet) -> None:
    for node in NODES:  # healthy at first; the fallbacks take 2 s to start (a run takes longer)
        fleet.reset(node, old="--startup-delay 2")
    dsn = fleet.database("one_at_a_time")
    configs = {node: fleet.config("one-at-a-time", node, dsn) for node in NODES}
    logs = [c.parent / "daemon.log" for c in configs.values()]

    def all_ended() -> bool:
        found = [runs(c) for c in configs.values()]
        return all(r and r[-1]["status"] != "running" for r in found)

    with fleet.daemons(configs):
        wait_for("three members", lambda: len(members(fleet, configs["n1"])) == 3, 60, logs)
        for node in NODES:  # the new release fails on all three at once
            fleet.faults(node, "new", "--exit-after 1")
        fleet.box.systemctl("restart", *(primary(node) for node in NODES))
        wait_for("three switches", all_ended, 180, logs)
        time.sleep(1.5)  # the last slot's release and the heartbeat that copies the run
        shown = fleet.cli(configs["n1"], "fleet", "status", "--json")
    every = {node: runs(config) for node, config in configs.items()}
    for node, found in every.items():
        assert [r["status"] for r in found] == ["succeeded"], (node, found)
        assert fleet.box.unit_state(fallback(node)) == "active"
    # max_parallel 1: no two switches overlapped in time
    spans = sorted((r[0]["started_at"], r[0]["finished_at"]) for r in every.values())
    for (_, first_end), (second_start, _) in itertools.pairwise(spans):
        assert second_start >= first_end, spans
    # the nodes that came later were told to wait for the slot, in their journals' own words
    waited = [n for n, c in configs.items() if any("fleet switch slot" in o for o in outcomes(c))]
    assert len(waited) >= 1, "no node ever waited for a slot"
    # the store has every node's run as the node's journal has it
    assert store_runs(dsn) == [(n, every[n][0]["id"], "succeeded") for n in NODES]
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert not status["halted"] and not status["slots"]
    assert {n["node"]: n["side"] for n in status["nodes"]} == dict.fromkeys(NODES, "fallback")
    assert len([a for a in status["audit"] if a["event"] == "slot taken"]) == 3
    # one fleet incident for the three (auto mode: no approval asked)
    (incident,) = status["incidents"]
    assert sorted(incident["members"]) == [f"{n}/app" for n in NODES]
    assert not incident["asks_approval"]


def members(fleet: Fleet, config: Path) -> list[dict[str, Any]]:
    shown = fleet.cli(config, "fleet", "status", "--json")
    return json.loads(shown.stdout)["nodes"] if shown.returncode in (0, 1) else []


def test_a_failed_switch_halts_the_group_until_an_operator_resumes(fleet: Fleet) -> None:
    fleet.reset("n1", new="--exit-after 1", old="--fail-at-start")  # its fallback is broken
    fleet.reset("n2")
    dsn = fleet.database("halt")
    configs = {node: fleet.config("halt", node, dsn) for node in ("n1", "n2")}
    logs = [c.parent / "daemon.log" for c in configs.values()]
    with fleet.daemons(configs):
        wait_for(
            "n1's switch to fail",
            lambda: (r := runs(configs["n1"])) and r[-1]["status"] == "restored",
            120,
            logs,
        )
        halted = fleet.cli(configs["n2"], "fleet", "status")
        wait_for(
            "the group to be halted",
            lambda: fleet.cli(configs["n2"], "fleet", "status").returncode == 1,
            20,
            logs,
        )
        fleet.reset("n2", new="--exit-after 1")  # now n2's release fails too
        wait_for(
            "n2 to be held by the halt",
            lambda: any("fleet group is halted" in o for o in outcomes(configs["n2"])),
            60,
            logs,
        )
        assert runs(configs["n2"]) == []  # no switch while halted
        halted = fleet.cli(configs["n2"], "fleet", "status")
        assert halted.returncode == 1 and "HALTED" in halted.stdout, halted.stdout
        resumed = fleet.cli(configs["n2"], "fleet", "resume", "--by", "alice")
        assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr
        wait_for(
            "n2 to switch after the resume",
            lambda: (r := runs(configs["n2"])) and r[-1]["status"] == "succeeded",
            60,
            logs,
        )
    assert fleet.box.unit_state(fallback("n2")) == "active"
    # restored and enabled: a degraded service beats none (it crash-loops, so it may be
    # between two of its restarts)
    assert fleet.box.unit_state(primary("n1")) in ("active", "activating")


def test_cut_off_from_the_store_a_node_still_switches_once_and_reconciles(fleet: Fleet) -> None:
    fleet.reset("n3")
    dsn = fleet.database("partition")
    configs = {"n3": fleet.config("partition", "n3", dsn)}
    logs = [configs["n3"].parent / "daemon.log"]
    with fleet.daemons(configs):
        wait_for(
            "n3 to join the store",
            lambda: fleet.cli(configs["n3"], "fleet", "status").returncode == 0,
            30,
            logs,
        )
        unknown = fleet.cli(configs["n3"], "fleet", "resume", "--group", "nobody")
        assert unknown.returncode == 2 and "no group 'nobody'" in unknown.stderr, unknown.stderr
        fleet.cluster.stop()
        try:
            fleet.reset("n3", new="--exit-after 1")
            wait_for(
                "n3's switch while cut off",
                lambda: (r := runs(configs["n3"])) and r[-1]["status"] == "succeeded",
                120,
                logs,
            )
            assert fleet.cli(configs["n3"], "fleet", "status").returncode == 3  # no answer
        finally:
            fleet.cluster.start()
        run_id = runs(configs["n3"])[-1]["id"]
        wait_for(
            "the run to reach the store",
            lambda: ("n3", run_id, "succeeded") in store_runs(dsn),
            30,
            logs,
        )
    assert "cut off from the fleet store" in logs[0].read_text()


def test_one_message_and_one_approval_for_three_failing_nodes(fleet: Fleet) -> None:
    for node in NODES:
        fleet.reset(node, new="--exit-after 1")
    fleet.reset(BYSTANDER)
    dsn = fleet.database("one_approval")
    with slack_in_thread() as slack:
        configs = {
            node: fleet.config(
                "one-approval",
                node,
                dsn,
                **fleet.approving("one-approval", node, slack.api_url),
            )
            for node in (*NODES, BYSTANDER)
        }
        failing = {node: configs[node] for node in NODES}
        logs = [c.parent / "daemon.log" for c in configs.values()]

        def fleet_incident() -> dict[str, Any] | None:
            shown = fleet.cli(configs["n1"], "fleet", "status", "--json")
            if shown.returncode != 0:
                return None
            incidents = json.loads(shown.stdout)["incidents"]
            return incidents[0] if incidents else None

        with fleet.daemons(configs):
            wait_for(
                "all three failing nodes in one fleet incident",
                lambda: (i := fleet_incident()) is not None and len(i["members"]) == 3,
                120,
                logs,
            )
            incident = fleet_incident()
            assert incident is not None and incident["status"] == "pending"
            assert BYSTANDER + "/app" not in incident["members"]
            time.sleep(2)  # every node has ticked with its approval pending: still one message
            posted = slack.calls_to("chat.postMessage")
            assert len(posted) == 1, [c.args.get("text") for c in posted]
            wait_for(
                "the message to list three nodes with the fleet's buttons",
                lambda: "Affected* (3)" in json.dumps(list(slack.messages.values())),
                20,
                logs,
            )
            assert f'"value": "f{incident["id"]}"' in json.dumps(list(slack.messages.values()))
            fleet.cluster.stop()  # mid-incident: the store is away for a minute
            try:
                time.sleep(OUTAGE)
                for config in configs.values():
                    assert runs(config) == []  # nobody switched: a fleet approval waits
            finally:
                fleet.cluster.start()
            wait_for("the store to answer", fleet_incident, 30, logs)
            # the click reaches the bystander (behind a load balancer): the store decides
            assert fleet.click(BYSTANDER, incident["id"], user="U0ALICE", action_ts="1.01") == 200
            wait_for(
                "every failing node to switch on the one approval",
                lambda: all(
                    (r := runs(c)) and r[-1]["status"] == "succeeded" for c in failing.values()
                ),
                180,
                logs,
            )
            wait_for(
                "each node's report in the one message's thread",
                lambda: len(slack.calls_to("chat.postMessage")) == 4,
                30,
                logs,
            )
            time.sleep(2 * 1.0)  # the bystander had time to do what it must not
        assert runs(configs[BYSTANDER]) == []  # the approval was never its own
        assert fleet.box.unit_state(primary(BYSTANDER)) == "active"
        every = {node: runs(config) for node, config in failing.items()}
        spans = sorted((r[0]["started_at"], r[0]["finished_at"]) for r in every.values())
        for (_, first_end), (second_start, _) in itertools.pairwise(spans):
            assert second_start >= first_end, spans  # max_parallel 1 holds for approved runs
        for node, config in failing.items():
            asked = approvals(config)
            assert [(a["status"], a["decided_by"]) for a in asked] == [("approved", "U0ALICE")], (
                node,
                asked,
            )
            assert every[node][0]["trigger"] == "approved"
            assert every[node][0]["initiated_by"] == "U0ALICE"
        posts = slack.calls_to("chat.postMessage")
        top = [c for c in posts if not c.args.get("thread_ts")]
        assert len(top) == 1, [c.args for c in top]  # one message for the fleet incident
        message_ts = next(iter(slack.messages))[1]  # the first message posted: the incident's
        replies = [c for c in posts if c.args.get("thread_ts")]
        assert len(replies) == 3 and {c.args["thread_ts"] for c in replies} == {message_ts}
        assert all("Rollback report" in c.args["text"] for c in replies)
        assert store_runs(dsn) == [(n, every[n][0]["id"], "succeeded") for n in NODES]


def test_the_fleet_message_outlives_its_owner(fleet: Fleet) -> None:
    for node in ("n1", "n2"):
        fleet.reset(node, new="--exit-after 1")
    dsn = fleet.database("owner_lost")
    with slack_in_thread() as slack:
        configs = {
            node: fleet.config(
                "owner-lost", node, dsn, **fleet.approving("owner-lost", node, slack.api_url)
            )
            for node in ("n1", "n2")
        }
        logs = [c.parent / "daemon.log" for c in configs.values()]

        def incident() -> dict[str, Any] | None:
            shown = fleet.cli(configs["n2"], "fleet", "status", "--json")
            found = json.loads(shown.stdout)["incidents"] if shown.returncode < 2 else []
            return found[0] if found else None

        def shared() -> bool:  # the owner told the store where its message is
            with psycopg.connect(dsn) as db:
                row = db.execute("SELECT message_ts FROM fleet_incidents").fetchone()
            return row is not None and row[0] is not None

        with (
            fleet.daemons({"n1": configs["n1"]}) as first,
            fleet.daemons({"n2": configs["n2"]}) as second,
        ):
            wait_for(
                "both in one incident, its message shared",
                lambda: (i := incident()) is not None and len(i["members"]) == 2 and shared(),
                120,
                logs,
            )
            found = incident()
            assert found is not None
            owner = found["owner"].split("/")[0]
            survivor = "n2" if owner == "n1" else "n1"
            os.kill({**first, **second}[owner], signal.SIGKILL)  # kill -9 the message's owner
            wait_for(
                "the survivor to take the message over",
                lambda: (i := incident()) is not None and i["owner"] == f"{survivor}/app",
                60,
                logs,
            )
            assert fleet.click(survivor, found["id"], user="U0ALICE", action_ts="2.01") == 200
            wait_for(
                "the survivor to switch, and the message to say so",
                lambda: (
                    (r := runs(configs[survivor]))
                    and r[-1]["status"] == "succeeded"
                    and "approved by U0ALICE" in json.dumps(next(iter(slack.messages.values())))
                ),
                90,
                logs,
            )
            with fleet.daemons({owner: configs[owner]}):  # the old owner comes back: it acts
                wait_for(
                    "the old owner to act on the approval it missed",
                    lambda: (r := runs(configs[owner])) and r[-1]["status"] == "succeeded",
                    90,
                    logs,
                )
                time.sleep(2)
        top = [c for c in slack.calls_to("chat.postMessage") if not c.args.get("thread_ts")]
        assert len(top) == 1  # still one message for the fleet incident
        assert [a["decided_by"] for a in approvals(configs[owner])] == ["U0ALICE"]
        assert store_runs(dsn) == [
            (n, runs(configs[n])[0]["id"], "succeeded") for n in ("n1", "n2")
        ]


def rolling_back(
    fleet: Fleet, case: str, dsn: str, *, bad_after: int
) -> tuple[dict[str, Path], list[Path]]:
    """The three nodes' configs (and logs) for a case where the release turns bad after
    ``bad_after`` rollbacks and the rest is rolled back at once, in waves a second apart."""
    configs = {
        node: fleet.config(
            case,
            node,
            dsn,
            release_bad_when=f"{{nodes: {bad_after}, within: 10m}}",
            on_bad_release="auto",
            wave_pause="1s",
        )
        for node in NODES
    }
    return configs, [c.parent / "daemon.log" for c in configs.values()]


def test_a_bad_release_rolls_the_rest_back_in_waves(fleet: Fleet) -> None:
    for node in NODES:
        fleet.reset(node)
    dsn = fleet.database("waves")
    configs, logs = rolling_back(fleet, "waves", dsn, bad_after=2)
    with fleet.daemons(configs):
        wait_for("three members", lambda: len(members(fleet, configs["n1"])) == 3, 60, logs)
        for node in ("n1", "n2"):  # the release fails on two of three: the rule holds
            fleet.faults(node, "new", "--exit-after 1")
        fleet.box.systemctl("restart", primary("n1"), primary("n2"))
        wait_for(
            "n3, healthy itself, to be rolled back by the rollout",
            lambda: (r := runs(configs["n3"])) and r[-1]["status"] == "succeeded",
            120,
            logs,
        )
        time.sleep(1.5)  # the rollout's bookkeeping after the last switch
        shown = fleet.cli(configs["n3"], "fleet", "status", "--json")
    first, second, rest = runs(configs["n1"]), runs(configs["n2"]), runs(configs["n3"])
    assert [len(first), len(second), len(rest)] == [1, 1, 1]  # nobody switched twice
    assert rest[0]["trigger"] == "auto" and rest[0]["initiated_by"].startswith("fleet rollout")
    assert "release app-2.0 is bad: 2 of 3 nodes rolled back" in rest[0]["reason"]
    assert rest[0]["started_at"] >= max(first[0]["finished_at"], second[0]["finished_at"])
    status = json.loads(shown.stdout)
    (rollout,) = status["rollouts"]
    assert (rollout["release"], rollout["status"], rollout["switched"]) == ("app-2.0", "done", 1), (
        json.dumps(status["nodes"])
    )
    assert fleet.box.unit_state(fallback("n3")) == "active"


def test_a_failed_wave_halts_the_group_and_the_rollout_with_it(fleet: Fleet) -> None:
    fleet.reset("n1")
    for node in ("n2", "n3"):  # their fallbacks are broken: the first wave fails verification
        fleet.reset(node, old="--fail-at-start")
    dsn = fleet.database("failed_wave")
    configs, logs = rolling_back(fleet, "failed-wave", dsn, bad_after=1)
    with fleet.daemons(configs):
        wait_for("three members", lambda: len(members(fleet, configs["n1"])) == 3, 60, logs)
        fleet.faults("n1", "new", "--exit-after 1")
        fleet.box.systemctl("restart", primary("n1"))
        waved = ("n2", "n3")
        wait_for(
            "the first wave to fail",
            lambda: any((r := runs(configs[n])) and r[-1]["status"] == "restored" for n in waved),
            120,
            logs,
        )
        time.sleep(6)  # time enough for a second wave, which must not come
        shown = fleet.cli(configs["n1"], "fleet", "status", "--json")
    assert shown.returncode == 1, shown.stdout  # halted
    status = json.loads(shown.stdout)
    assert status["halted"] and "restored" in status["halt_reason"]
    switched = {n: runs(configs[n]) for n in waved}
    assert sorted(len(r) for r in switched.values()) == [0, 1], switched  # one wave, no more
    (rollout,) = status["rollouts"]
    assert (rollout["status"], rollout["switched"]) == ("rolling", 0)
    for node in waved:  # both still on the primary: restored, or never touched
        assert fleet.box.unit_state(fallback(node)) != "active"


LATENCY_NOW = """\
groups:
  - name: latency-now
    rules:
      # a latency rule without a `for`, so the test need not wait five minutes
      - alert: LatencyNow
        expr: rollback_watchdog_probe_duration_seconds_sum{target="app"} > 1000
        labels:
          severity: critical
          rollback_category: performance
        annotations:
          summary: "slow"
"""


def alert(started: str, status: str = "firing") -> dict[str, Any]:
    """Alertmanager's notification for the latency rule, for the target ``app``."""
    labels = {
        "alertname": "LatencyNow",
        "rollback_target": "app",
        "severity": "critical",
        "rollback_category": "performance",
    }
    one = {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "slow"},
        "startsAt": started,
        "endsAt": "0001-01-01T00:00:00Z"
        if status == "firing"
        else timefmt.format_instant(time.time()),
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "f1e2d3c4b5a69788",
    }
    return {
        "version": "4",
        "groupKey": '{}:{alertname="LatencyNow"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "rollback-watchdog",
        "groupLabels": {"alertname": "LatencyNow"},
        "commonLabels": labels,
        "commonAnnotations": one["annotations"],
        "externalURL": "http://alertmanager:9093",
        "alerts": [one],
    }


AM_TOKEN = "fleet-am-token"


def deliver(fleet: Fleet, node: str, started: str, status: str = "firing") -> None:
    answer = httpx.post(
        f"http://127.0.0.1:{fleet.listen_port(node)}/alertmanager",
        json=alert(started, status),
        headers={"Authorization": f"Bearer {AM_TOKEN}"},
    )
    assert answer.status_code in (200, 202), answer.text


def firing_of(dsn: str, node: str) -> list[str]:
    with psycopg.connect(dsn) as db:
        row = db.execute("SELECT firing FROM fleet_nodes WHERE node = %s", (node,)).fetchone()
        return list(row[0]) if row else []


def test_the_same_latency_on_the_fallback_is_upstream_not_the_release(fleet: Fleet) -> None:
    fleet.reset("n2")
    fleet.reset("n1")
    fleet.box.systemctl("stop", primary("n1"))  # n1 was rolled back before: on the fallback
    fleet.box.systemctl("start", fallback("n1"))
    dsn = fleet.database("upstream")
    configs = {}
    for node, mode in (("n1", "observe"), ("n2", "auto")):
        folder = fleet.host / "cases" / "upstream" / node
        folder.mkdir(parents=True)
        (folder / "am").write_text(AM_TOKEN)
        (folder / "am").chmod(0o600)
        (folder / "latency-now.yml").write_text(LATENCY_NOW)
        configs[node] = fleet.config(
            "upstream",
            node,
            dsn,
            mode=mode,
            listen=f"{{host: 127.0.0.1, port: {fleet.listen_port(node)}}}",
            extra=f"""\
                alertmanager: {{token_file: {fleet.box.inside(folder)}/am}}
                policy: {{warmup: 0s}}
                """,
            rules=(fleet.box.inside(folder / "latency-now.yml"),),
        )
    logs = [c.parent / "daemon.log" for c in configs.values()]
    with fleet.daemons(configs):
        wait_for("two members", lambda: len(members(fleet, configs["n1"])) == 2, 60, logs)
        started = timefmt.format_instant(time.time())  # news: newer than the primary's start
        deliver(fleet, "n1", started)  # the node on the fallback sees the latency too ...
        wait_for(
            "n1 to tell its peers",
            lambda: "LatencyNow" in firing_of(dsn, "n1"),
            30,
            logs,
        )
        deliver(fleet, "n2", started)  # ... so on n2 it is upstream
        wait_for(
            "n2 to hold back: upstream",
            lambda: any("upstream, not the release" in o for o in outcomes(configs["n2"])),
            30,
            logs,
        )
        time.sleep(3)
        assert runs(configs["n2"]) == []  # never rolled back
        deliver(
            fleet, "n1", started, "resolved"
        )  # the control: the fallback is fine now, n2 still slow
        wait_for(
            "n2 to roll back once the fallback is fine",
            lambda: (r := runs(configs["n2"])) and r[-1]["status"] == "succeeded",
            60,
            logs,
        )
    assert "n1/app sees LatencyNow" in " ".join(outcomes(configs["n2"]))


def slots(fleet: Fleet, config: Path) -> list[str]:
    shown = fleet.cli(config, "fleet", "status", "--json")
    return [s["member"] for s in json.loads(shown.stdout)["slots"]] if shown.returncode < 2 else []


def test_a_node_killed_mid_switch_frees_its_slot_by_lease_and_resumes_its_run(
    fleet: Fleet,
) -> None:
    fleet.reset("n1", old="--startup-delay 6")  # n1's switch takes a while: time to kill it
    fleet.reset("n2")
    dsn = fleet.database("killed")
    configs = {node: fleet.config("killed", node, dsn) for node in ("n1", "n2")}
    logs = [c.parent / "daemon.log" for c in configs.values()]
    with fleet.daemons({"n2": configs["n2"]}):
        with fleet.daemons({"n1": configs["n1"]}) as pids:
            wait_for("two members", lambda: len(members(fleet, configs["n2"])) == 2, 60, logs)
            fleet.faults("n1", "new", "--exit-after 1")
            fleet.box.systemctl("restart", primary("n1"))
            wait_for(
                "n1 to hold the slot", lambda: slots(fleet, configs["n2"]) == ["n1/app"], 60, logs
            )
            fleet.faults("n2", "new", "--exit-after 1")
            fleet.box.systemctl("restart", primary("n2"))
            wait_for(
                "n1 mid-switch",
                lambda: any(s["name"] == "start-fallback" for s in steps(configs["n1"])),
                60,
                logs,
            )
            os.kill(pids["n1"], signal.SIGKILL)  # kill -9, holding the slot
            killed_at = time.time()
            wait_for(
                "n2 to switch once n1's lease ran out",
                lambda: (r := runs(configs["n2"])) and r[-1]["status"] == "succeeded",
                90,
                logs,
            )
            assert runs(configs["n2"])[0]["started_at"] >= killed_at + 3  # the lease (4 s)
        with fleet.daemons({"n1": configs["n1"]}):  # n1 again: it resumes its own switch
            wait_for(
                "n1's run to end after the restart",
                lambda: (r := runs(configs["n1"])) and r[-1]["status"] != "running",
                90,
                logs,
            )
            time.sleep(1.5)  # its end reaches the store
            shown = json.loads(fleet.cli(configs["n1"], "fleet", "status", "--json").stdout)
    first, second = runs(configs["n1"]), runs(configs["n2"])
    assert [r["status"] for r in first] == ["succeeded"], first  # one run, resumed, not two
    assert [r["status"] for r in second] == ["succeeded"], second
    assert fleet.box.unit_state(fallback("n1")) == "active"
    assert fleet.box.unit_state(primary("n1")) == "inactive"
    assert store_runs(dsn) == [
        ("n1", first[0]["id"], "succeeded"),
        ("n2", second[0]["id"], "succeeded"),
    ]
    freed = [a for a in shown["audit"] if a["event"] == "slot freed"]
    assert [(a["member"], a["detail"]) for a in freed] == [("n1/app", "lease expired")]
    assert not shown["slots"]


def test_a_store_outage_mid_wave_loses_nothing_and_switches_nobody_twice(fleet: Fleet) -> None:
    fleet.reset("n1")
    fleet.reset("n2", old="--startup-delay 4")  # the first wave is mid-switch at the outage
    fleet.reset("n3")
    dsn = fleet.database("outage")
    configs, logs = rolling_back(fleet, "outage", dsn, bad_after=1)
    with fleet.daemons(configs):
        wait_for("three members", lambda: len(members(fleet, configs["n1"])) == 3, 60, logs)
        fleet.faults("n1", "new", "--exit-after 1")
        fleet.box.systemctl("restart", primary("n1"))
        waving = [n for n in ("n2", "n3")]

        def mid_wave() -> bool:
            return any(
                any(s["name"] == "start-fallback" for s in steps(configs[n])) for n in waving
            )

        wait_for("the first wave mid-switch", mid_wave, 90, logs)
        fleet.cluster.stop()
        try:
            time.sleep(OUTAGE)
            # cut off: the wave in flight ended on its own; no next wave began meanwhile
            started = [n for n in waving if runs(configs[n])]
            assert len(started) == 1, started
            assert runs(configs[started[0]])[-1]["status"] == "succeeded"
        finally:
            fleet.cluster.start()
        wait_for(
            "the rest to switch once the store is back",
            lambda: all((r := runs(configs[n])) and r[-1]["status"] == "succeeded" for n in waving),
            120,
            logs,
        )
        time.sleep(1.5)
        shown = json.loads(fleet.cli(configs["n1"], "fleet", "status", "--json").stdout)
    every = {node: runs(config) for node, config in configs.items()}
    assert {n: len(r) for n, r in every.items()} == dict.fromkeys(NODES, 1)  # nobody twice
    assert store_runs(dsn) == [(n, every[n][0]["id"], "succeeded") for n in NODES]
    (rollout,) = shown["rollouts"]
    assert (rollout["status"], rollout["switched"]) == ("done", 2)
    assert "cut off from the fleet store" in "".join(p.read_text() for p in logs)

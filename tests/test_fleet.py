"""Fleet mode's pure parts and its edges, without a database: the settings, the DSN and its
secret parts, what the fleet says to a switch (slots, partitions, upstream), the notices on its
channel, the Slack buttons of a fleet incident, and the commands and routes when fleet mode is
off or the store is unreachable. The store itself is tested on a real PostgreSQL
(``tests/integration/test_fleet_store.py``), the daemons on a real systemd
(``tests/integration/test_fleet_daemons.py``)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from watchdog import config, credentials, errors, model, server, telemetry
from watchdog.fleet import admission, dsn, render
from watchdog.fleet.values import (
    AuditLine,
    GroupStatus,
    Member,
    News,
    Node,
    Notice,
    Rollout,
    Side,
    Slot,
    Ticket,
)
from watchdog.notify import FleetLine
from watchdog.notify.slack import APPROVE, blocks, parse_interaction
from watchdog_lab.slack import block_actions, interaction_body

ROOT = Path(__file__).resolve().parent.parent
TARGET = """\
targets:
  - name: lavalink
    primary: {unit: lavalink-rust.service, job: lavalink-rust}
    fallback: {unit: lavalink-java.service, job: lavalink-java}
    rules: [rules.yml]
"""


def settings(tmp_path: Path, fleet: str) -> config.Settings:
    path = tmp_path / "config.yml"
    path.write_text(textwrap.dedent(fleet) + TARGET)
    return config.load(path)


def test_fleet_mode_is_off_unless_configured(tmp_path: Path) -> None:
    assert settings(tmp_path, "").fleet is None


def test_fleet_defaults(tmp_path: Path) -> None:
    fleet = settings(tmp_path, "fleet: {group: bots, dsn_env: WD_DSN}\n").fleet
    assert fleet is not None
    assert (fleet.max_parallel, fleet.lease, fleet.heartbeat) == (1, 30.0, 10.0)
    assert fleet.on_bad_release == "propose" and fleet.release_bad_when.nodes == 3
    assert fleet.node  # the host's name
    assert not fleet.migrate_at_start


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ("fleet: {group: bots}", "give dsn_file or dsn_env"),
        ("fleet: {group: bots, dsn_env: A, dsn_file: /x}", "give one of dsn_file or dsn_env"),
        ("fleet: {group: bots, dsn_env: A, heartbeat: 20s}", "at most half the lease"),
        ("fleet: {group: 'a b', dsn_env: A}", "fleet.group"),
        ("fleet: {group: bots, dsn_env: A, max_parallel: 0}", "fleet.max_parallel"),
        (
            "fleet: {group: bots, dsn_env: A, release_bad_when: {nodes: null}}",
            "give nodes, fraction or both",
        ),
        ("fleet: {group: bots, dsn_env: A, on_bad_release: yes}", "fleet.on_bad_release"),
        ("fleet: {group: bots, dsn_env: A, pool: 3}", "unknown field"),
    ],
)
def test_bad_fleet_settings_are_named(tmp_path: Path, fleet: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        settings(tmp_path, fleet + "\n")


def test_the_dsn_comes_from_a_file_and_its_password_is_secret(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("host=db.example port=5432 dbname=fleet user=wd password=pa55-w0rd\n")
    fleet = config.FleetSettings(group="bots", dsn_file=secret)
    read = dsn.read(fleet)
    assert read.endswith("password=pa55-w0rd")
    assert dsn.secret_parts(read) == [read, "pa55-w0rd"]
    uri = "postgresql://wd:s3cr%40t@db.example/fleet?sslmode=verify-full"
    assert dsn.secret_parts(uri)[1:] == ["s3cr@t", "s3cr%40t"]  # decoded, and as written


def test_a_dsn_that_is_not_one_is_refused_without_being_quoted() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        dsn.secret_parts("host=db password='unterminated")
    assert "unterminated" not in str(caught.value)
    assert "not a libpq connection string" in str(caught.value)


def test_an_empty_dsn_variable_is_a_clear_error() -> None:
    fleet = config.FleetSettings(group="bots", dsn_env="WD_FLEET_DSN_UNSET")
    with pytest.raises(errors.ConfigError, match=r"\$WD_FLEET_DSN_UNSET is not set"):
        dsn.read(fleet)


def test_the_daemons_secrets_include_the_dsn_and_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchdog.runtime.secrets import Secrets

    monkeypatch.setenv("WD_DSN", "postgresql://wd:hunter22@db/fleet")
    monkeypatch.setenv("WD_PW", "lavalink-pw")
    loaded = settings(tmp_path, "fleet: {group: bots, dsn_env: WD_DSN}\n")
    target = loaded.targets[0].model_copy(
        update={"runbook": loaded.targets[0].runbook.model_copy(update={"password_env": "WD_PW"})}
    )
    secrets = Secrets.read(loaded.model_copy(update={"targets": [target]}))
    assert secrets.fleet_dsn == "postgresql://wd:hunter22@db/fleet"
    assert "hunter22" in secrets.values()  # the log redacts the password on its own too
    assert "hunter22" not in repr(secrets)


# --- What the fleet says to a switch ------------------------------------------------------------


def rule(name: str, category: model.Category) -> model.Rule:
    return model.Rule(
        name=name,
        expr="up == 0",
        for_seconds=0.0,
        severity=category.severity,
        category=category,
        summary="",
    )


def evaluation(*firing: tuple[str, model.Category]) -> model.Evaluation:
    signals = tuple(
        model.Signal(rule(name, category), model.SignalState.FIRING) for name, category in firing
    )
    quiet = model.Signal(rule("Quiet", model.Category.INSTABILITY), model.SignalState.OK)
    return model.Evaluation("lavalink", 0.0, (*signals, quiet))


def test_slot_answers() -> None:
    a, b = Member("a", "lavalink"), Member("b", "lavalink")
    assert admission.slot_answer(Slot.GRANTED, [a], max_parallel=1) is None
    assert admission.slot_answer(Slot.HELD, [a], max_parallel=1) is None
    full = admission.slot_answer(Slot.FULL, [a, b], max_parallel=2)
    assert full == "waiting for a fleet switch slot: 2 of 2 taken by a/lavalink, b/lavalink"
    halted = admission.slot_answer(Slot.HALTED, [], max_parallel=1, halt_reason="b: restored")
    assert halted is not None and "halted (b: restored)" in halted and "fleet resume" in halted
    paused = admission.slot_answer(Slot.PAUSED, [], max_parallel=1)
    assert paused is not None and "pause between two waves" in paused


def test_cut_off_only_local_instability_acts_and_only_once() -> None:
    crash = evaluation(("UnitCrashLoop", model.Category.INSTABILITY))
    latency = evaluation(("LatencyHigh", model.Category.PERFORMANCE))
    assert admission.cut_off_answer(crash, switched=0) is None
    once = admission.cut_off_answer(crash, switched=1)
    assert once is not None and "already switched once" in once
    slow = admission.cut_off_answer(latency, switched=0)
    assert slow is not None and "only local evidence of instability" in slow


def test_upstream_suspects_are_sources_and_latency_alone() -> None:
    sources = evaluation(("SourceDown", model.Category.SOURCE_FAILURE))
    assert admission.upstream_suspects(sources) == ("SourceDown",)
    both = evaluation(
        ("SourceDown", model.Category.SOURCE_FAILURE), ("Latency", model.Category.PERFORMANCE)
    )
    assert admission.upstream_suspects(both) == ("SourceDown", "Latency")
    with_crash = evaluation(
        ("SourceDown", model.Category.SOURCE_FAILURE), ("Crash", model.Category.INSTABILITY)
    )
    assert admission.upstream_suspects(with_crash) == ()  # a crash is never upstream
    assert admission.upstream_suspects(evaluation()) == ()
    assert admission.upstream_answer([]) is None
    said = admission.upstream_answer([(Member("c", "lavalink"), ("SourceDown",))])
    assert said == (
        "upstream, not the release: on the fallback too, c/lavalink sees SourceDown; "
        "not rolling back"
    )
    assert admission.firing_names(both) == ("SourceDown", "Latency")


def test_notices_round_trip_and_unknown_ones_are_skipped() -> None:
    notice = Notice("bots", News.DECIDED, 12)
    assert Notice.parse(notice.payload()) == notice
    assert Notice.parse(Notice("bots", News.SLOT).payload()) == Notice("bots", News.SLOT)
    for junk in ("bots", "{}", '{"group": "g", "news": "teleported"}', "[1]", "null"):
        assert Notice.parse(junk) is None


# --- Its message --------------------------------------------------------------------------------


def test_a_fleet_incidents_buttons_answer_the_fleet_incident() -> None:
    from watchdog.notify import Card

    card = Card(
        incident=3,
        target="lavalink",
        primary="lavalink-rust.service",
        fallback="lavalink-java.service",
        verdict="rollback",
        score=0.0,
        reason="crash loop",
        mode="approve",
        signals=(),
        status="Awaiting approval (0 of 1) for every node",
        approval=None,
        fleet=FleetLine(17, "bots", "rust-4.1", ("n1/lavalink", "n2/lavalink"), asking=True),
    )
    message = blocks(card)
    (actions,) = [b for b in message if b["type"] == "actions"]
    assert {e["value"] for e in actions["elements"]} == {"f17"}
    text = str(message)
    assert "Fleet incident* #17" in text and "Affected* (2)" in text
    payload = block_actions(action="approve", value="f17", user_id="U0ALICE")
    clicked = parse_interaction(interaction_body(payload))
    assert clicked.fleet and clicked.approval == 17 and clicked.action == APPROVE
    assert clicked.click().fleet
    decided = dataclasses.replace(card, fleet=dataclasses.replace(card.fleet, asking=False))
    assert not [b for b in blocks(decided) if b["type"] == "actions"]  # decided: no buttons
    local = parse_interaction(interaction_body(block_actions(value="17", user_id="U0ALICE")))
    assert not local.fleet and local.nonce != clicked.nonce  # one click is one vote, per kind


@pytest.mark.parametrize("value", ["f", "fx", "f0", "ff1", "F1", "f-1"])
def test_a_malformed_fleet_button_value_is_refused(value: str) -> None:
    with pytest.raises(errors.InputError, match="positive integer"):
        parse_interaction(interaction_body(block_actions(value=value)))


# --- fleet status, as read ----------------------------------------------------------------------


def at(minute: int) -> datetime:
    return datetime(2026, 12, 7, 9, minute, tzinfo=UTC)


def group_status(*, halted: bool) -> GroupStatus:
    a = Member("n1", "lavalink")
    return GroupStatus(
        name="bots",
        halted_at=at(5) if halted else None,
        halted_by="n1/lavalink" if halted else None,
        halt_reason="n1/lavalink: run #1 restored" if halted else None,
        nodes=(
            Node(
                a,
                "bots",
                Side.FALLBACK,
                "rust-4.1",
                at(1),
                at(2),
                lost=True,
                switching=False,
                firing=("LavalinkSourceDown",),
            ),
        ),
        slots=(),
        runs=(),
        audit=(AuditLine(at(3), a, "slot taken", "critical: UnitCrashLoop"),),
        incidents=(
            Ticket(7, "bots", "rust-4.1", a, True, "pending", 2, ("alice",), at(30), (a,), None),
        ),
        rollouts=(
            Rollout(
                "bots",
                "rust-4.1",
                "proposed",
                "release rust-4.1 is bad",
                at(4),
                None,
                None,
                None,
                0,
            ),
        ),
    )


def test_fleet_status_as_json_has_rfc3339_times_and_every_part() -> None:
    shown = render.as_dict(group_status(halted=True), "bots")
    assert shown["halted"] and shown["halted_at"] == "2026-12-07T09:05:00Z"
    (node,) = shown["nodes"]
    assert node == {
        "node": "n1",
        "target": "lavalink",
        "state": "lost",
        "side": "fallback",
        "release": "rust-4.1",
        "seen_at": "2026-12-07T09:01:00Z",
        "lease_until": "2026-12-07T09:02:00Z",
        "firing": ["LavalinkSourceDown"],
    }
    (incident,) = shown["incidents"]
    assert (incident["id"], incident["approved_by"], incident["members"]) == (
        7,
        ["alice"],
        ["n1/lavalink"],
    )
    assert shown["rollouts"][0]["status"] == "proposed"


def test_fleet_status_as_text_says_how_to_go_on() -> None:
    text = render.as_text(group_status(halted=True))
    assert "HALTED since 2026-12-07T09:05:00Z" in text and "fleet resume" in text
    assert "firing: LavalinkSourceDown" in text
    assert "lost" in text and "approval 1 of 2" in text and "fleet approve-waves" in text
    assert "automatic switches allowed" in render.as_text(group_status(halted=False))


# --- Off, or unreachable ------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_fleet_commands_without_fleet_mode_say_so(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(TARGET)
    for args in (["migrate"], ["fleet", "status"], ["fleet", "resume"]):
        done = cli(*args, "--config", str(path))
        assert done.returncode == 2, done.stderr
        assert "no fleet: section" in done.stderr and "Traceback" not in done.stderr


def test_an_unreachable_store_is_exit_3_and_the_dsn_is_never_printed(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://wd:n0t-for-logs@127.0.0.1:1/fleet?connect_timeout=2\n")
    secret.chmod(0o600)
    path = tmp_path / "config.yml"
    path.write_text(f"fleet: {{group: bots, dsn_file: {secret}, timeout: 2s}}\n" + TARGET)
    for args in (["migrate"], ["fleet", "status", "--json"]):
        done = cli(*args, "--config", str(path))
        assert done.returncode == 3, done.stdout + done.stderr  # did not answer, as Prometheus
        assert "the fleet store did not answer" in done.stderr
        assert "n0t-for-logs" not in done.stderr + done.stdout and "Traceback" not in done.stderr


async def test_the_fleet_routes_answer_404_when_fleet_mode_is_off() -> None:
    async def nothing() -> None:
        return None

    async def status() -> dict[str, Any]:
        return {}

    app = server.build_app(
        config.ListenSettings(),
        telemetry.Recorder(),
        operators=(credentials.Identity("alice", "tok-alice"),),
        status=status,
        readiness=nothing,
    )
    async with TestClient(TestServer(app)) as client:
        auth = {"Authorization": "Bearer tok-alice"}
        for method, path in (
            ("GET", "/api/v1/fleet"),
            ("POST", "/api/v1/fleet/resume"),
            ("POST", "/api/v1/fleet/waves/approve"),
        ):
            answer = await client.request(method, path, headers=auth)
            assert answer.status == 404, (path, await answer.text())
            assert "fleet mode is off" in await answer.text()
        unauthorized = await client.get("/api/v1/fleet")
        assert unauthorized.status == 401  # closed by default, like every operator route


def test_the_example_configs_fleet_section_validates_once_uncommented(tmp_path: Path) -> None:
    text = (ROOT / "config" / "lavalink.yml").read_text()
    lines = text.splitlines()
    start = lines.index(
        '# fleet:                 # fleet mode (README "Fleet mode"): many hosts, one PostgreSQL'
    )
    section = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        section.append(line[2:])
    (tmp_path / "dsn").write_text("host=db dbname=rollback_watchdog user=watchdog\n")
    fleet_text = "\n".join(section).replace(
        "/run/credentials/rollback-watchdog.service/fleet-dsn", str(tmp_path / "dsn")
    )
    loaded = settings(tmp_path, fleet_text + "\n")
    assert loaded.fleet is not None
    assert (loaded.fleet.group, loaded.fleet.release) == ("lavalink-prod", "lavalink-rs-4.1.0")
    assert loaded.fleet.release_bad_when.fraction == 0.2


class _Group:
    """The server's ``Fleet`` protocol over a group held in memory: the HTTP mapping under test
    (the real one, FleetLink, runs in tests/integration/test_fleet_daemons.py)."""

    def __init__(self) -> None:
        self.halted = True
        self.proposed = ["rust-4.1"]
        self.down = False
        self.by: list[str] = []

    async def status(self) -> dict[str, Any]:
        return {"group": "bots", "halted": self.halted, "reachable": not self.down}

    async def resume(self, by: str) -> bool:
        if self.down:
            raise errors.FleetUnreachable("the fleet store did not answer: PoolTimeout")
        self.by.append(by)
        was, self.halted = self.halted, False
        return was

    async def approve_waves(self, by: str) -> list[str]:
        started, self.proposed = self.proposed, []
        return started


async def test_the_fleet_routes_map_the_group_to_http() -> None:
    async def nothing() -> None:
        return None

    async def status() -> dict[str, Any]:
        return {}

    group = _Group()
    app = server.build_app(
        config.ListenSettings(),
        telemetry.Recorder(),
        operators=(credentials.Identity("alice", "tok-alice"),),
        status=status,
        readiness=nothing,
        fleet=group,
    )
    auth = {"Authorization": "Bearer tok-alice"}
    async with TestClient(TestServer(app)) as client:
        shown = await client.get("/api/v1/fleet", headers=auth)
        assert shown.status == 200 and (await shown.json())["halted"] is True
        resumed = await client.post("/api/v1/fleet/resume", headers=auth)
        assert resumed.status == 200 and group.by == ["alice"]  # the token names who
        again = await client.post("/api/v1/fleet/resume", headers=auth)
        assert again.status == 409 and "not halted" in await again.text()
        started = await client.post("/api/v1/fleet/waves/approve", headers=auth)
        assert started.status == 200 and (await started.json()) == {"started": ["rust-4.1"]}
        none = await client.post("/api/v1/fleet/waves/approve", headers=auth)
        assert none.status == 409
        group.down = True
        unreachable = await client.post("/api/v1/fleet/resume", headers=auth)
        assert unreachable.status == 503 and "did not answer" in await unreachable.text()
        bad = await client.post(
            "/api/v1/fleet/approvals/abc", headers=auth, json={"decision": "approve"}
        )
        assert bad.status == 400 and "positive integer" in await bad.text()

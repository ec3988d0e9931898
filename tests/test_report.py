"""The rollback report, read from a real journal filled through its own methods: each section
of the operators' template says what the journal holds, and nothing it does not."""

from __future__ import annotations

import json
import math
import re
import stat
from pathlib import Path

import pytest

from tests.conftest import rule
from tests.test_cli import assert_bad_input, cli, config_file
from watchdog import approval, decision, journal, model, report, timefmt

T0 = 1_795_600_800.0  # 2026-11-25T10:00:00Z: the verdict that asked for the rollback
TARGET = "lavalink"
CRASH = rule("LavalinkCrashLoop", threshold=">= 3 restarts in 15m")
CPU = rule("LavalinkCpuHigh", severity="warning", threshold="> 0.5")
HEADINGS = [
    "# Rollback report: lavalink, run #1",
    "## Timeline",
    "## Impact",
    "## Root cause",
    "## Resolution",
    "## Verification results",
    "## Backups",
    "## Lessons learned",
    "## Next steps",
]
# name, started, finished (seconds after T0), status, detail: a rollback that went to plan
SWITCH: tuple[tuple[str, float, float, str, str], ...] = (
    ("preflight", 1, 2, "ok", "both units load; Lavalink.jar exists; java 17"),
    ("backup", 2, 3, "ok", "/etc/lavalink-rust -> backups/emergency-20261125-100002"),
    ("snapshot", 3, 4, "ok", "primary active, /v4/info: version 4.0.8"),
    ("stop-primary", 4, 6, "ok", "lavalink-rust.service stopped (job done) and disabled"),
    ("carry-config", 6, 6.25, "ok", "application.yml already exists: kept"),
    ("start-fallback", 6.25, 9, "ok", "lavalink-java.service enabled and started (job done)"),
    ("verify", 9, 41, "ok", "9 checks passed (Java 4.0.8, up after 11.0s)"),
)
VERIFIED = {
    "version": {"ok": True, "detail": "Java 4.0.8", "seconds": 11.0},
    "info": {"ok": True, "detail": "200 in 12 ms", "seconds": 0.012},
    "latency": {"ok": True, "detail": "median 40 ms < 500 ms", "seconds": 0.2},
}


def at(offset: float) -> str:
    return timefmt.format_instant(T0 + offset)


def decide(
    store: journal.Journal,
    mode: model.Mode,
    *,
    outcome: str = "rollback started",
    ask: journal.ApprovalAsk | None = None,
    value: float = 4.0,
) -> tuple[int, model.Decision]:
    """Journal the evaluation and decision at T0: the crash loop fires (critical)."""
    evaluation = model.Evaluation(
        TARGET,
        T0,
        (
            model.Signal(
                CRASH,
                model.SignalState.FIRING,
                value=value,
                labels=(("unit", "lavalink-rust.service"),),
                active_since=T0 - 60,
            ),
            model.Signal(CPU, model.SignalState.OK),
        ),
    )
    made, _ = decision.decide(evaluation, model.Policy(), model.TargetState())
    assert made.action is model.Action.ROLLBACK
    incident = store.record(evaluation, made, mode=mode, outcome=outcome, ask=ask)
    assert incident is not None
    return incident, made


def execute(
    store: journal.Journal,
    run_id: int,
    steps: tuple[tuple[str, float, float, str, str], ...] = SWITCH,
    *,
    base: float = T0,
) -> None:
    for seq, (name, started, finished, status, detail) in enumerate(steps, start=1):
        step_id = store.step_started(run_id, seq, name, at=base + started)
        store.step_finished(step_id, status, detail, at=base + finished)


def remember_switch(store: journal.Journal, run_id: int, backup: Path) -> None:
    store.remember(run_id, "backup", str(backup))
    store.remember(
        run_id,
        "snapshot",
        {
            "primary": {"name": "lavalink-rust.service", "ActiveState": "active"},
            "fallback": {"name": "lavalink-java.service", "ActiveState": "inactive"},
            "/v4/stats": {"players": 12, "playingPlayers": 7},
        },
    )


def finish(store: journal.Journal, run_id: int, *, base: float = T0) -> None:
    step_id = store.step_started(run_id, len(SWITCH) + 1, "finish", at=base + 41)
    store.finish_run(
        run_id,
        "succeeded",
        "fallback verified",
        at=base + 42,
        disarm=True,
        close_incident=True,
        step=(step_id, "target disarmed until re-armed; incident closed"),
    )


def auto_rollback(state: Path, *, probes: bool = True) -> journal.Journal:
    """The common story: the probes fail at T0-40s, the crash loop fires at T0, the watchdog
    rolls back by itself from T0+1s, the fallback passes the probes at T0+20s."""
    store = journal.Journal.open(state)
    if probes:
        store.probe_change(TARGET, at=T0 - 300, healthy=True, detail="all passed")
        store.probe_change(TARGET, at=T0 - 40, healthy=False, detail="failing: version, info")
    incident, made = decide(store, model.Mode.AUTO)
    run_id = store.open_run(
        TARGET,
        incident_id=incident,
        trigger="auto",
        initiated_by="rollback-watchdog",
        reason=made.reason,
        at=T0 + 1,
    )
    execute(store, run_id)
    remember_switch(store, run_id, state / "backups" / "emergency-20261125-100002")
    store.remember(run_id, "verification", VERIFIED)
    if probes:
        store.probe_change(TARGET, at=T0 + 20, healthy=True, detail="all passed")
    finish(store, run_id)
    return store


def render(store: journal.Journal, run_id: int = 1) -> str:
    return report.build(report.gather(store, run_id, clock=lambda: T0 + 3600))


def section(text: str, heading: str) -> str:
    """The body of one ``## heading`` section."""
    body = text.split(f"\n## {heading}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def test_follows_the_operators_template(tmp_path: Path) -> None:
    text = render(auto_rollback(tmp_path))
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == HEADINGS
    assert "- **Date:** 2026-11-25T10:00:01Z" in text
    assert f"- **Duration:** 41s ({at(1)} to {at(42)})" in text
    assert "- **Initiated by:** rollback-watchdog (auto)" in text
    assert "- **Reason:** critical: LavalinkCrashLoop firing" in text
    assert "- **Outcome:** succeeded: fallback verified" in text
    assert f"- **Incident:** #1, opened {at(0)}, verdict rollback, now closed" in text
    # lessons and next steps are for people: headed, and empty of made-up content
    for heading in ("Lessons learned", "Next steps"):
        body = section(text, heading).split("\n---\n")[0]
        assert [line for line in body.splitlines() if line.strip()] == [
            line for line in body.splitlines() if line.startswith("<!--")
        ]


def test_timeline_in_order_with_the_earlier_failing_probe_as_detection(tmp_path: Path) -> None:
    timeline = section(render(auto_rollback(tmp_path)), "Timeline").strip().splitlines()
    assert timeline == [
        f"- {at(-40)} **Issue detected:** first failing probe (failing: version, info)",
        f"- {at(0)} Incident #1 opened",
        f"- {at(0)} **Rollback decision:** rollback in auto mode: rollback started",
        f"- {at(1)} **Rollback started:** run #1 (auto)",
        f"- {at(6)} Primary stopped: lavalink-rust.service stopped (job done) and disabled",
        f"- {at(9)} **Fallback started:** lavalink-java.service enabled and started (job done)",
        f"- {at(20)} First passing probe on the fallback",
        f"- {at(41)} **Verification completed:** passed: 9 checks passed (Java 4.0.8, up after "
        "11.0s)",
        f"- {at(42)} Run ended: succeeded: fallback verified",
    ]


def test_incident_is_the_detection_when_the_probes_failed_later(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    store.probe_change(TARGET, at=T0 - 300, healthy=True, detail="all passed")
    incident, made = decide(store, model.Mode.AUTO)
    store.probe_change(TARGET, at=T0 + 0.5, healthy=False, detail="failing: version")
    run_id = store.open_run(
        TARGET,
        incident_id=incident,
        trigger="auto",
        initiated_by="rollback-watchdog",
        reason=made.reason,
        at=T0 + 1,
    )
    execute(store, run_id)
    store.probe_change(TARGET, at=T0 + 15.5, healthy=True, detail="all passed")
    finish(store, run_id)
    text = render(store)
    assert f"- {at(0)} **Issue detected:** incident #1 opened" in text
    assert f"- {at(0.5)} First failing probe (failing: version)" in text
    assert f"- **Downtime:** 15s: from the first failing probe at {at(0.5)}" in text


def test_downtime_from_the_first_failing_probe_to_the_first_passing_one_on_the_fallback(
    tmp_path: Path,
) -> None:
    impact = section(render(auto_rollback(tmp_path)), "Impact")
    assert (
        f"- **Downtime:** 1m: from the first failing probe at {at(-40)} to the first passing "
        f"probe on the fallback at {at(20)}"
    ) in impact
    assert (
        "- **Users affected:** 12 players connected to the primary at the snapshot (7 playing)"
    ) in impact
    assert (
        "- **Services impacted:** lavalink: lavalink-rust.service (primary, active before), "
        "lavalink-java.service (fallback, inactive before)"
    ) in impact


def test_downtime_is_unknown_without_probes(tmp_path: Path) -> None:
    text = render(auto_rollback(tmp_path, probes=False))
    assert "- **Downtime:** unknown (probes off or no turn journaled)" in text
    assert "First passing probe" not in text
    assert f"- {at(0)} **Issue detected:** incident #1 opened" in text


def test_downtime_ignores_turns_of_another_target_and_old_outages(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    store.probe_change("other", at=T0 - 40, healthy=False, detail="failing: version")
    store.probe_change(TARGET, at=T0 - 900, healthy=False, detail="failing: stats")
    store.probe_change(TARGET, at=T0 - 800, healthy=True, detail="all passed")  # over before
    incident, made = decide(store, model.Mode.AUTO)
    run_id = store.open_run(
        TARGET,
        incident_id=incident,
        trigger="auto",
        initiated_by="rollback-watchdog",
        reason=made.reason,
        at=T0 + 1,
    )
    execute(store, run_id)
    finish(store, run_id)
    downtime = section(render(store), "Impact").splitlines()[1]
    assert downtime == (
        f"- **Downtime:** none seen: the probes passed from {at(-800)} and no failing round "
        f"was journaled up to {at(42)} (an outage shorter than one probe round is not seen)"
    )


def test_an_outage_caused_by_the_switch_is_measured(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    store.probe_change(TARGET, at=T0 - 300, healthy=True, detail="all passed")
    incident, made = decide(store, model.Mode.AUTO)
    run_id = store.open_run(
        TARGET,
        incident_id=incident,
        trigger="auto",
        initiated_by="rollback-watchdog",
        reason=made.reason,
        at=T0 + 1,
    )
    execute(store, run_id)
    store.probe_change(TARGET, at=T0 + 5, healthy=False, detail="failing: version")
    store.probe_change(TARGET, at=T0 + 17, healthy=True, detail="all passed")
    finish(store, run_id)
    text = render(store)
    assert f"- **Downtime:** 12s: from the first failing probe at {at(5)}" in text
    assert f"- {at(5)} First failing probe (failing: version) during the switch" in text
    assert f"- {at(0)} **Issue detected:** incident #1 opened" in text


def test_downtime_not_yet_measured_when_the_fallback_never_passed(tmp_path: Path) -> None:
    fresh = journal.Journal.open(tmp_path)
    fresh.probe_change(TARGET, at=T0 - 40, healthy=False, detail="failing: version")
    incident, made = decide(fresh, model.Mode.AUTO)
    run_id = fresh.open_run(
        TARGET,
        incident_id=incident,
        trigger="auto",
        initiated_by="rollback-watchdog",
        reason=made.reason,
        at=T0 + 1,
    )
    execute(fresh, run_id)
    finish(fresh, run_id)
    assert (
        f"- **Downtime:** not measured yet: failing since {at(-40)}, no passing probe on the "
        f"fallback journaled (as of {at(3600)})"
    ) in render(fresh)


def test_root_cause_names_the_firing_signals_with_values_and_thresholds(tmp_path: Path) -> None:
    cause = section(render(auto_rollback(tmp_path)), "Root cause").strip().splitlines()
    assert cause[0] == f"Signals firing at {at(0)} (verdict rollback):"
    assert cause[2:] == [
        "| Signal | State | Value | Threshold | Labels | Detail |",
        "|---|---|---|---|---|---|",
        '| LavalinkCrashLoop | firing | 4 | >= 3 restarts in 15m | unit="lavalink-rust.service" '
        "| - |",
        "",
        f"The decision at {at(0)} (rollback, auto mode), as journaled:",
        "",
        '> critical: LavalinkCrashLoop firing {unit="lavalink-rust.service"}, value 4, '
        f"threshold >= 3 restarts in 15m, since {at(-60)}",
    ]
    assert "LavalinkCpuHigh" not in "\n".join(cause)  # quiet signals are not the cause


def test_resolution_lists_each_step_with_status_duration_and_detail(tmp_path: Path) -> None:
    rows = section(render(auto_rollback(tmp_path)), "Resolution").strip().splitlines()
    assert rows[:2] == [
        "| # | Step | Status | Started | Duration | Detail |",
        "|---|---|---|---|---|---|",
    ]
    assert [row.split(" | ")[1:5] for row in rows[2:]] == [
        ["preflight", "ok", at(1), "1s"],
        ["backup", "ok", at(2), "1s"],
        ["snapshot", "ok", at(3), "1s"],
        ["stop-primary", "ok", at(4), "2s"],
        ["carry-config", "ok", at(6), "250ms"],
        ["start-fallback", "ok", at(6.25), "3s"],
        ["verify", "ok", at(9), "32s"],
        ["finish", "ok", at(41), "1s"],
    ]
    assert rows[-1].endswith("| target disarmed until re-armed; incident closed |")


def test_verification_and_backup_sections(tmp_path: Path) -> None:
    text = render(auto_rollback(tmp_path))
    assert section(text, "Verification results").strip().splitlines() == [
        "All 3 checks passed.",
        "",
        "| Check | Result | Detail | Took |",
        "|---|---|---|---|",
        "| version | pass | Java 4.0.8 | 11s |",
        "| info | pass | 200 in 12 ms | 12ms |",
        "| latency | pass | median 40 ms < 500 ms | 200ms |",
    ]
    backup = tmp_path / "backups" / "emergency-20261125-100002"
    assert section(text, "Backups").strip() == (
        f"- Emergency backup (config directory and unit file): `{backup}`"
    )


def test_approved_run_names_the_approvers_their_channel_and_times(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    ask = journal.ApprovalAsk(expires_at=T0 + 900, required=2)
    incident, _ = decide(store, model.Mode.APPROVE, outcome="approval requested", ask=ask)
    asked = store.approvals(target=TARGET)[0]
    rules = approval.Rules(required=2, approvers=frozenset({"alice", "bob"}))
    slack = approval.Vote(approve=True, identities=("alice",), via="slack", at=T0 + 60)
    api = approval.Vote(approve=True, identities=("bob",), via="api", at=T0 + 90)
    refused = approval.Vote(approve=True, identities=("mallory",), via="cli", at=T0 + 70)
    for vote in (slack, refused, api):
        store.vote(asked.id, vote, rules)
    run_id = store.open_run(
        TARGET,
        incident_id=incident,
        trigger="approved",
        initiated_by="alice, bob",
        reason=asked.reason,
        at=T0 + 91,
    )
    execute(store, run_id, base=T0 + 90)
    finish(store, run_id, base=T0 + 90)
    text = render(store)
    assert "- **Initiated by:** alice, bob (approved in Slack, API)" in text
    timeline = section(text, "Timeline")
    assert (
        f"- {at(0)} **Rollback decision:** rollback in approve mode: approval requested"
    ) in timeline
    assert f"- {at(0)} **Approval** #1 requested (2 needed, until {at(900)})" in timeline
    assert f"- {at(60)} alice approved #1 in Slack" in timeline
    assert f"- {at(90)} bob approved #1 in API" in timeline
    assert f"- {at(90)} **Approval** #1 approved by alice, bob: approved by alice, bob (api)" in (
        timeline
    )
    assert "mallory" not in timeline  # refused: in the audit trail, not in the story
    assert timeline.index("alice approved") < timeline.index("**Rollback started:**")


def test_manual_security_order(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    why = "CVE-2026-1234 in the HTTP stack, no fix yet"
    store.audit(
        at=T0,
        via="api",
        actor="alice",
        action="rollback",
        accepted=True,
        detail=f"security: {why}",
        target=TARGET,
    )
    incident = store.open_manual_incident(
        TARGET, reason=why, at=T0, category="security", by="alice", via="api"
    )
    run_id = store.open_run(
        TARGET,
        incident_id=incident,
        trigger="manual",
        initiated_by="alice",
        reason=f"security: {why}",
        at=T0 + 1,
    )
    execute(store, run_id)
    finish(store, run_id)
    text = render(store)
    assert "- **Initiated by:** alice (manual, security, via API)" in text
    assert f"- {at(0)} **Issue detected:** incident #1 opened by a person's order" in text
    assert f"- {at(0)} **Rollback decision:** rollback ordered by alice via api" in text
    assert section(text, "Root cause").strip().splitlines() == [
        "Ordered by alice via API:",
        "",
        f"> security: {why}",
    ]
    # nothing was snapshotted or verified in this journal: the report says so, not "0"
    assert "- **Users affected:** unknown (no snapshot of the primary was journaled)" in text
    assert "No verification was journaled" in text
    assert "No backup was journaled" in text


def test_failed_verification_and_restored_primary(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    store.probe_change(TARGET, at=T0 - 40, healthy=False, detail="failing: version")
    incident, made = decide(store, model.Mode.AUTO)
    run_id = store.open_run(
        TARGET,
        incident_id=incident,
        trigger="auto",
        initiated_by="rollback-watchdog",
        reason=made.reason,
        at=T0 + 1,
    )
    failed = "latency: median 900 ms >= 500 ms"
    steps = (
        *SWITCH[:-1],
        ("verify", 9, 41, "failed", failed),
        ("restore-primary", 41, 45, "ok", "lavalink-java.service stopped, lavalink-rust started"),
    )
    execute(store, run_id, steps)
    store.remember(
        run_id,
        "verification",
        {
            "version": {"ok": True, "detail": "Java 4.0.8", "seconds": 11.0},
            "latency": {"ok": False, "detail": "median 900 ms >= 500 ms", "seconds": 30.0},
        },
    )
    store.probe_change(TARGET, at=T0 + 12, healthy=True, detail="all passed")  # the fallback
    store.probe_change(TARGET, at=T0 + 42, healthy=False, detail="failing: version")  # restore
    store.probe_change(TARGET, at=T0 + 50, healthy=True, detail="all passed")  # the primary
    outcome = f"verify failed ({failed}); primary restore ok"
    store.finish_run(run_id, "restored", outcome, at=T0 + 46, disarm=True, close_incident=True)
    text = render(store)
    assert f"- **Outcome:** restored: {outcome}" in text
    assert f"- {at(41)} **Verification completed:** FAILED: {failed}" in text
    assert f"- {at(45)} Primary restored: lavalink-java.service stopped" in text
    assert section(text, "Verification results").strip().splitlines()[0] == (
        "**FAILED:** 1 of 2 checks failed (latency)."
    )
    assert "| latency | FAIL | median 900 ms >= 500 ms | 30s |" in text
    # from T0-40 to the primary answering at T0+50, but the fallback answered 12..42
    assert (
        f"- **Downtime:** 1m30s: from the first failing probe at {at(-40)} to the first passing "
        f"probe on the restored primary at {at(50)}; failing for 1m of it (probes passed between)"
    ) in text


def test_a_run_still_in_flight(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    incident, made = decide(store, model.Mode.AUTO)
    run_id = store.open_run(
        TARGET,
        incident_id=incident,
        trigger="auto",
        initiated_by="rollback-watchdog",
        reason=made.reason,
        at=T0 + 1,
    )
    execute(store, run_id, SWITCH[:3])
    store.step_started(run_id, 4, "stop-primary", at=T0 + 4)
    text = render(store)
    assert f"- **Duration:** still running (started {at(1)}, as of {at(3600)})" in text
    assert f"| 4 | stop-primary | running | {at(4)} | still running | - |" in text
    assert "Run ended" not in text


def test_build_is_pure_and_works_on_plain_data() -> None:
    run = journal.RunRow(
        id=7,
        target="svc",
        incident_id=None,
        trigger="manual",
        initiated_by="carol",
        reason="manual: | pipes\nand newlines",
        started_at=T0,
        finished_at=T0 + 5,
        status="aborted",
        outcome="preflight failed, nothing was stopped: no java",
        data="{}",
    )
    data = report.ReportData(run=run, generated_at=T0 + 10)
    text = report.build(data)
    assert text == report.build(data)
    assert "# Rollback report: svc, run #7" in text
    assert "- **Initiated by:** carol (manual)" in text
    assert "- **Reason:** manual: | pipes and newlines" in text
    assert "- **Downtime:** unknown (probes off or no turn journaled)" in text
    assert "No step was journaled." in text


def test_downtime_starts_at_the_last_turn_to_failing_before_the_run() -> None:
    run = journal.RunRow(
        id=1,
        target=TARGET,
        incident_id=None,
        trigger="auto",
        initiated_by="rollback-watchdog",
        reason="critical",
        started_at=T0,
        finished_at=T0 + 30,
        status="succeeded",
        outcome="fallback verified",
        data="{}",
    )
    steps = (journal.StepRow(1, 1, 6, "start-fallback", T0 + 5, T0 + 8, "ok", "started"),)
    turns = (
        journal.ProbeTurn(T0 - 900, False, "failing: stats"),  # an older outage
        journal.ProbeTurn(T0 - 800, True, "all passed"),
        journal.ProbeTurn(T0 - 40, False, "failing: version"),
        journal.ProbeTurn(T0 + 10, True, "all passed"),
    )
    lost = report.downtime(
        report.ReportData(run=run, steps=steps, probe_turns=turns, generated_at=T0 + 60)
    )
    assert lost.started is turns[2]
    assert lost.ended is turns[3]
    assert lost.seconds == 50


def test_write_is_atomic_and_private(tmp_path: Path) -> None:
    store = auto_rollback(tmp_path / "state")
    path = report.write(store, 1, tmp_path / "state", clock=lambda: T0 + 3600)
    assert path == tmp_path / "state" / "reports" / "run-1.md"
    assert path.read_text() == render(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = report.write(store, 1, tmp_path / "state", clock=lambda: T0 + 7200)
    assert again == path
    assert at(7200) in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["run-1.md"]  # no temp file left


def test_write_of_a_missing_run_leaves_nothing(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    with pytest.raises(KeyError):
        report.write(store, 3, tmp_path)
    assert not (tmp_path / "reports" / "run-3.md").exists()


def test_journal_reads_for_the_report(tmp_path: Path) -> None:
    store = auto_rollback(tmp_path)
    changes = store.evaluations(TARGET, since=T0, until=T0)
    assert [(e.verdict, e.firing) for e in changes] == [("rollback", ("LavalinkCrashLoop",))]
    assert changes[0].signals[0].value == 4.0
    assert changes[0].signals[0].threshold == ">= 3 restarts in 15m"
    assert store.evaluations(TARGET, since=T0 + 1) == []
    assert store.evaluations("other") == []
    assert store.approval_audit(1) == []


# -- the command line --------------------------------------------------------------------------


def filled(tmp_path: Path) -> Path:
    path = config_file(tmp_path)
    auto_rollback(tmp_path / "state").close()
    return path


def test_cli_prints_the_report(tmp_path: Path) -> None:
    path = filled(tmp_path)
    done = cli("report", "1", "--config", str(path))
    assert done.returncode == 0, done.stderr
    store = journal.Journal.open(tmp_path / "state")
    expected = render(store)
    footer = re.compile(r"^_Written by rollback-watchdog from its journal at .*_$")
    printed = done.stdout.splitlines()
    assert footer.match(printed[-1])
    assert printed[:-1] == expected.splitlines()[:-1]


@pytest.mark.parametrize(
    ("run", "needle"),
    [
        ("abc", "'abc' is not a run number"),
        ("0", "'0' is not a run number"),
        ("1.5", "'1.5' is not a run number"),
        ("2", "there is no run #2"),
    ],
)
def test_cli_refuses_a_bad_run(tmp_path: Path, run: str, needle: str) -> None:
    assert_bad_input(cli("report", run, "--config", str(filled(tmp_path))), needle)


def test_cli_without_a_journal(tmp_path: Path) -> None:
    done = cli("report", "1", "--config", str(config_file(tmp_path)))
    assert_bad_input(done, "no journal at")
    assert not (tmp_path / "state" / journal.DATABASE_NAME).exists()  # nothing created


def test_an_infinite_value_is_written_not_a_crash() -> None:
    assert report._number(float("inf")) == "+Inf" and report._number(float("-inf")) == "-Inf"


def test_facts_carry_the_report_as_data_approvals_and_root_cause(tmp_path: Path) -> None:
    """``report --json``: the same journal facts as the Markdown, as fields; a vote without its
    nonce, the timeline without emphasis, and a value JSON cannot hold (+Inf) as null."""
    store = journal.Journal.open(tmp_path)
    ask = journal.ApprovalAsk(expires_at=T0 + 900, required=1)
    incident, _ = decide(
        store, model.Mode.APPROVE, outcome="approval requested", ask=ask, value=math.inf
    )
    asked = store.approvals(target=TARGET)[0]
    rules = approval.Rules(required=1, approvers=frozenset({"alice"}))
    store.vote(asked.id, approval.Vote(True, ("alice",), "slack", T0 + 60), rules)
    run_id = store.open_run(
        TARGET,
        incident_id=incident,
        trigger="approved",
        initiated_by="alice",
        reason=asked.reason,
        at=T0 + 61,
    )
    execute(store, run_id, base=T0 + 60)
    finish(store, run_id, base=T0 + 60)
    facts = report.facts(report.gather(store, run_id, clock=lambda: T0 + 3600))
    assert facts["run"]["initiated_by"] == "alice (approved in Slack)"
    (asked_facts,) = facts["approvals"]
    assert [v["actor"] for v in asked_facts["votes"]] == ["alice"]
    assert all("nonce" not in v for v in asked_facts["votes"])
    cause = facts["root_cause"]
    assert cause["firing"] == ["LavalinkCrashLoop"]
    crash = next(s for s in cause["signals"] if s["name"] == "LavalinkCrashLoop")
    assert (crash["value"], crash["threshold"]) == (None, ">= 3 restarts in 15m")  # +Inf
    assert all("**" not in item["text"] for item in facts["timeline"])
    assert [s["name"] for s in facts["steps"]][-1] == "finish"
    json.dumps(facts, allow_nan=False)  # valid JSON: no NaN or Infinity anywhere
    store.close()

"""Journal: schema migrations, WAL, and that incidents and decisions are kept as decided."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.conftest import rule, signal
from watchdog import comparison, decision, errors, journal, model, statedir

CRASH = rule("CrashLoop")
CPU = rule("CpuHigh", severity="warning")
POLICY = model.Policy()


def step(
    store: journal.Journal, state: model.TargetState, at: float, *signals: model.Signal
) -> tuple[model.Decision, model.TargetState]:
    evaluation = model.Evaluation("lavalink", at, tuple(signals))
    made, state = decision.decide(evaluation, POLICY, state)
    store.record(
        evaluation,
        made,
        mode=model.Mode.OBSERVE,
        outcome="would roll back" if made.action is model.Action.ROLLBACK else "logged",
    )
    return made, state


def test_creates_wal_database_at_latest_schema(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path / "state")
    assert store.schema_version == len(journal.MIGRATIONS)
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()
    again = journal.Journal.open(tmp_path / "state")  # migrations run once
    assert again.schema_version == len(journal.MIGRATIONS)
    again.close()


def test_schema_5_gets_step_statuses_and_order_fields_from_its_old_prose(tmp_path: Path) -> None:
    """Schema 6 keeps as fields what schema 5 kept only as words: an interrupted step's status,
    and who ordered a rollback, through what, in which category."""
    path = tmp_path / journal.DATABASE_NAME
    db = sqlite3.connect(path)
    for version, script in enumerate(journal.MIGRATIONS[:5], start=1):
        for statement in journal._statements(script):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {version}")
    db.execute(
        "INSERT INTO incidents (id, target, opened_at, status, verdict, acted, reason, origin) "
        "VALUES (1, 'lavalink', 10, 'closed', 'rollback', 'rollback', 'security: CVE', 'order')"
    )
    db.execute(
        "INSERT INTO decisions (incident_id, target, at, verdict, action, mode, outcome, reason)"
        " VALUES (1, 'lavalink', 10, 'rollback', 'rollback', 'manual', "
        "'ordered by alice via api', 'security: CVE')"
    )
    db.execute(
        "INSERT INTO runs (id, target, incident_id, trigger, initiated_by, reason, started_at, "
        "status) VALUES (1, 'lavalink', 1, 'manual', 'alice', 'security: CVE', 11, 'succeeded')"
    )
    for seq, (status, detail) in enumerate(
        [("ok", "fine"), ("failed", "interrupted: the watchdog stopped here"), ("failed", "no")],
        start=1,
    ):
        db.execute(
            "INSERT INTO steps (run_id, seq, name, started_at, status, detail) "
            "VALUES (1, ?, 'backup', 11, ?, ?)",
            (seq, status, detail),
        )
    db.commit()
    db.close()
    store = journal.Journal.open(tmp_path)
    assert [s.status for s in store.steps(1)] == ["ok", "interrupted", "failed"]
    (decision,) = store.decisions()
    assert (decision.ordered_by, decision.ordered_via) == ("alice", "api")
    (incident,) = store.incidents()
    assert incident.category == "security"


def test_a_journal_of_the_last_release_migrates_with_nothing_lost(tmp_path: Path) -> None:
    """Schema 4 (the release before alert routing): its rows survive, an alert it kept for
    the target by name alone stays in the table (it is routed again when read), and the new
    journal gets an identity without taking itself for a lost one."""
    path = tmp_path / journal.DATABASE_NAME
    db = sqlite3.connect(path)
    for version, script in enumerate(journal.MIGRATIONS[:4], start=1):
        for statement in [part for part in script.split(";") if part.strip()]:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {version}")
    db.execute(
        "INSERT INTO incidents (target, opened_at, status, verdict, acted, reason) "
        "VALUES ('lavalink', 10, 'closed', 'rollback', 'rollback', 'crash loop')"
    )
    db.execute(
        "INSERT INTO targets (name, armed, changed_at, changed_by, note) "
        "VALUES ('lavalink', 0, 20, 'rollback', 'rolled back by run #1')"
    )
    db.execute(
        "INSERT INTO alerts (fingerprint, starts_at, target, alertname, status, labels, "
        "annotations, first_seen, last_seen) VALUES ('fp', 1, 'lavalink', 'PostgresDown', "
        "'firing', '{\"job\": \"postgres\"}', '{}', 1, 1)"
    )
    db.commit()
    db.close()
    store = journal.Journal.open(tmp_path)
    assert store.schema_version == len(journal.MIGRATIONS) == 9
    assert [(i.verdict, i.reason) for i in store.incidents()] == [("rollback", "crash loop")]
    assert not store.arming("lavalink").armed  # still disarmed after the upgrade
    # schema 7 and 8 start empty and work on the upgraded file: no commit, no guard, no baseline
    assert store.arming("lavalink") == journal.Arming(False, 20, "rollback")
    store.set_committed("lavalink", 30.0, "lavalink (inode 7)")
    assert store.target_state("lavalink").committed_release == "lavalink (inode 7)"
    assert not store.arming("lavalink").armed  # a commit arms nothing
    kept = comparison.Baseline("memory", 5.0, 1.0, 4.0, (1.0, 2.0))
    store.record_baseline("lavalink", kept, at=6.0)
    assert store.baselines("lavalink", 5.0) == [kept]
    assert store.latest("lavalink") is None  # schema 9: no evaluation since the upgrade
    assert [a.alertname for a in store.firing_alerts("lavalink", seen_since=0)] == ["PostgresDown"]
    assert store.unrouted() == (0, [])
    assert store.journal_id  # an identity of its own from now on
    assert store.lost_predecessor() is None  # no marker yet: nothing was lost
    store.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    journal.Journal.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / journal.DATABASE_NAME)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this watchdog"):
        journal.Journal.open(tmp_path)


def test_records_verdict_changes_incidents_and_decisions(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    state = model.TargetState()
    state = step(store, state, 0, signal(CRASH, "ok"))[1]
    state = step(store, state, 15, signal(CRASH, "ok"))[1]  # same verdict: no new row
    state = step(store, state, 30, signal(CRASH, "firing"))[1]  # opens, acts
    state = step(store, state, 45, signal(CRASH, "firing"))[1]  # joins, no action
    state = step(store, state, 60, signal(CRASH, "ok"))[1]  # closes
    rows = (
        sqlite3.connect(store.path)
        .execute("SELECT at, verdict FROM evaluations ORDER BY id")
        .fetchall()
    )
    assert rows == [(0.0, "hold"), (30.0, "rollback"), (60.0, "hold")]
    assert store.latest("other") is None
    state = step(store, state, 75, signal(CRASH, "ok"))[1]  # same verdict: latest still moves
    latest = store.latest("lavalink")
    assert latest is not None
    assert (latest.at, latest.verdict, latest.pid) == (75.0, model.Verdict.HOLD, os.getpid())
    (incident,) = store.incidents()
    assert (
        incident.status,
        incident.verdict,
        incident.acted,
        incident.opened_at,
        incident.closed_at,
    ) == ("resolved", "rollback", "rollback", 30.0, 60.0)
    (made,) = store.decisions()
    assert (made.action, made.outcome, made.incident_id, made.mode) == (
        "rollback",
        "would roll back",
        incident.id,
        "observe",
    )
    assert "CrashLoop firing" in made.reason
    store.close()


def test_state_survives_a_restart(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    state = step(store, model.TargetState(), 0, signal(CRASH, "firing"))[1]
    store.close()
    reopened = journal.Journal.open(tmp_path)
    restored = reopened.target_state("lavalink")
    assert restored.incident == state.incident
    assert restored.incident is not None and restored.incident.acted is model.Verdict.ROLLBACK
    # the restored state does not act again on the same incident
    made, _ = step(reopened, restored, 15, signal(CRASH, "firing"))
    assert made.action is model.Action.NONE
    assert len(reopened.decisions()) == 1
    reopened.close()


def test_cooldown_is_restored_from_the_last_closed_incident(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    state = step(store, model.TargetState(), 0, signal(CPU, "firing"))[1]
    step(store, state, 15, signal(CPU, "ok"))
    restored = store.target_state("lavalink")
    assert (restored.last_closed_at, restored.last_closed_verdict) == (15.0, model.Verdict.WARN)
    store.close()


def test_arming(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    assert store.armed("lavalink")
    store.set_armed("lavalink", False, at=1, by="executor", note="rolled back")
    assert not store.armed("lavalink")
    store.set_armed("lavalink", True, at=2, by="alice", note="re-armed")
    assert store.armed("lavalink")
    store.close()


def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    evaluation = model.Evaluation("lavalink", 0, (signal(CRASH, "firing"),))
    made, _ = decision.decide(evaluation, POLICY, model.TargetState())
    broken = model.Evaluation(
        "lavalink",
        0,
        (model.Signal(CRASH, model.SignalState.FIRING, value=1.0, labels=(("x", object()),)),),
    )  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.record(broken, made, mode=model.Mode.OBSERVE, outcome="x")
    assert store.incidents() == []
    assert store.decisions() == []
    assert store.healthy()
    store.close()


def test_arming_remembers_when_it_was_re_armed(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    assert store.target_state("lavalink").armed_at is None  # never disarmed
    store.set_armed("lavalink", False, at=1, by="rollback", note="run #1")
    assert store.target_state("lavalink").armed_at is None
    store.set_armed("lavalink", True, at=5, by="alice", note="re-armed")
    assert store.target_state("lavalink").armed_at == 5
    store.close()


# -- the journal's identity ---------------------------------------------------------------


def dump_decisions(store: journal.Journal) -> list[str]:
    return [d.action for d in store.decisions()]


def rollback_decision(at: float) -> tuple[model.Evaluation, model.Decision]:
    evaluation = model.Evaluation("lavalink", at, (signal(CRASH, "firing"),))
    made, _ = decision.decide(evaluation, POLICY, model.TargetState())
    return evaluation, made


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_journal_deleted_or_replaced_under_us_refuses_new_actions(
    tmp_path: Path, how: str
) -> None:
    store = journal.Journal.open(tmp_path)
    run = store.open_run(
        "lavalink", incident_id=None, trigger="auto", initiated_by="x", reason="y", at=1
    )
    assert store.intact() is None
    path = tmp_path / journal.DATABASE_NAME
    if how == "deleted":
        path.unlink()
    else:  # another journal renamed over it (a restored backup, say)
        other = journal.Journal.open(tmp_path / "other")
        other.close()
        (tmp_path / "other" / journal.DATABASE_NAME).rename(path)
    evaluation, made = rollback_decision(10)
    with pytest.raises(errors.JournalLost, match="restart the watchdog"):  # before any write
        store.record(evaluation, made, mode=model.Mode.AUTO, outcome="x")
    assert dump_decisions(store) == []
    assert "no action is taken" in (store.intact() or "")
    for write in (
        lambda: store.record(evaluation, made, mode=model.Mode.AUTO, outcome="x"),
        lambda: store.open_manual_incident("lavalink", reason="r", at=11),
        lambda: store.set_armed("lavalink", True, at=11, by="alice", note="n"),
        lambda: store.open_run(
            "other", incident_id=None, trigger="auto", initiated_by="x", reason="y", at=1
        ),
        lambda: store.audit(
            at=11, via="api", actor="a", action="rollback", accepted=False, detail=""
        ),
    ):
        with pytest.raises(errors.JournalLost):
            write()
    # the run already in flight still journals its steps: stopping halfway leaves the service down
    step = store.step_started(run, 1, "preflight", at=12)
    store.step_finished(step, "ok", "fine", at=13)
    assert store.finish_run(run, "aborted", "stopped", at=14)
    store.close()


def claim(store: journal.Journal, state_dir: Path) -> None:
    """What the daemon does at start: mark the directory as this journal's."""
    statedir.write_marker(state_dir, statedir.Marker(store.journal_id, store.created_at))


@pytest.mark.parametrize("how", ["deleted", "emptied", "opened by the CLI first"])
def test_a_journal_created_where_another_was_records_the_loss_itself(
    tmp_path: Path, how: str
) -> None:
    first = journal.Journal.open(tmp_path)
    assert first.lost_predecessor() is None
    first_id = first.journal_id
    claim(first, tmp_path)
    first.close()
    again = journal.Journal.open(tmp_path)  # the same journal: nothing to say
    assert (again.lost_predecessor(), again.journal_id) == (None, first_id)
    again.close()
    path = tmp_path / journal.DATABASE_NAME
    if how == "emptied":
        path.write_bytes(b"")  # 0 bytes: SQLite takes it for a new database
    else:
        path.unlink()
    if how == "opened by the CLI first":  # rollback --local: it must not hide the loss
        journal.Journal.open(tmp_path).close()
    fresh = journal.Journal.open(tmp_path)
    lost = fresh.lost_predecessor()
    assert lost is not None and lost.journal_id == first_id and fresh.journal_id != first_id
    fresh.disarm_after_loss(["lavalink", "other"], at=50.0, note="lost")
    assert fresh.lost_predecessor() is None  # handled once, with the disarm
    assert not fresh.arming("lavalink").armed and not fresh.arming("other").armed
    assert fresh.arming("lavalink").by == "rollback-watchdog"
    fresh.close()


def test_a_new_journal_never_replays_a_deleted_one_s_log(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    claim(store, tmp_path)
    store.close()
    path = tmp_path / journal.DATABASE_NAME
    path.with_name(path.name + "-wal").write_bytes(b"left by a crash" * 100)
    path.unlink()
    fresh = journal.Journal.open(tmp_path)
    assert fresh.healthy() and fresh.lost_predecessor() is not None
    aside = list(tmp_path.glob("journal.sqlite3-wal.orphaned-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"left by a crash")
    fresh.close()


def test_the_journal_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = journal.Journal.open(tmp_path / "state")
        store.set_armed("lavalink", True, at=1, by="a", note="n")  # the WAL exists now
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state").iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert modes["journal.sqlite3"] == 0o600
    assert modes.get("journal.sqlite3-wal", 0o600) == 0o600  # SQLite copies the database's


def test_open_existing_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(errors.InputError, match="no journal at"):
        journal.Journal.open_existing(tmp_path / "state")
    assert not (tmp_path / "state").exists()


# -- alerts: bounded, and pruned --------------------------------------------------------------


def routed(name: str, *, at: float = 100.0, status: str = "firing") -> journal.AlertRecord:
    return journal.AlertRecord(
        fingerprint=f"fp-{name}",
        starts_at=at,
        target="lavalink",
        alertname=name,
        status=status,
        labels={"alertname": name},
        annotations={},
    )


def test_at_most_max_alerts_are_kept_and_a_flood_never_pushes_one_out(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    first = store.ingest_alerts([routed(f"A{i}") for i in range(3)], at=100, limit=3)
    assert (len(first.new_firing), first.dropped) == (3, 0)
    flood = store.ingest_alerts([routed(f"B{i}") for i in range(50)], at=101, limit=3)
    assert (len(flood.new_firing), flood.dropped) == (0, 50)
    again = store.ingest_alerts([routed("A1")], at=102, limit=3)  # a kept one: a re-delivery
    assert (again.repeated, again.dropped) == (1, 0)
    assert {a.alertname for a in store.firing_alerts("lavalink", seen_since=0)} == {
        "A0",
        "A1",
        "A2",
    }
    # only an alert not delivered since forget_before makes room: A0 and A2 (last seen 100)
    store.ingest_alerts([routed("A0", status="resolved")], at=101, limit=3)  # A0: seen at 101
    room = store.ingest_alerts(
        [routed("C0"), routed("C1"), routed("C2")], at=104, limit=3, forget_before=100.5
    )
    assert ([a.alertname for a in room.new_firing], room.dropped) == (["C0"], 2)
    # the resolved A0 is still kept: a late retry of its firing state must not act
    late = store.ingest_alerts([routed("A0")], at=105, limit=3, forget_before=100.5)
    assert (late.new_firing, late.repeated) == ((), 1)
    names = {a.alertname for a in store.firing_alerts("lavalink", seen_since=0)}
    assert names == {"A1", "C0"}  # A0 stays resolved
    store.close()


def test_firing_alerts_carry_their_latest_delivery(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    store.ingest_alerts([routed("Down", at=50)], at=60)
    store.ingest_alerts(
        [journal.AlertRecord("fp-2", 70.0, "lavalink", "Down", "firing", {}, {})], at=90
    )
    [one] = store.firing_alerts("lavalink", seen_since=0)
    assert (one.starts_at, one.last_seen) == (50, 90)  # the oldest speaks, the newest dates it
    store.close()


def test_unrouted_alerts_are_kept_bounded_least_recently_delivered_out(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)

    def unrouted(name: str) -> journal.UnroutedRecord:
        return journal.UnroutedRecord(
            f"fp-{name}", 1.0, name, "firing", model.Unrouted.NO_MATCH, "no match", {"job": "pg"}
        )

    assert store.record_unrouted([unrouted(f"P{i}") for i in range(4)], at=10, limit=5) == 0
    assert store.record_unrouted([unrouted("P0")], at=11, limit=5) == 0  # delivered again
    assert store.record_unrouted([unrouted("Q0"), unrouted("Q1")], at=12, limit=5) == 1
    total, latest = store.unrouted(limit=10)
    assert total == 5 and "P1" not in {u.alertname for u in latest}  # the stalest went
    assert [u.alertname for u in latest][:2] in (["Q1", "Q0"], ["Q0", "Q1"])
    status = store.unrouted_status(limit=1)
    assert status["kept"] == 5 and status["latest"][0]["reason"] == "no_match"
    store.close()


def test_retention_prunes_evaluations_and_alerts_but_keeps_the_record(tmp_path: Path) -> None:
    store = journal.Journal.open(tmp_path)
    state = model.TargetState()
    _, state = step(store, state, 10, signal(CRASH, "firing"))  # rollback: an incident
    _, state = step(store, state, 20)  # hold
    _, state = step(store, state, 30, signal(CPU, "firing"))  # warn
    store.ingest_alerts([routed("Old", at=5)], at=5)
    store.ingest_alerts([routed("New", at=500)], at=500)
    store.record_unrouted(
        [journal.UnroutedRecord("u", 1.0, "PgDown", "firing", model.Unrouted.NO_MATCH, "", {})],
        at=6,
        limit=10,
    )
    incident = store.incidents()[-1]  # the rollback's (opened at 10): it led to a run
    store.open_run(
        "lavalink", incident_id=incident.id, trigger="auto", initiated_by="x", reason="r", at=15
    )
    pruned = store.prune(before=100)
    assert pruned == {"evaluations": 1, "alerts": 1, "unrouted_alerts": 1}
    # the rollback behind the run (its report's root cause) and the latest stay
    assert [e.verdict for e in store.evaluations("lavalink")] == ["rollback", "warn"]
    assert [a.alertname for a in store.firing_alerts("lavalink", seen_since=0)] == ["New"]
    assert len(store.incidents()) == 2 and store.decisions()  # incidents and decisions stay
    store.close()


def test_each_migration_s_statements_build_what_the_whole_script_builds() -> None:
    """The statement splitter loses nothing: run one by one (inside the migration's
    transaction) or as one script, every migration leaves the same schema."""
    one_by_one, whole = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    for script in journal.MIGRATIONS:
        for statement in journal._statements(script):
            one_by_one.execute(statement)
        whole.executescript(script)
    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
    assert one_by_one.execute(schema).fetchall() == whole.execute(schema).fetchall()
    assert len(journal._statements("CREATE TABLE a (x);\n-- b is next\nCREATE TABLE b (y);")) == 2
    assert journal._statements("INSERT INTO t VALUES ('a;b');") == ["INSERT INTO t VALUES ('a;b');"]

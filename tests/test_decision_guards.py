"""The loop guard and the release commit: when an automatic rollback becomes a proposal.

Timestamps are real ones (December 2025), far from 0, so time arithmetic cannot pass by
accident (``now - t`` and ``now + t`` differ by far more than any window here).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import rule, signal
from watchdog import decision, journal, model

V, A = model.Verdict, model.Action
T0 = 1_765_000_000.0  # 2025-12-06T05:46:40Z
HOUR = 3600.0
POLICY = model.Policy(cooldown=HOUR, commit_after=24 * HOUR)
CRASH = rule("CrashLoop", severity="critical", category="instability")
CPU = rule("CpuHigh", severity="warning", category="minor_performance")


def crash(at: float, activated_at: float | None = None) -> model.Evaluation:
    firing = signal(CRASH, "firing", since=at - 60)
    return model.Evaluation("lavalink", at, (firing,), activated_at=activated_at)


def quiet(at: float, activated_at: float | None = None) -> model.Evaluation:
    return model.Evaluation("lavalink", at, (signal(CRASH, "ok"),), activated_at=activated_at)


class TestLoopGuard:
    def test_a_fallback_that_failed_within_the_cooldown_is_not_switched_to(self) -> None:
        state = model.TargetState(fallback_failed_at=T0 - 30 * 60)
        made, after = decision.decide(crash(T0), POLICY, state)
        assert (made.verdict, made.action) == (V.ROLLBACK, A.PROPOSE)
        assert made.reason == (
            "critical: CrashLoop firing, value 2, threshold > 1, since 2025-12-06T05:45:40Z; "
            "loop guard: the fallback failed at 2025-12-06T05:16:40Z (within the 1h cooldown, "
            "until 2025-12-06T06:16:40Z): not switching to it automatically, a human decides"
        )
        # the verdict's level counts as acted on: the same incident does not ask every tick
        again, _ = decision.decide(crash(T0 + 15), POLICY, after)
        assert again.action is A.NONE

    def test_after_the_cooldown_the_fallback_may_be_switched_to_again(self) -> None:
        state = model.TargetState(fallback_failed_at=T0 - HOUR)
        made, _ = decision.decide(crash(T0), POLICY, state)
        assert made.action is A.ROLLBACK
        assert "loop guard" not in made.reason
        just_inside = model.TargetState(fallback_failed_at=T0 - HOUR + 1)
        assert decision.decide(crash(T0), POLICY, just_inside)[0].action is A.PROPOSE

    def test_one_automatic_switch_per_cooldown(self) -> None:
        # re-armed after a rollback 20 minutes ago: a second one is a human's call
        state = model.TargetState(armed_at=T0 - 10 * 60, last_switch_at=T0 - 20 * 60)
        made, _ = decision.decide(crash(T0), POLICY, state)
        assert made.action is A.PROPOSE
        assert (
            "loop guard: a switch not ordered by an operator already ran at 2025-12-06T05:26:40Z"
            in made.reason
        )
        assert "one per 1h cooldown, until 2025-12-06T06:26:40Z" in made.reason
        later = model.TargetState(armed_at=T0 - 10 * 60, last_switch_at=T0 - HOUR)
        assert decision.decide(crash(T0), POLICY, later)[0].action is A.ROLLBACK

    def test_the_guard_never_touches_what_is_not_a_rollback(self) -> None:
        state = model.TargetState(fallback_failed_at=T0 - 60, last_switch_at=T0 - 60)
        warn = model.Evaluation("lavalink", T0, (signal(CPU, "firing", since=T0 - 600),))
        made, _ = decision.decide(warn, POLICY, state)
        assert (made.verdict, made.action) == (V.WARN, A.NOTIFY)
        assert "loop guard" not in made.reason

    def test_disarmed_stays_no_action(self) -> None:
        state = model.TargetState(armed=False, fallback_failed_at=T0 - 60)
        made, _ = decision.decide(crash(T0), POLICY, state)
        assert made.action is A.NONE


class TestCommit:
    def test_a_release_quiet_for_commit_after_is_committed(self) -> None:
        activated = T0 - 24 * HOUR
        made, state = decision.decide(quiet(T0 - 1, activated), POLICY, model.TargetState())
        assert state.committed_at is None  # one second short
        made, state = decision.decide(quiet(T0, activated), POLICY, state)
        assert (state.committed_at, state.committed_release) == (T0, "started 2025-12-05T05:46:40Z")
        assert made.action is A.NONE

    def test_a_committed_release_is_proposed_not_rolled_back(self) -> None:
        activated = T0 - 30 * HOUR
        state = model.TargetState(
            committed_at=T0 - 6 * HOUR, committed_release="started 2025-12-04T23:46:40Z"
        )
        made, after = decision.decide(crash(T0, activated), POLICY, state)
        assert (made.verdict, made.action) == (V.ROLLBACK, A.PROPOSE)
        assert made.reason == (
            "critical: CrashLoop firing, value 2, threshold > 1, since 2025-12-06T05:45:40Z; "
            "release committed at 2025-12-05T23:46:40Z (it ran 1d without an incident): "
            "rolling back now may lose what it wrote, a human decides"
        )
        assert after.committed_at == T0 - 6 * HOUR  # an incident does not undo a commit

    def test_a_new_activation_resets_the_commit(self) -> None:
        state = model.TargetState(committed_at=T0 - HOUR, committed_release="started long ago")
        made, after = decision.decide(crash(T0, activated_at=T0 - 600), POLICY, state)
        assert made.action is A.ROLLBACK
        assert (after.committed_at, after.committed_release) == (None, None)

    def test_a_restart_of_the_same_release_keeps_its_commit(self) -> None:
        # the binary did not change: a crash and a restart days after the commit is the same
        # release, and rolling it back is still a person's call
        release = model.Release("/opt/lavalink-rust/lavalink (inode 7)", since=T0 - 50 * HOUR)
        state = model.TargetState(committed_at=T0 - HOUR, committed_release=release.name)
        restarted = dataclasses.replace(crash(T0, activated_at=T0 - 120), release=release)
        made, after = decision.decide(restarted, POLICY, state)
        assert made.action is A.PROPOSE and "release committed at" in made.reason
        assert after.committed_release == release.name
        # a new binary is a deploy: the commit is gone
        new = model.Release("/opt/lavalink-rust/lavalink (inode 8)", since=T0 - 130)
        made, after = decision.decide(dataclasses.replace(restarted, release=new), POLICY, state)
        assert made.action is A.ROLLBACK and after.committed_at is None

    def test_a_binary_swapped_under_the_old_process_bakes_from_the_swap(self) -> None:
        # the old process (started 30h ago) still runs while the new binary is in place: the
        # new release must not inherit the old one's quiet hours
        old = model.Release("lavalink (inode 7)", since=T0 - 40 * HOUR)
        state = model.TargetState(committed_at=T0 - 6 * HOUR, committed_release=old.name)
        new = model.Release("lavalink (inode 8)", since=T0 - 60)
        swapped = dataclasses.replace(quiet(T0, activated_at=T0 - 30 * HOUR), release=new)
        _, after = decision.decide(swapped, POLICY, state)
        assert (after.committed_at, after.committed_release) == (None, None)
        # once the new process runs, a crash five minutes later rolls back automatically
        running = dataclasses.replace(crash(T0 + 300, activated_at=T0 + 30), release=new)
        made, after = decision.decide(running, POLICY, after)
        assert made.action is A.ROLLBACK and after.committed_at is None
        # and it commits a day after the new process started (later than the swap), not before
        later = dataclasses.replace(quiet(T0 + 24 * HOUR + 29, activated_at=T0 + 30), release=new)
        assert decision.decide(later, POLICY, model.TargetState())[1].committed_at is None
        day = dataclasses.replace(later, at=T0 + 24 * HOUR + 30)
        assert decision.decide(day, POLICY, model.TargetState())[1].committed_release == new.name

    def test_an_incident_restarts_the_bake(self) -> None:
        activated = T0 - 30 * HOUR
        # a warning closed 2 hours ago: 2h < 24h of quiet
        state = model.TargetState(last_closed_at=T0 - 2 * HOUR, last_closed_verdict=V.WARN)
        _, after = decision.decide(quiet(T0, activated), POLICY, state)
        assert after.committed_at is None
        # an incident that is open now blocks it too
        opened = model.TargetState(incident=model.IncidentState(T0 - 60, V.WARN, V.WARN))
        warn = model.Evaluation(
            "lavalink", T0, (signal(CPU, "firing", since=T0 - 600),), activated_at=activated
        )
        assert decision.decide(warn, POLICY, opened)[1].committed_at is None

    def test_missing_data_neither_blocks_nor_restarts_the_bake(self) -> None:
        activated = T0 - 30 * HOUR
        state = model.TargetState(
            last_closed_at=T0 - HOUR,
            last_closed_verdict=V.INCONCLUSIVE,
            incident=model.IncidentState(T0 - 60, V.INCONCLUSIVE),
            inconclusive_since=T0 - 60,
        )
        blind = model.Evaluation("lavalink", T0, (signal(CRASH, "nodata"),), activated_at=activated)
        made, after = decision.decide(blind, POLICY, state)
        assert made.verdict is V.INCONCLUSIVE
        assert after.committed_at == T0

    def test_off_by_default(self) -> None:
        policy = dataclasses.replace(POLICY, commit_after=None)
        _, state = decision.decide(quiet(T0, T0 - 1000 * HOUR), policy, model.TargetState())
        assert state.committed_at is None

    def test_unknown_activation_keeps_what_was_known(self) -> None:
        state = model.TargetState(
            committed_at=T0 - HOUR, committed_release="started long ago", activated_at=None
        )
        _, after = decision.decide(quiet(T0, None), POLICY, state)
        assert after.committed_at == T0 - HOUR


class TestJournal:
    """What the guard and the commit read back from the journal across a restart."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> journal.Journal:
        return journal.Journal.open(tmp_path)

    def test_runs_feed_the_loop_guard(self, store: journal.Journal) -> None:
        assert store.arming("lavalink") == journal.Arming(armed=True)

        def run(trigger: model.Trigger, at: float) -> int:
            return store.open_run(
                "lavalink", incident_id=None, trigger=trigger, initiated_by="w", reason="r", at=at
            )

        store.finish_run(
            run(model.Trigger.AUTO, T0), model.RunStatus.ABORTED, "preflight failed", at=T0 + 5
        )
        manual = run(model.Trigger.MANUAL, T0 + 10)
        store.finish_run(manual, model.RunStatus.RESTORED, "fallback failed", at=T0 + 90)
        arming = store.arming("lavalink")
        # an aborted run switched nothing; an operator's order is no automatic switch
        assert arming.last_switch_at is None
        assert arming.fallback_failed_at == T0 + 90
        # an approved one counts: a timeout that proceeded is the clock's switch, not a person's
        approved = run(model.Trigger.APPROVED, T0 + 95)
        store.finish_run(approved, model.RunStatus.ABORTED, "preflight failed", at=T0 + 96)
        assert store.arming("lavalink").last_switch_at is None  # aborted: nothing switched
        approved = run(model.Trigger.APPROVED, T0 + 97)
        assert store.arming("lavalink").last_switch_at == T0 + 97
        store.finish_run(approved, model.RunStatus.RESTORED, "fallback failed", at=T0 + 98)
        auto = run(model.Trigger.AUTO, T0 + 100)
        assert store.arming("lavalink").last_switch_at == T0 + 100  # running counts
        store.finish_run(auto, model.RunStatus.SUCCEEDED, "ok", at=T0 + 160, disarm=True)
        state = store.target_state("lavalink")
        assert (state.last_switch_at, state.fallback_failed_at) == (T0 + 100, T0 + 98)
        assert not state.armed

    def test_the_commit_survives_a_restart(self, store: journal.Journal) -> None:
        store.set_committed("lavalink", T0, "/opt/lavalink-rust/lavalink modified 2025-12-05")
        state = store.target_state("lavalink")
        assert (state.committed_at, state.committed_release) == (
            T0,
            "/opt/lavalink-rust/lavalink modified 2025-12-05",
        )
        assert state.armed  # journaling a commit arms nothing and disarms nothing
        assert store.status(["lavalink"])[0]["committed_at"] == T0
        store.set_committed("lavalink", None, None)
        assert store.target_state("lavalink").committed_at is None

    def test_a_guarded_rollback_is_asked_as_a_proposal(self, store: journal.Journal) -> None:
        from watchdog import approval

        state = model.TargetState(fallback_failed_at=T0 - 60)
        evaluated = crash(T0)
        made, _ = decision.decide(evaluated, POLICY, state)
        store.record(
            evaluated,
            made,
            mode=model.Mode.APPROVE,
            outcome="asked",
            ask=journal.ApprovalAsk(expires_at=T0 + 900, required=1),
        )
        (row,) = store.approvals(target="lavalink")
        assert row.verdict == "propose"
        # so it never proceeds when nobody answers, even with on_timeout: proceed
        request = approval.Request(
            id=row.id,
            target="lavalink",
            incident=row.incident_id,
            requested_at=T0,
            expires_at=T0 + 900,
            required=1,
            status=approval.Status.PENDING,
            verdict=row.verdict,
        )
        ruling = approval.expiry(request, T0 + 901, approval.Rules(on_timeout="proceed"))
        assert ruling is not None and ruling.status is approval.Status.EXPIRED

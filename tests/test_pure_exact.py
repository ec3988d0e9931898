"""The pure modules' outputs compared whole: every field of an evaluation, a decision and a
ruling, every word of a reason, at real timestamps.

Spot checks of one field let a mutant that blanks another survive (the mutation run found them:
``make mutation``); these tests compare the whole value instead. Timestamps are of December 2025,
so ``now - t`` and ``now + t`` never agree by accident.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest

from tests.conftest import rule, signal
from watchdog import approval, decision, evaluation, model

S, V, A, C = model.SignalState, model.Verdict, model.Action, model.IncidentChange
T0 = 1_765_000_000.0  # 2025-12-06T05:46:40Z
POLICY = model.Policy(escalate_score=3, inconclusive_after=300, warmup=120, cooldown=3600)
CRASH = rule("CrashLoop", severity="critical", category="instability", threshold=">= 3")
SLOW = rule("Slow", severity="critical", category="performance", for_=60, threshold="> 0.5")
CPU = rule("CpuHigh", severity="warning", category="minor_performance", weight=1)
SOURCE = rule("SourceFailing", severity="warning", category="single_source", weight=2)
KEPT = rule("Kept", severity="critical", keep=60)
PRESENT = model.QueryResult(points=(model.Point((("job", "x"),), 1.0),))


def obs(at: float, results: dict[str, model.QueryResult], **kwargs: object) -> model.Observation:
    return model.Observation(at=at, results=results, presence=PRESENT, **kwargs)  # type: ignore[arg-type]


def one(value: float, **labels: str) -> model.QueryResult:
    return model.QueryResult(points=(model.Point(tuple(sorted(labels.items())), value),))


class TestEvaluationWhole:
    def test_every_path_at_once_keeps_each_rule_and_the_evaluation_fields(self) -> None:
        pending = MappingProxyType({(): model.AlertMemory(active_at=T0 - 15, value=7.0)})
        memory = MappingProxyType({"Missing": pending, "Failing": pending, "Twins": pending})
        rules = [
            rule("Missing"),
            rule("Failing"),
            rule("Twins"),
            rule("Fires"),
            rule("Quiet"),
        ]
        twins = model.QueryResult(
            points=(model.Point((("a", "1"),), 2.0), model.Point((("a", "1"),), 3.0))
        )
        observed = obs(
            T0,
            {
                "Failing": model.QueryResult(error="HTTP 503"),
                "Twins": twins,
                "Fires": one(4.5, probe="info"),
                "Quiet": model.QueryResult(),
            },
            activated_at=T0 - 3600,
            activation_failed=True,
        )
        made, after = evaluation.evaluate("lavalink", rules, observed, memory)
        assert made == model.Evaluation(
            target="lavalink",
            at=T0,
            signals=(
                model.Signal(rules[0], S.ERROR, detail="not queried"),
                model.Signal(rules[1], S.ERROR, detail="HTTP 503"),
                model.Signal(
                    rules[2],
                    S.ERROR,
                    detail="several series with the same labels once __name__ is dropped",
                ),
                model.Signal(
                    rules[3], S.FIRING, value=4.5, labels=(("probe", "info"),), active_since=T0
                ),
                model.Signal(rules[4], S.OK),
            ),
            activated_at=T0 - 3600,
            activation_failed=True,
        )
        # a failed query leaves the rule's state exactly as it was, as Prometheus does
        assert after["Missing"] is pending and after["Failing"] is pending
        assert after["Twins"] is pending
        assert dict(after["Fires"]) == {
            (("probe", "info"),): model.AlertMemory(
                active_at=T0, firing=True, fired_at=T0, value=4.5
            )
        }
        assert dict(after["Quiet"]) == {}

    def test_an_empty_error_stays_empty(self) -> None:
        made, _ = evaluation.evaluate(
            "t", [CRASH], obs(T0, {"CrashLoop": model.QueryResult(error="")}), {}
        )
        assert made.signals == (model.Signal(CRASH, S.ERROR, detail=""),)

    def test_a_kept_series_is_kept_beside_one_still_true(self) -> None:
        both = model.QueryResult(
            points=(model.Point((("i", "a"),), 5.0), model.Point((("i", "b"),), 6.0))
        )
        _, memory = evaluation.evaluate("t", [KEPT], obs(T0, {"Kept": both}), {})
        _, memory = evaluation.evaluate(
            "t", [KEPT], obs(T0 + 15, {"Kept": one(5.0, i="a")}), memory
        )
        assert dict(memory["Kept"]) == {
            (("i", "a"),): model.AlertMemory(active_at=T0, firing=True, fired_at=T0, value=5.0),
            (("i", "b"),): model.AlertMemory(
                active_at=T0, firing=True, fired_at=T0, keep_firing_since=T0 + 15, value=6.0
            ),
        }

    def test_a_failed_presence_query_fails_every_scraped_rule_and_keeps_their_state(
        self,
    ) -> None:
        pending = MappingProxyType({(): model.AlertMemory(active_at=T0 - 15, value=7.0)})
        rules = [rule("A"), rule("B")]
        observed = model.Observation(at=T0, results={}, presence=model.QueryResult(error="timeout"))
        made, after = evaluation.evaluate(
            "lavalink", rules, observed, MappingProxyType({"A": pending})
        )
        detail = "presence query failed: timeout"
        assert made.signals == (
            model.Signal(rules[0], S.ERROR, detail=detail),
            model.Signal(rules[1], S.ERROR, detail=detail),
        )
        assert after["A"] is pending and dict(after["B"]) == {}

    def test_no_data_speaks_for_every_scraped_rule_and_forgets_pending(self) -> None:
        firing = MappingProxyType(
            {(): model.AlertMemory(active_at=T0 - 600, firing=True, fired_at=T0 - 540, value=9)}
        )
        pending = MappingProxyType({(): model.AlertMemory(active_at=T0 - 15, value=7.0)})
        rules = [rule("A"), KEPT]
        observed = model.Observation(at=T0, results={}, presence=model.QueryResult())
        made, after = evaluation.evaluate(
            "lavalink", rules, observed, MappingProxyType({"A": pending, "Kept": firing})
        )
        detail = "no data: the presence query returned nothing"
        assert made.signals == (
            model.Signal(rules[0], S.NODATA, detail=detail),
            model.Signal(KEPT, S.NODATA, detail=detail),
        )
        assert dict(after["A"]) == {}
        # a firing alert with keep_firing_for is kept, every field carried
        assert dict(after["Kept"]) == {
            (): model.AlertMemory(
                active_at=T0 - 600, firing=True, fired_at=T0 - 540, keep_firing_since=T0, value=9
            )
        }

    def test_keep_firing_for_holds_then_lets_go(self) -> None:
        made, memory = evaluation.evaluate("t", [KEPT], obs(T0, {"Kept": one(5.0)}), {})
        assert made.signals[0].state is S.FIRING
        # kept from the first evaluation it was false (T0 + 15) for 60 s
        for at, expected in ((T0 + 15, S.FIRING), (T0 + 74, S.FIRING), (T0 + 75, S.OK)):
            made, memory = evaluation.evaluate(
                "t", [KEPT], obs(at, {"Kept": model.QueryResult()}), memory
            )
            assert made.signals[0].state is expected, at
        assert memory["Kept"] == {}

    def test_keep_firing_for_of_one_second_keeps_for_one_second(self) -> None:
        short = rule("Short", severity="critical", keep=1)
        _, memory = evaluation.evaluate("t", [short], obs(T0, {"Short": one(5.0)}), {})
        made, _ = evaluation.evaluate(
            "t", [short], obs(T0 + 0.5, {"Short": model.QueryResult()}), memory
        )
        assert made.signals[0] == model.Signal(
            short, S.FIRING, value=5.0, labels=(), active_since=T0, kept_since=T0 + 0.5
        )

    def test_a_firing_series_keeps_its_fired_at(self) -> None:
        _, memory = evaluation.evaluate("t", [CRASH], obs(T0, {"CrashLoop": one(3)}), {})
        _, memory = evaluation.evaluate("t", [CRASH], obs(T0 + 15, {"CrashLoop": one(4)}), memory)
        assert dict(memory["CrashLoop"]) == {
            (): model.AlertMemory(active_at=T0, firing=True, fired_at=T0, value=4.0)
        }


class TestWhichSeriesSpeaks:
    """When several series of one rule fire, the oldest speaks (its ``active_since`` feeds
    warm-up), then the highest value; firing beats pending; NaN is the lowest value."""

    def memory(self, *alerts: tuple[str, model.AlertMemory]) -> model.RuleMemory:
        return MappingProxyType({(("i", name),): alert for name, alert in alerts})

    def test_firing_beats_pending_whatever_the_age(self) -> None:
        memory = self.memory(
            ("old", model.AlertMemory(active_at=T0 - 900, value=9.0)),
            ("new", model.AlertMemory(active_at=T0 - 60, firing=True, fired_at=T0, value=1.0)),
        )
        for ordered in (memory, MappingProxyType(dict(reversed(list(memory.items()))))):
            assert evaluation.signal_of(SLOW, ordered) == model.Signal(
                SLOW, S.FIRING, value=1.0, labels=(("i", "new"),), active_since=T0 - 60
            )

    def test_the_oldest_firing_series_speaks_not_the_highest(self) -> None:
        memory = self.memory(
            ("new", model.AlertMemory(active_at=T0 - 60, firing=True, fired_at=T0, value=9.0)),
            ("old", model.AlertMemory(active_at=T0 - 900, firing=True, fired_at=T0, value=1.0)),
        )
        for ordered in (memory, MappingProxyType(dict(reversed(list(memory.items()))))):
            assert evaluation.signal_of(SLOW, ordered).labels == (("i", "old"),)
            assert evaluation.signal_of(SLOW, ordered).active_since == T0 - 900

    def test_among_equals_the_highest_value_and_nan_is_lowest(self) -> None:
        memory = self.memory(
            ("nan", model.AlertMemory(active_at=T0, firing=True, fired_at=T0, value=math.nan)),
            ("two", model.AlertMemory(active_at=T0, firing=True, fired_at=T0, value=2.0)),
            ("one", model.AlertMemory(active_at=T0, firing=True, fired_at=T0, value=1.0)),
        )
        for ordered in (memory, MappingProxyType(dict(reversed(list(memory.items()))))):
            assert evaluation.signal_of(SLOW, ordered).labels == (("i", "two"),)
        ties = self.memory(
            ("a", model.AlertMemory(active_at=T0, firing=True, fired_at=T0, value=2.0)),
            ("b", model.AlertMemory(active_at=T0, firing=True, fired_at=T0, value=2.0)),
        )
        assert evaluation.signal_of(SLOW, ties).labels == (("i", "a"),)  # the first stays

    def test_the_oldest_series_decides_warm_up(self) -> None:
        # two series fire; the old one began inside warm-up, the new one after it
        memory = self.memory(
            ("old", model.AlertMemory(active_at=T0 + 30, firing=True, fired_at=T0, value=1.0)),
            ("new", model.AlertMemory(active_at=T0 + 200, firing=True, fired_at=T0, value=1.0)),
        )
        speaking = evaluation.signal_of(SLOW, memory)
        evaluated = model.Evaluation("t", T0 + 240, (speaking,), activated_at=T0)
        made = decision.decide(evaluated, POLICY, model.TargetState())[0]
        # held from warm-up's end (T0 + 120) for 120 s >= for 60 s: it counts
        assert made.verdict is V.ROLLBACK


class TestDecisionWhole:
    def test_a_disarmed_decision_is_whole(self) -> None:
        evaluated = model.Evaluation(
            "lavalink",
            T0,
            (
                signal(CRASH, "firing", since=T0 - 60),
                signal(CPU, "firing", since=T0 - 60),
                signal(SLOW, "firing", since=T0 - 60),
            ),
            activated_at=T0 - 90,
        )
        state = model.TargetState(
            armed=False, last_closed_at=T0 - 100, fallback_failed_at=T0, activated_at=T0 - 90
        )
        made, after = decision.decide(evaluated, POLICY, state)
        assert made == model.Decision(
            target="lavalink",
            at=T0,
            verdict=V.ROLLBACK,
            action=A.NONE,
            reason=(
                "disarmed after a rollback (re-arm to act again); critical: CrashLoop firing, "
                "value 2, threshold >= 3, since 2025-12-06T05:45:40Z; warm-up until "
                "2025-12-06T05:47:10Z ignores CpuHigh, Slow"
            ),
            score=0,
            firing=("CrashLoop",),
            ignored=("CpuHigh", "Slow"),
        )
        assert after == state
        counted = model.Evaluation("lavalink", T0, (signal(CPU, "firing", since=T0 - 60),))
        assert decision.decide(counted, POLICY, model.TargetState(armed=False))[0].score == 1
        # a disarmed target's release does not bake: the fallback runs
        bake = model.Policy(commit_after=60)
        quiet = model.Evaluation("lavalink", T0 + 9000, (), activated_at=T0 - 90)
        assert decision.decide(quiet, bake, state)[1].committed_at is None

    def test_reasons_word_for_word(self) -> None:
        a = signal(CPU, "firing", since=T0 - 600)
        b = signal(SOURCE, "firing", since=T0 - 300)
        made = decision.decide(model.Evaluation("t", T0, (a, b)), POLICY, model.TargetState())[0]
        assert made.reason == (
            "warnings score 3 >= escalate_score 3: CpuHigh firing, value 2, threshold > 1, "
            "since 2025-12-06T05:36:40Z; SourceFailing firing, value 2, threshold > 1, "
            "since 2025-12-06T05:41:40Z"
        )
        assert made.firing == ("CpuHigh", "SourceFailing")
        metrics = rule("MetricsMissing", severity="warning", category="monitoring", weight=1)
        c = signal(metrics, "firing", since=T0 - 60)
        made = decision.decide(model.Evaluation("t", T0, (a, c)), POLICY, model.TargetState())[0]
        assert made.reason == (
            "warning (score 2 < escalate_score 3): CpuHigh firing, value 2, threshold > 1, "
            "since 2025-12-06T05:36:40Z; MetricsMissing firing, value 2, threshold > 1, "
            "since 2025-12-06T05:45:40Z"
        )
        assert made.firing == ("CpuHigh", "MetricsMissing")
        d = signal(CRASH, "firing", since=T0 - 60)
        e = signal(KEPT, "firing", since=T0 - 30)
        made = decision.decide(model.Evaluation("t", T0, (d, e, a)), POLICY, model.TargetState())[0]
        assert made.reason == (
            "critical: CrashLoop firing, value 2, threshold >= 3, since 2025-12-06T05:45:40Z; "
            "Kept firing, value 2, threshold > 1, since 2025-12-06T05:46:10Z"
        )
        assert made.firing == ("CrashLoop", "Kept", "CpuHigh")

    def test_warm_up_reason_names_every_ignored_signal(self) -> None:
        slow2 = rule("Slower", severity="critical", category="performance", for_=60)
        evaluated = model.Evaluation(
            "t",
            T0 + 60,
            (signal(SLOW, "firing", since=T0), signal(slow2, "firing", since=T0)),
            activated_at=T0,
        )
        made = decision.decide(evaluated, POLICY, model.TargetState())[0]
        assert made.reason == (
            "all 2 signals quiet; warm-up until 2025-12-06T05:48:40Z ignores Slow, Slower"
        )
        assert made.ignored == ("Slow", "Slower")

    def test_warm_up_without_a_known_activation(self) -> None:
        evaluated = model.Evaluation(
            "t", T0, (signal(SLOW, "firing", since=T0 - 600),), activation_failed=True
        )
        made = decision.decide(evaluated, POLICY, model.TargetState())[0]
        assert made.reason == (
            "all 1 signals quiet; warm-up until the activation time is known again (its query "
            "failed) ignores Slow"
        )

    def test_no_warm_up_note_when_nothing_is_ignored(self) -> None:
        evaluated = model.Evaluation(
            "t", T0, (signal(CRASH, "firing", since=T0 - 60),), activated_at=T0 - 30
        )
        made = decision.decide(evaluated, POLICY, model.TargetState())[0]
        assert "warm-up" not in made.reason and made.ignored == ()

    def test_a_signal_without_active_since_counts_from_now_in_warm_up(self) -> None:
        bare = model.Signal(SLOW, S.FIRING, value=1.0)
        evaluated = model.Evaluation("t", T0 + 3600, (bare,), activated_at=T0)
        # warm-up long over, but the condition was first seen now: its `for` has not passed
        assert decision.decide(evaluated, POLICY, model.TargetState())[0].verdict is V.HOLD

    def test_rearm_reason_and_its_boundary(self) -> None:
        armed_at = T0 - 30
        stale = model.Signal(
            CPU, S.FIRING, value=1.0, active_since=T0 - 600, evidence_at=armed_at - 1
        )
        made = decision.decide(
            model.Evaluation("t", T0, (stale,)), POLICY, model.TargetState(armed_at=armed_at)
        )[0]
        assert made.reason == (
            "all 1 signals quiet; re-armed at 2025-12-06T05:46:10Z: evidence from before "
            "ignored (CpuHigh)"
        )
        fresh = model.Signal(
            CPU, S.FIRING, value=1.0, active_since=T0 - 600, evidence_at=armed_at
        )  # delivered again at the very instant of the re-arm: new evidence
        made = decision.decide(
            model.Evaluation("t", T0, (fresh,)), POLICY, model.TargetState(armed_at=armed_at)
        )[0]
        assert made.verdict is V.WARN

    def test_rearm_names_every_stale_signal_and_only_when_there_are_some(self) -> None:
        armed = model.TargetState(armed_at=T0 - 30)
        old = dict(value=1.0, active_since=T0 - 600, evidence_at=T0 - 100)
        stale = (model.Signal(CPU, S.FIRING, **old), model.Signal(SOURCE, S.FIRING, **old))  # type: ignore[arg-type]
        made = decision.decide(model.Evaluation("t", T0, stale), POLICY, armed)[0]
        assert made.reason.endswith("ignored (CpuHigh, SourceFailing)")
        fresh = model.Signal(CRASH, S.FIRING, value=3.0, active_since=T0 - 600, evidence_at=T0)
        made = decision.decide(model.Evaluation("t", T0, (fresh,)), POLICY, armed)[0]
        assert made.reason == (
            "critical: CrashLoop firing, value 3, threshold >= 3, since 2025-12-06T05:36:40Z"
        )

    def test_rearm_without_active_since_reads_the_delivery(self) -> None:
        delivered = model.Signal(CRASH, S.FIRING, value=3.0, evidence_at=T0 - 100)
        made = decision.decide(
            model.Evaluation("t", T0, (delivered,)), POLICY, model.TargetState(armed_at=T0 - 30)
        )[0]
        assert made.verdict is V.ROLLBACK  # seen now, after the re-arm

    def test_rearm_reads_a_kept_alert_at_its_last_true_instant(self) -> None:
        # CrashLoop, no `for`, no range: clean right after the re-arm, but kept since before it
        kept = model.Signal(CRASH, S.FIRING, value=3.0, active_since=T0 - 600, kept_since=T0 - 100)
        made = decision.decide(
            model.Evaluation("t", T0, (kept,)), POLICY, model.TargetState(armed_at=T0 - 50)
        )[0]
        assert made.verdict is V.HOLD and made.ignored == ("CrashLoop",)

    def test_quiet_evaluations_leave_the_incident_field_none(self) -> None:
        quiet = model.Evaluation("t", T0, (signal(CRASH, "ok"),))
        made, after = decision.decide(quiet, POLICY, model.TargetState())
        assert made == model.Decision(
            target="t",
            at=T0,
            verdict=V.HOLD,
            action=A.NONE,
            reason="all 1 signals quiet",
            incident=C.NONE,
        )
        assert after == model.TargetState()

    def test_inconclusive_since_is_kept_only_while_inconclusive(self) -> None:
        blind = model.Evaluation("t", T0, (signal(CRASH, "nodata"),))
        _, state = decision.decide(blind, POLICY, model.TargetState())
        assert state.inconclusive_since == T0
        made, state = decision.decide(
            model.Evaluation("t", T0 + 300, (signal(CRASH, "nodata"),)), POLICY, state
        )
        assert made.action is A.NOTIFY
        assert made.reason == (
            "no evidence from 1 of 1 signals: nodata (CrashLoop); inconclusive for 5m"
        )
        assert state.inconclusive_since == T0
        _, state = decision.decide(
            model.Evaluation("t", T0 + 315, (signal(CPU, "firing", since=T0),)), POLICY, state
        )
        assert state.inconclusive_since is None


class TestIncidentsAndCooldown:
    """The incident's life at real instants, including a one-evaluation incident."""

    def test_open_escalate_close_and_the_cooldown_after_a_real_close(self) -> None:
        state = model.TargetState()
        warn = model.Evaluation("t", T0, (signal(CPU, "firing", since=T0 - 60),))
        made, state = decision.decide(warn, POLICY, state)
        assert (made.incident, state.incident) == (C.OPEN, model.IncidentState(T0, V.WARN, V.WARN))
        crash = model.Evaluation("t", T0 + 15, (signal(CRASH, "firing", since=T0),))
        made, state = decision.decide(crash, POLICY, state)
        assert made.incident is C.ESCALATE and made.action is A.ROLLBACK
        assert state.incident == model.IncidentState(T0, V.ROLLBACK, V.ROLLBACK)
        quiet = model.Evaluation("t", T0 + 30, (signal(CRASH, "ok"),))
        made, state = decision.decide(quiet, POLICY, state)
        assert made.incident is C.CLOSE
        assert (state.incident, state.last_closed_at, state.last_closed_verdict) == (
            None,
            T0 + 30,
            V.ROLLBACK,
        )
        # 59 minutes later the same crash is silent, and says until when
        made, state = decision.decide(
            model.Evaluation("t", T0 + 30 + 3599, (signal(CRASH, "firing", since=T0),)),
            POLICY,
            state,
        )
        assert (made.incident, made.action) == (C.OPEN, A.NONE)
        assert made.reason == (
            "critical: CrashLoop firing, value 2, threshold >= 3, since 2025-12-06T05:46:40Z; "
            "cooldown until 2025-12-06T06:47:10Z: no new action"
        )
        assert state.incident == model.IncidentState(T0 + 3629, V.ROLLBACK, V.ROLLBACK)

    def test_the_cooldown_ends_an_hour_after_the_close(self) -> None:
        state = model.TargetState(last_closed_at=T0, last_closed_verdict=V.ROLLBACK)
        crash = model.Evaluation("t", T0 + 3600, (signal(CRASH, "firing", since=T0),))
        made, _ = decision.decide(crash, POLICY, state)
        assert made.action is A.ROLLBACK

    def test_a_one_evaluation_incident_holds_a_cooldown_too(self) -> None:
        state = model.TargetState()
        crash = model.Evaluation("t", T0, (signal(CRASH, "firing", since=T0 - 60),))
        made, state = decision.decide(crash, POLICY, state)
        assert (made.incident, made.action) == (C.OPEN, A.ROLLBACK)
        made, state = decision.decide(
            model.Evaluation("t", T0 + 15, (signal(CRASH, "ok"),)), POLICY, state
        )
        assert made.incident is C.CLOSE
        made, _ = decision.decide(
            model.Evaluation("t", T0 + 30, (signal(CRASH, "firing", since=T0 + 30),)),
            POLICY,
            state,
        )
        assert made.action is A.NONE
        # escalation breaks through a cooldown held by a lesser verdict
        lesser = model.TargetState(last_closed_at=T0, last_closed_verdict=V.WARN)
        made, after = decision.decide(
            model.Evaluation("t", T0 + 30, (signal(CRASH, "firing", since=T0),)), POLICY, lesser
        )
        assert made.action is A.ROLLBACK
        assert after.incident == model.IncidentState(T0 + 30, V.ROLLBACK, V.ROLLBACK)

    def test_escalation_inside_a_cooldown_keeps_the_carried_action(self) -> None:
        state = model.TargetState(
            incident=model.IncidentState(T0 - 100, V.WARN, V.ROLLBACK),
            last_closed_at=T0 - 600,
            last_closed_verdict=V.ROLLBACK,
        )
        propose = model.Evaluation(
            "t", T0, (signal(CPU, "firing", since=T0 - 60), signal(SOURCE, "firing", since=T0))
        )
        made, after = decision.decide(propose, POLICY, state)
        assert (made.verdict, made.action, made.incident) == (V.PROPOSE, A.NONE, C.ESCALATE)
        assert after.incident == model.IncidentState(T0 - 100, V.PROPOSE, V.ROLLBACK)
        assert (after.last_closed_at, after.last_closed_verdict) == (T0 - 600, V.ROLLBACK)

    def test_escalation_keeps_what_was_acted_on(self) -> None:
        state = model.TargetState(incident=model.IncidentState(T0 - 100, V.INCONCLUSIVE, None))
        warn = model.Evaluation("t", T0, (signal(CPU, "firing", since=T0 - 60),))
        _, after = decision.decide(warn, POLICY, state)
        assert after.incident == model.IncidentState(T0 - 100, V.WARN, V.WARN)
        waiting = model.TargetState(
            incident=model.IncidentState(T0 - 100, V.INCONCLUSIVE, None),
            inconclusive_since=T0 - 100,
        )
        ignored = model.Evaluation(
            "t",
            T0,
            (signal(SLOW, "firing", since=T0), signal(CRASH, "nodata")),
            activated_at=T0 - 30,
        )
        made, after = decision.decide(ignored, POLICY, waiting)
        assert made.verdict is V.INCONCLUSIVE and made.action is A.NONE
        assert after.incident == model.IncidentState(T0 - 100, V.INCONCLUSIVE, None)


class TestWords:
    def test_describe_every_part(self) -> None:
        full = model.Signal(
            SLOW,
            S.FIRING,
            value=0.8123,
            labels=(("instance", "x:1"), ("job", "j"), ("probe", "info"), ("source", "yt")),
            active_since=T0,
            detail="firing in Alertmanager",
        )
        assert decision.describe(full) == (
            'Slow firing {probe="info", source="yt"}, value 0.8123, threshold > 0.5 for 1m, '
            "since 2025-12-06T05:46:40Z, firing in Alertmanager"
        )
        pending = model.Signal(SLOW, S.PENDING, value=0.7, detail="ignored detail")
        assert decision.describe(pending) == "Slow pending, value 0.7, threshold > 0.5 for 1m"
        said = rule("Said", for_=300, threshold="> 1 for 5m")
        assert decision.describe(model.Signal(said, S.OK)) == "Said ok, threshold > 1 for 5m"
        bare = rule("Bare", threshold="")
        assert decision.describe(model.Signal(bare, S.OK)) == "Bare ok"

    def test_a_nan_value_reads_nan_in_the_reason(self) -> None:
        nan = model.Signal(CRASH, S.FIRING, value=math.nan, active_since=T0)
        made = decision.decide(model.Evaluation("t", T0, (nan,)), POLICY, model.TargetState())[0]
        assert made.reason == (
            "critical: CrashLoop firing, value NaN, threshold >= 3, since 2025-12-06T05:46:40Z"
        )

    @pytest.mark.parametrize(
        ("value", "text"),
        [
            (3.0, "3"),
            (-2.0, "-2"),
            (0.123456, "0.1235"),
            (1234.5, "1234"),
            (1e15, "1e+15"),
            (999_999_999_999_999.0, "999999999999999"),
            (1e15 + 1, "1e+15"),
            (math.inf, "+Inf"),  # histogram_quantile in the +Inf bucket: this used to raise
            (-math.inf, "-Inf"),
        ],
    )
    def test_numbers(self, value: float, text: str) -> None:
        signal_ = model.Signal(rule("N", threshold=""), S.PENDING, value=value)
        assert decision.describe(signal_) == f"N pending, value {text}"

    def test_missing_data_summarised_by_cause_with_at_most_four_names(self) -> None:
        names = [rule(f"R{i}") for i in range(6)]
        failing = [model.Signal(r, S.ERROR, detail="HTTP 503") for r in names[:5]]
        signals = (*failing, model.Signal(names[5], S.NODATA))
        made = decision.decide(model.Evaluation("t", T0, signals), POLICY, model.TargetState())[0]
        assert made.reason == (
            "no evidence from 6 of 6 signals: HTTP 503 (R0, R1, R2, R3, ...); nodata (R5)"
        )
        four = tuple(model.Signal(r, S.ERROR, detail="x") for r in names[:4])
        made = decision.decide(model.Evaluation("t", T0, four), POLICY, model.TargetState())[0]
        assert made.reason == "no evidence from 4 of 4 signals: x (R0, R1, R2, R3)"


class TestRulingsWhole:
    RULES = approval.Rules(timeout=900, required=2, approvers=frozenset({"alice", "bob"}))

    def request(self, **change: object) -> approval.Request:
        fields: dict[str, object] = {
            "id": 7,
            "target": "lavalink",
            "incident": 3,
            "requested_at": T0,
            "expires_at": T0 + 900,
            "required": 2,
            "status": approval.Status.PENDING,
        }
        fields.update(change)
        return approval.Request(**fields)  # type: ignore[arg-type]

    def vote(self, who: str, *, approve: bool = True, at: float = T0 + 10) -> approval.Vote:
        return approval.Vote(approve=approve, identities=("U1", who), via="slack", at=at)

    def test_each_ruling_whole(self) -> None:
        judge = approval.judge
        assert judge(self.request(), self.vote("alice"), self.RULES) == approval.Ruling(
            True, approval.Status.PENDING, "approved by alice (slack): 1 of 2", voter="alice"
        )
        second = self.request(approved_by=("alice",))
        assert judge(second, self.vote("bob"), self.RULES) == approval.Ruling(
            True, approval.Status.APPROVED, "approved by alice, bob (slack)", voter="bob"
        )
        assert judge(second, self.vote("alice"), self.RULES) == approval.Ruling(
            False,
            approval.Status.PENDING,
            "alice already approved #7; another approver is needed",
            voter="alice",
            refusal=approval.Refusal.DUPLICATE,
        )
        assert judge(self.request(), self.vote("bob", approve=False), self.RULES) == (
            approval.Ruling(True, approval.Status.DENIED, "denied by bob (slack)", voter="bob")
        )
        done = self.request(status=approval.Status.DENIED)
        assert judge(done, self.vote("alice"), self.RULES) == approval.Ruling(
            False,
            approval.Status.DENIED,
            "approval #7 was already denied",
            refusal=approval.Refusal.DECIDED,
        )
        late = self.vote("alice", at=T0 + 900)
        assert judge(self.request(), late, self.RULES) == approval.Ruling(
            False,
            approval.Status.PENDING,
            "approval #7 expired at 2025-12-06T06:01:40Z",
            refusal=approval.Refusal.EXPIRED,
        )

    def test_each_expiry_whole(self) -> None:
        expiry = approval.expiry
        assert expiry(self.request(), T0 + 899, self.RULES) is None
        assert expiry(self.request(), T0 + 900, self.RULES) == approval.Ruling(
            True, approval.Status.EXPIRED, "nobody decided in time; on_timeout: deny"
        )
        proceed = approval.Rules(on_timeout="proceed")
        assert expiry(self.request(), T0 + 900, proceed) == approval.Ruling(
            True, approval.Status.APPROVED, "nobody decided in time; on_timeout: proceed"
        )
        proposal = self.request(verdict="propose")
        assert expiry(proposal, T0 + 900, proceed) == approval.Ruling(
            True, approval.Status.EXPIRED, "nobody decided in time; a proposal never proceeds"
        )
        decided = self.request(status=approval.Status.APPROVED)
        assert expiry(decided, T0 + 10_000, proceed) is None


class TestAlertmanagerJoins:
    """``with_alerts``: what Alertmanager delivered joins the evaluation, whole."""

    def alert(self, r: model.Rule, starts: float, **kwargs: object) -> model.ExternalAlert:
        return model.ExternalAlert(
            rule=r,
            labels=(("alertname", r.name),),
            starts_at=starts,
            **kwargs,  # type: ignore[arg-type]
        )

    def test_each_state_and_an_unknown_alert(self) -> None:
        own = (
            model.Signal(CRASH, S.PENDING, value=2.0, active_since=T0 - 10),
            model.Signal(SLOW, S.OK),
            model.Signal(CPU, S.NODATA, detail="no data"),
            model.Signal(SOURCE, S.FIRING, value=5.0, active_since=T0 - 400),
            model.Signal(KEPT, S.OK),  # nothing delivered for it
        )
        evaluated = model.Evaluation("t", T0, own, activated_at=T0 - 9000)
        other = rule("Foreign", severity="warning")
        alerts = [
            self.alert(CRASH, T0 - 300, last_seen=T0 - 5),
            self.alert(CRASH, T0 - 900),  # the oldest of one name speaks for it
            self.alert(SLOW, T0 - 300),
            self.alert(CPU, T0 - 200),
            self.alert(SOURCE, T0 - 100),
            self.alert(other, T0 - 50, last_seen=T0 - 1),
        ]
        joined = evaluation.with_alerts(evaluated, alerts)
        delivered = "firing in Alertmanager"
        assert joined == model.Evaluation(
            "t",
            T0,
            (
                model.Signal(
                    CRASH,
                    S.FIRING,
                    labels=(("alertname", "CrashLoop"),),
                    active_since=T0 - 900,
                    detail=delivered,
                    evidence_at=T0 - 900,
                ),
                own[1],  # the watchdog's own fresh "ok" wins over older news
                model.Signal(
                    CPU,
                    S.FIRING,
                    labels=(("alertname", "CpuHigh"),),
                    active_since=T0 - 200,
                    detail=delivered,
                    evidence_at=T0 - 200,
                ),
                own[3],  # already firing: keeps its own value
                own[4],
                model.Signal(
                    other,
                    S.FIRING,
                    labels=(("alertname", "Foreign"),),
                    active_since=T0 - 50,
                    detail=delivered,
                    evidence_at=T0 - 1,
                ),
            ),
            activated_at=T0 - 9000,
        )

    def test_no_alerts_is_the_same_evaluation(self) -> None:
        evaluated = model.Evaluation("t", T0, (model.Signal(CRASH, S.OK),))
        assert evaluation.with_alerts(evaluated, []) is evaluated

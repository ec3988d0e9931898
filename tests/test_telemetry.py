"""The metrics registry: a signal that is gone leaves no series behind."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import rule, signal
from watchdog import model, telemetry


def series(recorder: telemetry.Recorder) -> set[tuple[str, str]]:
    text = generate_latest(recorder.registry).decode()
    return {
        (sample.labels["signal"], sample.labels["state"])
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rollback_watchdog_signal_state" and sample.value == 1
    }


def record(recorder: telemetry.Recorder, at: float, *signals: model.Signal) -> None:
    evaluation = model.Evaluation("lavalink", at, signals)
    made = model.Decision("lavalink", at, model.Verdict.HOLD, model.Action.NONE, "")
    recorder.record_evaluation(evaluation, made, duration=0.01, armed=True, source_errors=0)


def test_a_signal_that_is_gone_leaves_no_series() -> None:
    recorder = telemetry.Recorder()
    down, alert = rule("Down"), rule("FromAlertmanager")
    record(recorder, 1, signal(down, "ok"), signal(alert, "firing"))
    assert series(recorder) == {("Down", "ok"), ("FromAlertmanager", "firing")}
    record(recorder, 2, signal(down, "ok"))  # the alert resolved: its signal is gone
    assert series(recorder) == {("Down", "ok")}
    text = generate_latest(recorder.registry).decode()
    assert "FromAlertmanager" not in text  # not even its zeros


def test_many_alert_signals_then_none_leave_only_the_rules() -> None:
    recorder = telemetry.Recorder()
    down = rule("Down")
    record(recorder, 1, signal(down, "ok"), *(signal(rule(f"A{i}"), "firing") for i in range(500)))
    assert len(series(recorder)) == 501
    record(recorder, 2, signal(down, "ok"))
    assert series(recorder) == {("Down", "ok")}

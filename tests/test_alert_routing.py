"""Which alerts belong to which target: label matchers, and Alertmanager's alerts routed by
their labels only -- never by their name, never to "the only target"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import rule
from watchdog import config, matchers, model
from watchdog.sources import alertmanager

DOWN = rule("LavalinkDown")


def target(name: str, job: str, *, sets: list[str] | None = None) -> config.TargetSettings:
    return config.TargetSettings(
        name=name,
        primary=config.UnitSettings(unit=f"{job}.service", job=job),
        fallback=config.UnitSettings(unit=f"{job}-old.service", job=f"{job}-old"),
        rules=[Path("rules.yml")],
        alerts=config.AlertRouting(matchers=sets),
    )


def destinations(*targets: config.TargetSettings) -> list[alertmanager.Destination]:
    return [alertmanager.Destination(t.name, t.alert_matchers, [DOWN]) for t in targets]


def delivery(*labelsets: dict[str, str]) -> alertmanager.Delivery:
    alerts: list[dict[str, Any]] = [
        {
            "status": "firing",
            "labels": labels,
            "annotations": {},
            "startsAt": "2026-11-25T10:00:00Z",
            "fingerprint": f"fp{index}",
        }
        for index, labels in enumerate(labelsets)
    ]
    document = {"version": "4", "status": "firing", "alerts": alerts}
    return alertmanager.parse(json.dumps(document).encode())


CRITICAL = {"severity": "critical", "rollback_category": "instability"}
LAVALINK = target("lavalink", "lavalink-rust")


def test_the_attack_trial_s_foreign_alert_is_unrouted_even_with_one_target() -> None:
    found = delivery({"alertname": "PostgresDown", "job": "postgres", **CRITICAL})
    routed, unrouted = alertmanager.route(found, destinations(LAVALINK))
    assert routed == []
    [one] = unrouted
    assert one.reason is model.Unrouted.NO_MATCH and one.target is None
    assert "no rollback_target label and no target's matchers match" in one.detail


def test_a_rule_s_name_alone_routes_nothing() -> None:
    # the same rule, fired for another host's Lavalink: its labels name no target here
    found = delivery({"alertname": "LavalinkDown", "job": "lavalink-eu", **CRITICAL})
    routed, unrouted = alertmanager.route(found, destinations(LAVALINK))
    assert routed == [] and unrouted[0].reason is model.Unrouted.NO_MATCH


@pytest.mark.parametrize(
    "labels",
    [
        {"alertname": "LavalinkDown", "rollback_target": "lavalink"},  # the shipped rules' label
        {"alertname": "LavalinkDown", "job": "lavalink-rust"},  # the default: the primary's job
        {"alertname": "LavalinkDown", "target": "lavalink"},  # the watchdog's own metrics' label
    ],
)
def test_labels_that_say_so_route_the_alert(labels: dict[str, str]) -> None:
    routed, unrouted = alertmanager.route(delivery(labels), destinations(LAVALINK))
    assert unrouted == []
    [one] = routed
    assert (one.target, one.rule) == ("lavalink", DOWN)


def test_rollback_target_wins_and_must_name_a_target() -> None:
    other = target("audio", "audio-rust")
    labels = {"alertname": "LavalinkDown", "job": "lavalink-rust", "rollback_target": "audio"}
    routed, _ = alertmanager.route(delivery(labels), destinations(LAVALINK, other))
    assert [r.target for r in routed] == ["audio"]
    unknown = {"alertname": "LavalinkDown", "rollback_target": "gone", **CRITICAL}
    routed, unrouted = alertmanager.route(delivery(unknown), destinations(LAVALINK, other))
    assert routed == [] and unrouted[0].reason is model.Unrouted.UNKNOWN_TARGET
    assert "rollback_target='gone' is no target here" in unrouted[0].detail


def test_an_alert_two_targets_claim_belongs_to_neither() -> None:
    twin = target("lavalink-b", "lavalink-rust")  # the same job: the config is ambiguous
    labels = {"alertname": "LavalinkDown", "job": "lavalink-rust"}
    routed, unrouted = alertmanager.route(delivery(labels), destinations(LAVALINK, twin))
    assert routed == [] and unrouted[0].reason is model.Unrouted.AMBIGUOUS
    assert "lavalink, lavalink-b" in unrouted[0].detail


def test_own_matchers_replace_the_defaults() -> None:
    mine = target("lavalink", "lavalink-rust", sets=['{cluster="eu", instance=~"node-[12]:.*"}'])
    labels = {"alertname": "LavalinkDown", "cluster": "eu", "instance": "node-2:2333"}
    assert alertmanager.route(delivery(labels), destinations(mine))[0]
    elsewhere = {**labels, "instance": "node-3:2333"}
    assert alertmanager.route(delivery(elsewhere), destinations(mine))[0] == []
    by_job = {"alertname": "LavalinkDown", "job": "lavalink-rust"}  # no longer a default
    assert alertmanager.route(delivery(by_job), destinations(mine))[0] == []


def test_an_alert_of_the_target_that_is_no_signal_is_unrouted_with_its_target() -> None:
    labels = {"alertname": "DiskFull", "job": "lavalink-rust", "severity": "page"}
    routed, unrouted = alertmanager.route(delivery(labels), destinations(LAVALINK))
    assert routed == []
    [one] = unrouted
    assert (one.reason, one.target) == (model.Unrouted.NOT_A_SIGNAL, "lavalink")
    assert "lavalink's, but not a rule of this target, and unknown severity 'page'" in one.detail


@pytest.mark.parametrize(
    ("written", "labels", "expected"),
    [
        ('{job="a"}', {"job": "a"}, True),
        ('{job="a"}', {"job": "ab"}, False),
        ('{job=~"a|b"}', {"job": "b"}, True),
        ('{job=~"a"}', {"job": "xa"}, False),  # anchored, as Prometheus
        ('{job="a", env!="dev"}', {"job": "a"}, True),  # a missing label is ""
        ('{job="a", env!="dev"}', {"job": "a", "env": "dev"}, False),
        ('{job="a", env!~"dev|test"}', {"job": "a", "env": "test"}, False),
        ('{job="a", env=""}', {"job": "a"}, True),
        ('job="a", env="x"', {"job": "a", "env": "x"}, True),  # Alertmanager's bare form
        ('Down{job="a"}', {"alertname": "Down", "job": "a"}, True),
        ('Down{job="a"}', {"alertname": "Up", "job": "a"}, False),
        ('{__name__="Down", job="a"}', {"alertname": "Down", "job": "a"}, True),
        (r'{job="a", x=~"\\d+"}', {"job": "a", "x": "\u0663"}, False),  # ASCII digits, as RE2
        ('{job="say \\"hi\\""}', {"job": 'say "hi"'}, True),
    ],
)
def test_matchers_as_prometheus_reads_them(
    written: str, labels: dict[str, str], expected: bool
) -> None:
    assert matchers.parse(written).matches(labels) is expected


def test_a_matcher_set_prints_as_it_parses() -> None:
    written = '{job="a", instance=~"n.*", env!="dev", x!~"y"}'
    assert str(matchers.parse(written)) == written
    assert matchers.parse(str(matchers.parse('{j="q\\"uote"}'))).matches({"j": 'q"uote'})


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ("Down", "a label besides alertname"),  # a name alone: another host's Down too
        ('{alertname="Down"}', "a label besides alertname"),
        ('{job!=""}', "a label besides alertname"),  # every alert with a job
        ('{job=~".+"}', "a label besides alertname"),  # ... the same, as a pattern
        ('{job=~".*", env="prod"}', None),  # the env narrows it: fine
        ('{job="a", env=~"[[:alpha:]]+"}', "POSIX classes"),  # re would read another set
    ],
)
def test_a_matcher_set_that_would_take_everything_is_refused(
    written: str, problem: str | None
) -> None:
    if problem is None:
        assert matchers.parse(written).matches({"job": "x", "env": "prod"})
        return
    with pytest.raises(ValueError, match=problem):
        matchers.parse(written)

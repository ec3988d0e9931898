"""Config: defaults, relative paths, and errors that name file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from watchdog import config, errors, model, timefmt

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """\
targets:
  - name: lavalink
    primary: {unit: lavalink-rust.service, job: lavalink-rust}
    fallback: {unit: lavalink-java.service, job: lavalink-java}
    rules: [rules.yml]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_config_loads() -> None:
    settings = config.load(ROOT / "config" / "lavalink.yml")
    target = settings.target(None)
    assert target.rules[0].resolve() == (ROOT / "rules" / "lavalink.yml").resolve()
    assert settings.mode is model.Mode.OBSERVE


def test_defaults_and_derived_queries(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, MINIMAL))
    assert settings.interval == 15
    assert settings.policy.to_policy() == model.Policy()
    target = settings.targets[0]
    assert target.presence == 'up{job="lavalink-rust"}'
    assert target.activation == 'max(process_start_time_seconds{job="lavalink-rust"})'
    assert target.rules == [tmp_path / "rules.yml"]
    assert settings.listen.host == "127.0.0.1"


def test_durations_in_prometheus_syntax(tmp_path: Path) -> None:
    text = (
        MINIMAL + "interval: 30s\npolicy: {warmup: 1m30s, cooldown: 2h, inconclusive_after: 90}\n"
    )
    settings = config.load(write(tmp_path, text))
    assert (settings.interval, settings.policy.warmup, settings.policy.cooldown) == (30, 90, 7200)
    assert settings.policy.inconclusive_after == 90


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("mode: yolo\n", r"config\.yml:6: mode: Input should be 'auto', 'approve' or 'observe'"),
        ("interval: soon\n", r"config\.yml:6: interval: not a duration: 'soon'"),
        ("intervall: 15s\n", r"config\.yml:6: intervall: unknown field"),
        (
            "prometheus: {url: ftp://x}\n",
            r"config\.yml:6: prometheus\.url: 'ftp://x' is not an http",
        ),
        (
            "policy: {escalate_score: 0}\n",
            r"policy\.escalate_score: Input should be greater than 0",
        ),
        (
            "prometheus: {bearer_token_env: T, basic_auth: {username: u, password_env: P}}\n",
            r"use a bearer token or basic_auth, not both",
        ),
        (
            "prometheus: {basic_auth: {username: u}}\n",
            r"exactly one of password_file or password_env",
        ),
    ],
)
def test_bad_settings_name_line_and_field(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        config.load(write(tmp_path, MINIMAL + extra))


def test_errors_inside_targets_point_at_their_line(tmp_path: Path) -> None:
    text = MINIMAL.replace("lavalink-rust.service", "lavalink rust.service")
    with pytest.raises(
        errors.ConfigError, match=r"config\.yml:3: targets\.0\.primary\.unit: String should match"
    ):
        config.load(write(tmp_path, text))


def test_a_container_name_needs_the_docker_executor_and_a_unit_the_systemd_one(
    tmp_path: Path,
) -> None:
    text = MINIMAL.replace("lavalink-rust.service", "lavalink-rust")
    with pytest.raises(
        errors.ConfigError,
        match=r"targets\.0: unit 'lavalink-rust' is not a systemd unit \(x\.service\); for "
        r"containers set executor: docker",
    ):
        config.load(write(tmp_path, text))


def test_bad_promql_in_presence_query(tmp_path: Path) -> None:
    text = MINIMAL + "    presence_query: up{job=\n"
    with pytest.raises(
        errors.ConfigError, match=r"targets\.0\.presence_query: PromQL syntax error"
    ):
        config.load(write(tmp_path, text))


def test_missing_targets(tmp_path: Path) -> None:
    with pytest.raises(
        errors.ConfigError, match=r"config\.yml:1: targets: required field is missing"
    ):
        config.load(write(tmp_path, "mode: observe\n"))


def test_duplicate_target_names(tmp_path: Path) -> None:
    text = MINIMAL + MINIMAL.replace("targets:\n", "")
    with pytest.raises(errors.ConfigError, match="target names must be unique: lavalink repeated"):
        config.load(write(tmp_path, text))


def test_target_choice(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, MINIMAL))
    assert settings.target("lavalink").name == "lavalink"
    with pytest.raises(errors.ConfigError, match="no target named 'x'"):
        settings.target("x")


@pytest.mark.parametrize(
    ("text", "seconds"), [("15s", 15), ("1h30m", 5400), ("250ms", 0.25), ("90", 90), (45, 45)]
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert timefmt.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-3", "1.5h", True])
def test_parse_duration_rejects(text: str | bool) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        timefmt.parse_duration(text)


def test_instants_round_trip() -> None:
    at = timefmt.parse_instant("2026-11-25T10:00:00Z")
    assert timefmt.format_instant(at) == "2026-11-25T10:00:00Z"
    assert timefmt.parse_instant(str(at)) == at
    with pytest.raises(ValueError, match="no timezone"):
        timefmt.parse_instant("2026-11-25T10:00:00")
    with pytest.raises(ValueError, match="not a time"):
        timefmt.parse_instant("yesterday")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("interval: 7500ms\n", r"interval: must be a whole number of seconds"),
        ("interval: [1]\n", r"interval: not a duration: \[1\]"),
        ("prometheus: {url: 'http://admin:hunter2@prom:9090'}\n", r"no credentials in the URL"),
    ],
)
def test_more_bad_settings(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message) as caught:
        config.load(write(tmp_path, MINIMAL + extra))
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("text", ["nan", "inf", "1700000000000", "-5"])
def test_parse_instant_rejects_implausible_numbers(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        timefmt.parse_instant(text)


def test_alert_matchers_default_to_the_primary_job_and_the_target_label(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, MINIMAL))
    sets = [str(one) for one in settings.targets[0].alert_matchers]
    assert sets == ['{job="lavalink-rust"}', '{target="lavalink"}']
    own = MINIMAL + (
        '    alerts:\n      matchers: [\'{job="lavalink-rust", instance=~"node-1:.*"}\','
        " 'LavalinkDown{cluster=\"eu\"}']\n"
    )
    sets = [str(one) for one in config.load(write(tmp_path, own)).targets[0].alert_matchers]
    assert sets == [
        '{job="lavalink-rust", instance=~"node-1:.*"}',
        '{alertname="LavalinkDown", cluster="eu"}',
    ]


@pytest.mark.parametrize(
    ("matcher", "message"),
    [
        ("'{job=}'", "is not a label matcher set"),
        ("'{job!=\"x\"}'", "must require some label value"),
        ("'{job=~\"(\"}'", "is not a label matcher set"),
        ("'rate(x[5m])'", "is not a label matcher set"),
        ("'{job=\"x\"} offset 5m'", "is not a label matcher set like"),
    ],
)
def test_bad_alert_matchers_name_the_target_and_the_set(
    tmp_path: Path, matcher: str, message: str
) -> None:
    text = MINIMAL + f"    alerts: {{matchers: [{matcher}]}}\n"
    with pytest.raises(errors.ConfigError, match=r"targets\.0\.alerts\.matchers: .*" + message):
        config.load(write(tmp_path, text))


def test_operators_each_with_a_token_and_unique_names(tmp_path: Path) -> None:
    text = MINIMAL + (
        "listen:\n  token_file: shared.token\n  operators:\n"
        "    - {name: alice, token_file: alice.token}\n    - {name: bob, token_env: BOB}\n"
    )
    listen = config.load(write(tmp_path, text)).listen
    assert [o.name for o in listen.operators] == ["alice", "bob"]
    assert listen.operators[0].token_file == tmp_path / "alice.token"  # relative to the file
    assert listen.token_file == tmp_path / "shared.token" and listen.token_name == "operator"
    assert listen.api_on
    for bad, message in (
        ("    - {name: alice, token_env: A2}\n", "operator names must be unique: alice"),
        ("    - {name: carol}\n", "give token_file or token_env"),
        ("    - {name: 'carol smith', token_env: C}\n", "String should match pattern"),
    ):
        with pytest.raises(errors.ConfigError, match=message):
            config.load(write(tmp_path, text + bad))
    clash = MINIMAL + "listen: {token_env: T, operators: [{name: operator, token_env: O}]}\n"
    with pytest.raises(errors.ConfigError, match="operator names must be unique: operator"):
        config.load(write(tmp_path, clash))


def test_every_relative_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    text = MINIMAL + (
        "prometheus:\n  bearer_token_file: prom.token\n"
        "  tls: {ca_file: ca.pem, cert_file: c.pem, key_file: c.key}\n"
    )
    prom = config.load(write(tmp_path, text)).prometheus
    assert prom.bearer_token_file == tmp_path / "prom.token"
    assert (prom.tls.ca_file, prom.tls.cert_file, prom.tls.key_file) == (
        tmp_path / "ca.pem",
        tmp_path / "c.pem",
        tmp_path / "c.key",
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "slack: {channel: C0123, bot_token_env: B, api_url: 'http://slack.example.com/api/'}\n",
            r"slack: 'http://slack.example.com/api/': plain http:// to another host would send "
            r"the Slack bot token in clear",
        ),
        (
            "notify: {webhooks: [{url: 'http://hooks.example.com/x'}]}\n",
            r"notify\.webhooks\.0: .*plain http:// to another host",
        ),
        (
            "notify: {grafana: {url: 'http://10.0.0.5:3000', token_env: G}}\n",
            r"notify\.grafana: .*plain http:// to another host would send the Grafana token",
        ),
        (
            "prometheus: {url: 'http://prom.example.com:9090', bearer_token_env: P}\n",
            r"prometheus: .*would send the credentials in clear",
        ),
    ],
)
def test_tokens_never_cross_a_network_in_clear(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        config.load(write(tmp_path, MINIMAL + extra))
    allowed = extra.replace("}\n", ", allow_insecure_http: true}\n", 1)
    if "webhooks" in extra:
        allowed = extra.replace("x'}", "x', allow_insecure_http: true}")
    if "grafana" in extra:
        allowed = extra.replace("token_env: G}", "token_env: G, allow_insecure_http: true}")
    assert config.load(write(tmp_path, MINIMAL + allowed)) is not None  # said so: allowed


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:3000", "http://localhost:3000", "http://[::1]:3000", "https://x.io"]
)
def test_loopback_or_https_needs_no_permission(tmp_path: Path, url: str) -> None:
    text = MINIMAL + f"notify: {{grafana: {{url: '{url}', token_env: G}}}}\n"
    assert config.load(write(tmp_path, text)).notify.grafana is not None


def test_journal_retention_and_alert_bound(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, MINIMAL))
    assert settings.journal.retention == 90 * 86400 and settings.alertmanager.max_alerts == 1000
    text = MINIMAL + "journal: {retention: 30d}\nalertmanager: {max_alerts: 200}\n"
    settings = config.load(write(tmp_path, text))
    assert settings.journal.retention == 30 * 86400 and settings.alertmanager.max_alerts == 200
    with pytest.raises(errors.ConfigError, match=r"journal\.retention: .*greater than or equal"):
        config.load(write(tmp_path, MINIMAL + "journal: {retention: 10m}\n"))


def test_a_target_without_a_profile_is_lavalink_with_the_runbooks_values(tmp_path: Path) -> None:
    target = config.load(write(tmp_path, MINIMAL)).target(None)
    assert target.profile == "lavalink"
    assert target.runbook.url == "http://127.0.0.1:2333"
    assert target.runbook.java_command == ["java", "-version"] and target.runbook.min_java == 17
    assert target.runbook.carry_config == "application.yml"
    assert target.runbook.verify.identifiers == {
        "youtube": "ytsearch:test",
        "soundcloud": "scsearch:test",
    }
    assert target.runbook.verify.websocket and target.probes.websocket


def test_the_configs_own_values_win_over_the_profiles_even_null(tmp_path: Path) -> None:
    text = MINIMAL + "    runbook: {java_command: null, url: 'http://127.0.0.1:2444'}\n"
    target = config.load(write(tmp_path, text)).target(None)
    assert target.runbook.java_command is None
    assert target.runbook.url == "http://127.0.0.1:2444"
    assert target.runbook.carry_config == "application.yml"  # the rest still defaulted


def test_the_http_example_loads_with_its_own_defaults() -> None:
    target = config.load(ROOT / "config" / "http-service.yml").target(None)
    assert target.profile == "http"
    assert target.runbook.url == "http://127.0.0.1:8080"
    assert target.runbook.java_command is None and target.runbook.carry_config is None
    assert target.runbook.verify.identifiers == {} and not target.probes.websocket
    assert (target.health.path, target.health.status) == ("/health", 200)
    assert target.rules[0].resolve() == (ROOT / "rules" / "http-service.yml").resolve()
    assert target.rule_variables == {
        "target": "app",
        "primary_job": "app-new",
        "primary_unit": "app-new.service",
        "fallback_job": "app-old",
        "fallback_unit": "app-old.service",
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "    profile: tomcat\n",
            r"targets\.0: .*unknown profile 'tomcat' \(known: http, lavalink\)",
        ),
        ("    profile: http\n", r"targets\.0\.runbook: required field is missing"),
        (
            "    profile: http\n    runbook: {url: 'http://x:1'}\n    health: {body: '(open'}\n",
            r"targets\.0\.health\.body: .*not a regular expression",
        ),
        (
            "    profile: http\n    runbook: {url: 'http://x:1'}\n    health: {path: health}\n",
            r"targets\.0\.health\.path: String should match pattern",
        ),
    ],
)
def test_profile_mistakes_are_named(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        config.load(write(tmp_path, MINIMAL + extra))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("{youtube: 'ytsearch:x'}", {"youtube": "ytsearch:x"}),  # not merged with SoundCloud
        ("{}", {}),  # no track loading checks at all, as before profiles
    ],
)
def test_a_mapping_the_config_gives_replaces_the_profiles_whole(
    tmp_path: Path, given: str, expected: dict[str, str]
) -> None:
    text = MINIMAL + f"    runbook: {{verify: {{identifiers: {given}}}}}\n"
    target = config.load(write(tmp_path, text)).target(None)
    assert target.runbook.verify.identifiers == expected
    assert target.probe_identifiers == expected
    assert target.runbook.url == "http://127.0.0.1:2333"  # sections still merge key by key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    health: {path: /up}\n", r"profile lavalink: health is read by the http profile only"),
        (
            "    profile: http\n    runbook: {url: 'http://x:1', java_command: [java]}\n",
            r"runbook\.java_command is read by the lavalink profile only",
        ),
        (
            "    profile: http\n    runbook: {url: 'http://x:1'}\n    probes: {websocket: true}\n",
            r"probes\.websocket is read by the lavalink profile only",
        ),
    ],
)
def test_a_key_only_another_profile_reads_is_refused(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        config.load(write(tmp_path, MINIMAL + extra))


def test_every_profile_with_defaults_is_one_the_registry_knows() -> None:
    from watchdog import profiles

    assert config.profile_names() == ["http", "lavalink"]
    assert [profiles.get(name).name for name in config.profile_names()] == ["http", "lavalink"]


def test_the_example_configs_commit_and_baseline_validate_once_uncommented(
    tmp_path: Path,
) -> None:
    text = (ROOT / "config" / "lavalink.yml").read_text()
    assert "  # commit_after: 24h" in text
    uncommented = tmp_path / "lavalink.yml"
    lines, inside = [], False
    for line in text.replace("  # commit_after: 24h", "  commit_after: 24h").splitlines():
        inside = line.startswith("    # baseline:") or (inside and line.startswith("    #   "))
        lines.append("    " + line[6:] if inside else line)  # the baseline section, uncommented
    uncommented.write_text(
        "\n".join(lines).replace(
            "rules: [../rules/lavalink.yml]", f"rules: [{ROOT / 'rules' / 'lavalink.yml'}]"
        )
    )
    loaded = config.load(uncommented)
    policy = loaded.policy.to_policy()
    assert policy.commit_after == 86_400.0
    baseline = loaded.targets[0].baseline
    assert (baseline.window, baseline.min_effect, baseline.critical_ratio) == (3600.0, 0.7, 3)
    assert len(baseline.metrics) == 4  # the profile's, kept when only the numbers are given
    assert config.load(ROOT / "config" / "lavalink.yml").policy.to_policy().commit_after is None


def test_the_lavalink_profile_compares_four_metrics_and_the_http_one_none(tmp_path: Path) -> None:
    target = config.load(write(tmp_path, MINIMAL)).targets[0]
    assert [(m.name, m.unit, m.critical) for m in target.baseline.metrics] == [
        ("basic endpoints latency", "seconds", True),
        ("probe failures", "ratio", True),
        ("resident memory", "bytes", False),
        ("CPU load", "ratio", False),
    ]
    assert 'job="lavalink-java"' in target.baseline.metrics[2].rendered("lavalink", "lavalink-java")
    http = MINIMAL + "    profile: http\n    runbook: {url: 'http://x:1'}\n"
    assert config.load(write(tmp_path, http)).targets[0].baseline.metrics == []


@pytest.mark.parametrize(
    ("baseline", "complaint"),
    [
        ("{minor_ratio: 4, critical_ratio: 3}", "critical_ratio 3 is below minor_ratio 4"),
        ("{window: 5m, step: 1m, min_samples: 10}", "never fit in the window"),
        ("{alpha: 0.7}", "alpha"),
        ("{metrics: [{name: x, unit: parsecs, query: up}]}", "unit"),
        ("{metrics: [{name: x, query: ''}]}", "query"),
    ],
)
def test_bad_baseline_settings_name_the_problem(
    tmp_path: Path, baseline: str, complaint: str
) -> None:
    with pytest.raises(errors.ConfigError, match=complaint):
        config.load(write(tmp_path, MINIMAL + f"    baseline: {baseline}\n"))

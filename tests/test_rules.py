"""Rules files: the shipped one loads and passes the real promtool; bad ones are named precisely."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import promql_parser
import pytest

from watchdog import config, errors, model, rules

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "rules").glob("*.yml"))
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed"
)

EXAMPLE_NAMES = config.load(ROOT / "config" / "http-service.yml").target(None).rule_variables
"""The http example's names: what a templated rules file is rendered with here."""

GOOD_RULE = """\
groups:
  - name: g
    rules:
      - alert: Down
        expr: up == 0
        for: 1m
        labels: {severity: critical, rollback_category: instability}
        annotations: {summary: down, threshold: "== 0"}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yml"
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_rules_load_and_cover_the_runbook() -> None:
    loaded = rules.load(SHIPPED)
    categories = {r.category for r in loaded.rules}
    assert {
        model.Category.INSTABILITY,
        model.Category.PERFORMANCE,
        model.Category.API_COMPATIBILITY,
        model.Category.SOURCE_FAILURE,
        model.Category.SINGLE_SOURCE,
        model.Category.MINOR_PERFORMANCE,
        model.Category.MONITORING,
    } <= categories
    for r in loaded.rules:
        assert r.summary and r.description, r.name
        assert r.threshold, r.name


def test_shipped_rules_use_only_contract_metrics() -> None:
    import re

    allowed = re.compile(
        r"^(up|process_[a-z_]+|lavalink_[a-z_]+|logback_appender_total|jvm_[a-z_]+|"
        r"rollback_watchdog_(probe_success|probe_duration_seconds_(bucket|sum|count)|"
        r"track_loads_total|unit_restarts|unit_active))$"
    )
    functions = {
        "changes",
        "max_over_time",
        "min_over_time",
        "histogram_quantile",
        "sum",
        "rate",
        "predict_linear",
        "count",
        "absent",
        "by",
        "on",
        "and",
        "or",
        "unless",
        "le",
        "max",
        "min",
        "avg",
        "increase",
        "absent_over_time",
        "avg_over_time",
        "bool",
        "without",
        "ignoring",
        "group_left",
        "deriv",
        "clamp_min",
        "clamp_max",
        "vector",
        "scalar",
        "time",
        "timestamp",
        "quantile_over_time",
        "last_over_time",
    }
    rendered = [rule for path in SHIPPED for rule in rules.load([path], EXAMPLE_NAMES).rules]
    for r in rendered:
        bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", r.expr)
        bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
        for word in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", bare):
            assert word in functions or allowed.match(word), f"{r.name}: {word}"


@needs_promtool
@pytest.mark.integration
def test_promtool_check_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", *map(str, SHIPPED)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def rendered_rules(into: Path) -> Path:
    """rules/ as Prometheus loads it: each file rendered for the shipped example config of its
    profile (templates get that target's names; a plain file is unchanged), tests beside."""
    for path in SHIPPED:
        (into / path.name).write_text(rules.render(path.read_text(), EXAMPLE_NAMES, str(path)))
    shutil.copytree(ROOT / "rules" / "tests", into / "tests")
    return into


@needs_promtool
@pytest.mark.integration
def test_promtool_unit_tests_of_the_rules(tmp_path: Path) -> None:
    here = rendered_rules(tmp_path)
    tests = sorted((here / "tests").glob("*.yml"))
    assert len(tests) == 2
    rendered = (here / "http-service.yml").read_text().splitlines()
    assert not [line for line in rendered if "${" in line and not line.lstrip().startswith("#")]
    done = subprocess.run(
        ["promtool", "test", "rules", *(str(t.relative_to(here)) for t in tests)],
        capture_output=True,
        text=True,
        check=False,
        cwd=here,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
@pytest.mark.integration
def test_the_http_template_rendered_passes_promtool(tmp_path: Path) -> None:
    here = rendered_rules(tmp_path)
    done = subprocess.run(
        ["promtool", "check", "rules", str(here / "http-service.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "SUCCESS: 7 rules found" in done.stdout, done.stderr


def test_a_template_renders_with_the_targets_names_and_refuses_unknown_words(
    tmp_path: Path,
) -> None:
    template = GOOD_RULE.replace("up == 0", 'up{job="${primary_job}"} == 0').replace(
        "summary: down", "summary: '{{ $labels.job }} is down: $value'"
    )
    path = write(tmp_path, template)
    loaded = rules.load([path], {"primary_job": "app-new"})
    assert loaded.rules[0].expr == 'up{job="app-new"} == 0'
    assert loaded.rules[0].summary == "{{ $labels.job }} is down: $value"  # Go's, untouched
    unrendered = rules.load([path])  # checked on its own: the placeholder stays text
    assert unrendered.rules[0].expr == 'up{job="${primary_job}"} == 0'
    path.write_text(path.read_text().replace("${primary_job}", "${primary_jbo}"))
    with pytest.raises(errors.RulesError, match=r"r\.yml:5: unknown placeholder \$\{primary_jbo\}"):
        rules.load([path], {"primary_job": "app-new"})


def test_good_rule_loads_with_its_fields(tmp_path: Path) -> None:
    (loaded,) = rules.load([write(tmp_path, GOOD_RULE)]).rules
    assert loaded.name == "Down"
    assert loaded.for_seconds == 60
    assert loaded.severity is model.Severity.CRITICAL
    assert loaded.line == 4
    assert loaded.weight == 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("severity: critical", "severity: page"),
            r"r\.yml:7: group 'g', rule 'Down': unknown severity 'page'",
        ),
        (
            ("severity: critical, ", ""),
            r"r\.yml:7: group 'g', rule 'Down': missing label 'severity'",
        ),
        (
            ("rollback_category: instability", "rollback_category: vibes"),
            r"unknown rollback_category 'vibes': use one of instability, ",
        ),
        (
            ("rollback_category: instability", "rollback_category: monitoring"),
            r"'monitoring' is a warning reason but severity is 'critical'",
        ),
        (
            ("expr: up == 0", "expr: rate(up[5m]"),
            r"r\.yml:5: group 'g', rule 'Down': PromQL syntax error in 'expr'",
        ),
        (
            ("for: 1m", "for: soon"),
            r"r\.yml:6: group 'g', rule 'Down': 'for': not a duration: 'soon'",
        ),
        (
            (
                "rollback_category: instability}",
                "rollback_category: instability, rollback_weight: -2}",
            ),
            r"rollback_weight '-2' must be a number > 0",
        ),
        (
            ("for: 1m", "for: 1m\n        fro: 2m"),
            r"r\.yml:7: group 'g', rule 'Down': unknown field 'fro'",
        ),
        (("up == 0", "up == 0\n        annotations: {}"), r"duplicate key 'annotations'"),
        (
            ("      - alert: Down", "      - alert: Down\n        record: x"),
            r"exactly one of 'alert' or 'record'",
        ),
        (("expr: up == 0", "expr: [up]"), r"non-empty PromQL expression"),
        (("expr: up == 0", "expr: (up[5m])"), r"'expr' returns a range vector; a rule needs"),
        (("expr: up == 0", "expr: rate(up[5m])[10m:1m]"), r"returns a range vector"),
        (("expr: up == 0", "expr: '\"down\"'"), r"'expr' returns a string"),
        (("summary: down,", "summary: [down],"), r"annotations.summary must be a string"),
        (("groups:", "groups: {a: 1"), r"r\.yml:\d+:\d+: invalid YAML"),
    ],
)
def test_bad_rules_are_named_precisely(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = GOOD_RULE.replace(*change)
    assert text != GOOD_RULE
    with pytest.raises(errors.RulesError, match=message):
        rules.load([write(tmp_path, text)])


def test_rules_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(errors.RulesError, match=r"r\.yml:3: group 'g': 'rules' must be a list"):
        rules.load([write(tmp_path, "groups:\n  - name: g\n    rules: 5\n")])


def test_duplicate_alert_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(GOOD_RULE)
    (tmp_path / "b.yml").write_text(GOOD_RULE.replace("name: g", "name: h"))
    with pytest.raises(
        errors.RulesError,
        match=r"b\.yml:4: group 'h', rule 'Down': alert name already used at .*a\.yml:4",
    ):
        rules.load([tmp_path / "a.yml", tmp_path / "b.yml"])


def test_recording_rules_are_noted_not_evaluated(tmp_path: Path) -> None:
    text = GOOD_RULE + "      - record: job:up:sum\n        expr: sum(up)\n"
    loaded = rules.load([write(tmp_path, text)])
    assert [r.name for r in loaded.rules] == ["Down"]
    assert "recording rule 'job:up:sum' is not evaluated" in loaded.notes[0]


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(errors.RulesError, match="cannot read"):
        rules.load([tmp_path / "nope.yml"])


@pytest.mark.parametrize(
    ("expr", "threshold"),
    [
        ("x > 0.5", "> 0.5"),
        ("count(x == 0) >= 2", ">= 2"),
        ("(a > 1) and on() (b == 1)", "== 1"),
        ("absent(x)", ""),
    ],
)
def test_threshold_derived_from_expr(expr: str, threshold: str) -> None:
    assert rules.derive_threshold(expr) == threshold


@pytest.mark.parametrize(
    ("expr", "seconds"),
    [
        ("up == 0", 0),
        ('changes(process_start_time_seconds{job="x"}[15m]) >= 3', 900),
        ("rate(x[5m] offset 1m) > 1", 360),
        ("max_over_time(rate(x[1m])[10m:30s]) > 1", 660),
        ("(a - min_over_time(a[15m])) >= 3 or b offset 20m", 1200),
        ("predict_linear(m[30m], 7200) > 1 and predict_linear(m[10m], 7200) > 1", 1800),
        ("histogram_quantile(0.5, sum by (le) (rate(h_bucket[5m]))) > 0.5", 300),
    ],
)
def test_a_rule_knows_how_far_back_it_reads(expr: str, seconds: float) -> None:
    assert rules.lookback_of(promql_parser.parse(expr)) == seconds


def test_a_template_fills_only_rule_lines_and_refuses_a_name_it_cannot_paste(
    tmp_path: Path,
) -> None:
    text = '# for ${target}: a comment stays as written\nexpr: up{job="${primary_job}"}\n'
    assert rules.render(text, {"target": "app", "primary_job": "app-new"}) == (
        '# for ${target}: a comment stays as written\nexpr: up{job="app-new"}\n'
    )
    with pytest.raises(errors.RulesError, match=r"r\.yml:2: \$\{primary_job\} is 'a\"b'"):
        rules.render(text, {"primary_job": 'a"b'}, "r.yml")
    assert rules.render("expr: up\n", {"primary_job": 'a"b'}) == "expr: up\n"  # not used: fine

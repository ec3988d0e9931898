"""The command line: bad input gives one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "lavalink.yml"


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def assert_bad_input(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unreachable() -> str:
    return f"prometheus: {{url: 'http://127.0.0.1:{closed_port()}', retries: 1}}\n"


def config_file(tmp_path: Path, extra: str = "", rules: str | None = None) -> Path:
    rules_path = rules or str(ROOT / "rules" / "lavalink.yml")
    path = tmp_path / "config.yml"
    path.write_text(
        textwrap.dedent(f"""\
        state_dir: {tmp_path / "state"}
        targets:
          - name: lavalink
            primary: {{unit: lavalink-rust.service, job: lavalink-rust}}
            fallback: {{unit: lavalink-java.service, job: lavalink-java}}
            rules: [{rules_path}]
        """)
        + extra
    )
    return path


@contextlib.contextmanager
def running_daemon(
    path: Path, *, until: Callable[[list[str]], bool], env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``run`` as a process, its stderr read line by line until ``until`` says so; stopped
    with SIGTERM at the end of the block, the rest of its lines added."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "run", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert daemon.stderr is not None
        for line in daemon.stderr:
            lines.append(line)
            if until(lines):
                break
        yield daemon, lines
    finally:
        daemon.terminate()
        lines.extend(daemon.communicate(timeout=30)[1].splitlines())


def test_validate_shipped_files() -> None:
    # the example config names a production host's files: their syntax is what is checked here
    done = cli("validate", "--syntax-only", "rules/lavalink.yml", "config/lavalink.yml")
    assert done.returncode == 0, done.stderr
    assert "rules OK: 12 alert rules (8 critical, 4 warning)" in done.stdout
    assert "config OK" in done.stdout
    assert "were not checked" in done.stdout


def test_validate_checks_every_file_and_secret_the_config_names(tmp_path: Path) -> None:
    world = tmp_path / "world-readable.token"
    world.write_text("t0ken-for-all\n")
    world.chmod(0o644)
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    path = config_file(
        tmp_path,
        f"listen: {{token_file: {tmp_path / 'missing.token'}, operators: "
        f"[{{name: alice, token_file: {world}}}, {{name: bob, token_env: WD_NOT_SET_ANYWHERE}}]}}\n"
        f"alertmanager: {{token_file: {empty}}}\n",
    )
    done = cli("validate", "--config", str(path))
    assert_bad_input(
        done,
        f"the operator API token file {tmp_path / 'missing.token'} does not exist",
        "the operator token of bob variable $WD_NOT_SET_ANYWHERE is not set or empty",
        f"the Alertmanager webhook token file {empty} is empty",
        f"the operator token of alice file {world} is open to other users (mode 0644)",
        "3 problem(s) found",
    )
    assert "config OK" not in done.stdout + done.stderr  # never OK before (or beside) a failure
    assert done.stderr.index("warning:") < done.stderr.index("error:")
    # --syntax-only: the same config passes, the files unchecked
    skipped = cli("validate", "--syntax-only", "--config", str(path))
    assert skipped.returncode == 0, skipped.stderr
    assert "config OK" in skipped.stdout
    # fixed: OK, and the world-readable token is still a warning (exit 0)
    (tmp_path / "missing.token").write_text("shared\n")
    empty.write_text("am\n")
    path.write_text(
        path.read_text().replace("token_env: WD_NOT_SET_ANYWHERE", f"token_file: {empty}")
    )
    empty.chmod(0o600)
    (tmp_path / "missing.token").chmod(0o600)
    fixed = cli("validate", "--config", str(path))
    assert fixed.returncode == 0, fixed.stderr
    assert "config OK" in fixed.stdout
    assert f"warning: {path}: the operator token of alice file {world} is open" in fixed.stderr


def test_validate_reports_every_error_of_every_rules_file(tmp_path: Path) -> None:
    shipped = (ROOT / "rules" / "lavalink.yml").read_text()
    first = tmp_path / "first.yml"
    first.write_text(
        shipped.replace(
            "rollback_category: instability", "rollback_category: instabilty", 1
        ).replace("> 2147483648", "> > 2147483648", 1)
    )
    second = tmp_path / "second.yml"
    second.write_text(shipped.replace("severity: warning", "severity: minor", 1))
    config = config_file(tmp_path, rules=f"{first}, {second}")
    for command in (
        ("validate", str(first), str(second)),
        ("validate", "--syntax-only", "--config", str(config)),
    ):
        done = cli(*command)
        assert_bad_input(
            done,
            f"{first}:",
            "rule 'LavalinkCrashLoop': unknown rollback_category 'instabilty'",
            "rule 'LavalinkMemoryHigh': PromQL syntax error",
            f"{second}:",
            "unknown severity 'minor'",
        )
        assert "OK" not in done.stdout


def test_invalid_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: g\n    rules: [\n")
    assert_bad_input(cli("validate", str(bad)), f"{bad}:", "invalid YAML")


def test_unknown_label_value(tmp_path: Path) -> None:
    text = (
        (ROOT / "rules" / "lavalink.yml")
        .read_text()
        .replace("rollback_category: instability", "rollback_category: instabilty", 1)
    )
    bad = tmp_path / "rules.yml"
    bad.write_text(text)
    assert_bad_input(
        cli("validate", str(bad)),
        "unknown rollback_category 'instabilty'",
        "group 'lavalink-instability', rule 'LavalinkCrashLoop'",
    )


def test_promql_syntax_error_names_the_rule(tmp_path: Path) -> None:
    text = (
        (ROOT / "rules" / "lavalink.yml")
        .read_text()
        .replace(
            'process_resident_memory_bytes{job="lavalink-rust"} > 2147483648',
            'process_resident_memory_bytes{job="lavalink-rust" > 2147483648',
            1,
        )
    )
    bad = tmp_path / "rules.yml"
    bad.write_text(text)
    for command in (
        ("validate", str(bad)),
        ("check", "--config", str(config_file(tmp_path, rules=str(bad)))),
    ):
        assert_bad_input(cli(*command), "rule 'LavalinkMemoryHigh'", "PromQL syntax error")


def test_invalid_config_names_line_and_field(tmp_path: Path) -> None:
    path = config_file(tmp_path, "mode: yolo\n")
    assert_bad_input(cli("check", "--config", str(path)), f"{path}:7: mode:")


def test_missing_config_file(tmp_path: Path) -> None:
    assert_bad_input(cli("check", "--config", str(tmp_path / "nope.yml")), "cannot read")


def test_unreachable_prometheus_in_check(tmp_path: Path) -> None:
    port = closed_port()
    path = config_file(
        tmp_path, f"prometheus: {{url: 'http://127.0.0.1:{port}', retries: 1, timeout: 2s}}\n"
    )
    done = cli("check", "--config", str(path))
    assert done.returncode == 3, done.stdout + done.stderr  # did not answer: not bad input
    assert f"Prometheus at http://127.0.0.1:{port} is unreachable" in done.stderr
    assert "Traceback" not in done.stderr


def test_backtest_bad_times(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    assert_bad_input(
        cli("backtest", "--config", str(path), "--start", "yesterday", "--end", "now"),
        "not a time: 'yesterday'",
    )
    assert_bad_input(
        cli(
            "backtest",
            "--config",
            str(path),
            "--start",
            "2026-01-02T00:00:00Z",
            "--end",
            "2026-01-01T00:00:00Z",
        ),
        "--end is before --start",
    )
    assert_bad_input(
        cli("backtest", "--config", str(path), "--start", "0", "--end", "10", "--step", "0s"),
        "--step must be a whole number of seconds",
    )


def test_unknown_command_and_missing_option() -> None:
    assert_bad_input(cli("explode"), "invalid choice")
    assert_bad_input(
        cli("backtest", "--config", str(CONFIG)),
        "the following arguments are required: --start, --end",
    )


def test_status_without_journal_is_a_daemon_that_never_ran(tmp_path: Path) -> None:
    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    done = cli("status", "--config", str(path))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "NOT RUNNING" in done.stdout and "journal: none yet at" in done.stdout
    assert "target lavalink: ARMED: NEEDS ATTENTION: never evaluated" in done.stdout
    assert not (tmp_path / "state").exists()  # nothing created


def test_rearm_without_a_journal_creates_nothing(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    done = cli("rearm", "--config", str(path), "--by", "alice")
    assert_bad_input(done, f"no journal at {tmp_path / 'state' / 'journal.sqlite3'}")
    assert "armed" not in done.stdout
    assert not (tmp_path / "state").exists()


def test_rearm_then_status(tmp_path: Path) -> None:
    from watchdog import journal

    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    store = journal.Journal.open(tmp_path / "state")
    store.set_armed("lavalink", False, at=1000.0, by="rollback", note="rolled back by run #1")
    store.close()
    done = cli("rearm", "--config", str(path), "--by", "alice")
    assert done.returncode == 0, done.stderr
    assert "target lavalink armed (it was disarmed by rollback)" in done.stdout
    again = cli("rearm", "--config", str(path), "--by", "alice")
    assert again.returncode == 0, again.stderr
    assert "target lavalink is already armed; nothing changed" in again.stdout
    done = cli("status", "--config", str(path), "--json")
    assert done.returncode == 3, done.stderr  # armed, but no daemon ever evaluated
    status = json.loads(done.stdout)
    assert status["daemon"]["running"] is False
    assert status["targets"][0]["target"] == "lavalink"
    assert status["targets"][0]["armed"] is True
    store = journal.Journal.open_existing(tmp_path / "state")
    assert store.arming("lavalink").by == "alice"  # the second rearm changed nothing
    store.close()


@pytest.mark.parametrize("args", [("run", "--config", "/nonexistent/config.yml")])
def test_run_with_bad_config_exits_2(args: tuple[str, ...]) -> None:
    assert_bad_input(cli(*args), "cannot read")


def test_unusable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = (
        config_file(tmp_path).read_text().replace(str(tmp_path / "state"), str(blocker / "state"))
    )
    (tmp_path / "config.yml").write_text(path)
    assert_bad_input(cli("run", "--config", str(tmp_path / "config.yml")), "Not a directory")
    assert_bad_input(cli("rearm", "--config", str(tmp_path / "config.yml")), "no journal at")


def test_backtest_refuses_huge_or_fractional_steps(tmp_path: Path) -> None:
    path = str(config_file(tmp_path))
    assert_bad_input(
        cli("backtest", "--config", path, "--start", "0", "--end", "4000000000"),
        "steps is too many",
    )
    assert_bad_input(
        cli("backtest", "--config", path, "--start", "0", "--end", "600", "--step", "1500ms"),
        "--step must be a whole number of seconds",
    )
    assert_bad_input(
        cli("backtest", "--config", path, "--start", "1700000000000", "--end", "1700000000001"),
        "milliseconds?",
    )


def test_run_refuses_a_port_in_use_and_a_second_daemon(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = config_file(
            tmp_path,
            f"listen: {{port: {port}}}\n{unreachable()}",
        )
        assert_bad_input(cli("run", "--config", str(path)), f"cannot listen on 127.0.0.1:{port}")
    path = config_file(
        tmp_path,
        f"listen: {{port: 0}}\n{unreachable()}",
    )
    first = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "run", "--config", str(path)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stderr is not None
        for line in first.stderr:  # wait until the first daemon holds the lock
            if '"event": "started"' in line:
                break
        assert_bad_input(cli("run", "--config", str(path)), "another rollback-watchdog is running")
    finally:
        first.terminate()
        first.wait(timeout=30)
        assert first.stderr is not None
        first.stderr.close()
    assert first.returncode == 0  # SIGTERM is a clean stop


def test_run_logs_json_keeps_going_without_prometheus_and_never_logs_secrets(
    tmp_path: Path,
) -> None:
    secret = "xoxb-very-secret-token-value"
    path = config_file(
        tmp_path,
        f"interval: 1s\nlisten: {{port: 0}}\nprometheus:\n"
        f"  {{url: 'http://127.0.0.1:{closed_port()}', retries: 1, bearer_token_env: WD_TOKEN}}\n",
    )
    env = {**os.environ, "WD_TOKEN": secret}

    def evaluated_thrice(seen: list[str]) -> bool:
        return sum('"event": "evaluated"' in line for line in seen) >= 3

    with running_daemon(path, until=evaluated_thrice, env=env) as (daemon, lines):
        pass
    events = [json.loads(line) for line in lines if line.strip()]
    evaluated = [e for e in events if e["event"] == "evaluated"]
    assert len(evaluated) >= 3
    assert {e["verdict"] for e in evaluated} == {"inconclusive"}
    assert all(e["level"] in ("info", "warning", "error") and "timestamp" in e for e in events)
    assert events[-1]["event"] == "stopped"
    assert daemon.returncode == 0
    assert not any(secret in line for line in lines)


def test_rollback_dry_run_without_systemd_explains_what_is_missing(tmp_path: Path) -> None:
    path = config_file(tmp_path, "systemd: {bus: 'unix:path=/nonexistent/systemd/private'}\n")
    done = cli("rollback", "--config", str(path), "--reason", "drill", "--dry-run")
    assert done.returncode == 3, done.stderr  # systemd did not answer (the plan still shows)
    assert (
        "rollback plan for lavalink: lavalink-rust.service -> lavalink-java.service" in done.stdout
    )
    assert "4. stop-primary    stop + disable lavalink-rust.service" in done.stdout
    assert "preflight: FAILED: cannot connect to systemd on unix:path=/nonexistent" in done.stdout
    assert "no socket at /nonexistent/systemd/private" in done.stdout
    assert not (tmp_path / "state").exists()


def test_rollback_needs_yes_without_a_terminal(tmp_path: Path) -> None:
    assert_bad_input(
        cli("rollback", "--config", str(config_file(tmp_path)), "--reason", "drill"),
        "rollback needs --yes when not run from a terminal",
    )
    assert_bad_input(cli("rollback", "--config", str(config_file(tmp_path))), "--reason")


def test_run_refuses_a_missing_or_empty_secret_before_serving(tmp_path: Path) -> None:
    path = config_file(
        tmp_path, f"listen: {{port: 0, token_file: {tmp_path / 'nope'}}}\n{unreachable()}"
    )
    assert_bad_input(cli("run", "--config", str(path)), "cannot read the operator API token file")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    path.write_text(path.read_text().replace(str(tmp_path / "nope"), str(empty)))
    assert_bad_input(cli("run", "--config", str(path)), f"the operator API token file {empty}")
    assert not (tmp_path / "state").exists()  # refused before anything was written


def test_demo_refuses_a_workdir_that_already_holds_a_journal(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    done = cli("demo", "--workdir", str(tmp_path))
    if "needs a sandboxed systemd" in done.stderr:
        pytest.skip(done.stderr.strip())
    assert_bad_input(done, "already holds a demo's journal")


def test_the_cli_presents_the_caller_s_own_token_never_another_operator_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from watchdog import config, errors
    from watchdog.cli import api as commands

    for name in ("alice", "shared", "mine"):
        (tmp_path / f"{name}.token").write_text(f"{name}-token\n")
    path = config_file(
        tmp_path,
        f"listen: {{token_file: {tmp_path / 'shared.token'}, operators: "
        f"[{{name: alice, token_file: {tmp_path / 'alice.token'}}}]}}\n",
    )
    settings = config.load(path)
    monkeypatch.delenv("ROLLBACK_WATCHDOG_TOKEN", raising=False)
    monkeypatch.setenv("USER", "alice")  # alice's token file is readable here: never taken

    def token(token_file: Path | None = None) -> str:
        return commands._operator_token(settings, argparse.Namespace(token_file=token_file))

    assert token() == "shared-token"
    assert token(token_file=tmp_path / "mine.token") == "mine-token"
    monkeypatch.setenv("ROLLBACK_WATCHDOG_TOKEN", "from-env")
    assert token() == "from-env"
    assert token(token_file=tmp_path / "mine.token") == "mine-token"  # the explicit one wins
    monkeypatch.delenv("ROLLBACK_WATCHDOG_TOKEN")
    digest = "sha256:" + "ab" * 32  # the daemon's copy of a token: no client can present it
    (tmp_path / "shared.token").write_text(digest + "\n")
    with pytest.raises(errors.InputError, match=r"no operator token: give your own"):
        token()
    done = cli("approve", "1", "--config", str(path), "--as", "alice")
    assert_bad_input(done, "unrecognized arguments: --as alice")


def test_run_s_log_stays_json_and_tokenless_under_a_control_byte_header(tmp_path: Path) -> None:
    """The daemon as a process, its real stderr: aiohttp's parser refusing a header with a
    control byte after the token used to write a plain-text traceback quoting it."""
    token = "op-t0ken-9f8e7d"
    (tmp_path / "api.token").write_text(token + "\n")
    (tmp_path / "api.token").chmod(0o600)
    port = closed_port()
    path = config_file(
        tmp_path,
        f"interval: 1s\nlisten: {{port: {port}, token_file: {tmp_path / 'api.token'}}}\n"
        + unreachable(),
    )

    def started(seen: list[str]) -> bool:
        return '"event": "started"' in seen[-1]

    with running_daemon(path, until=started) as (daemon, lines):
        for value in (b"\x01", b"\x00", b"\x1b[31m"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(
                    b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                    + token.encode()
                    + value
                    + b"\r\n\r\n"
                )
                answer = conn.recv(4096)
                assert b" 400 " in answer.split(b"\r\n", 1)[0] and token.encode() not in answer
    events = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    refused = [e for e in events if e["event"] == "requests refused"]
    assert refused and "aiohttp could not parse it" in refused[0]["what"]
    assert sum(e.get("counts", {}).get(refused[0]["what"], 0) for e in refused) == 2
    assert not any(token in line for line in lines)
    assert not any("Traceback" in line for line in lines)
    assert daemon.returncode == 0


def test_through_the_daemon_the_token_names_you_not_by(tmp_path: Path) -> None:
    (tmp_path / "api.token").write_text("op-t0ken-1234\n")
    path = config_file(tmp_path, f"listen: {{token_file: {tmp_path / 'api.token'}}}\n")
    done = cli("rollback", "--config", str(path), "--reason", "drill", "--yes", "--by", "alice")
    assert_bad_input(
        done, "--by names who rolls back with --local; through the daemon, your token does"
    )


@pytest.mark.parametrize("replay", [[], ["--replay"]])
def test_demo_without_the_lab_says_how_to_get_it(
    replay: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator's install has no lab: the demo is bad input with the way to get it."""
    from watchdog import cli as entry

    monkeypatch.setitem(sys.modules, "watchdog_lab", None)  # as if not installed
    for name in ("watchdog_lab.demo", "watchdog_lab.live"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert entry.main(["demo", *replay]) == 2
    said = capsys.readouterr().err
    assert (
        "the demo needs the lab" in said and "make demo" in said and "pip install -e ./lab" in said
    )


def test_rules_prints_the_template_rendered_for_the_target() -> None:
    done = cli("rules", "--config", "config/http-service.yml")
    assert done.returncode == 0, done.stderr
    assert 'job="app-new"' in done.stdout and 'unit="app-new.service"' in done.stdout
    assert (
        "rollback_target: app" in done.stdout
        and "${primary_job}" not in done.stdout.split("groups:")[1]
    )
    assert_bad_input(cli("rules", "--config", "config/http-service.yml", "--target", "x"), "x")


def test_check_without_a_metrics_source_is_bad_input(tmp_path: Path) -> None:
    path = config_file(tmp_path, "prometheus: {enabled: false}\n")
    assert_bad_input(cli("check", "--config", str(path)), "prometheus.enabled is false")


def test_rules_joins_several_files_into_one_prometheus_can_load(tmp_path: Path) -> None:
    second = tmp_path / "more.yml"
    second.write_text(
        "groups:\n  - name: more\n    rules:\n      - alert: AppAlsoDown\n"
        '        expr: up{job="${primary_job}"} == 0\n'
        "        labels: {severity: critical, rollback_category: instability}\n"
        "        annotations: {summary: down, threshold: '== 0'}\n"
    )
    text = (ROOT / "config" / "http-service.yml").read_text()
    config_path = tmp_path / "http.yml"
    config_path.write_text(
        text.replace(
            "rules: [../rules/http-service.yml]",
            f"rules: [{ROOT}/rules/http-service.yml, {second}]",
        )
    )
    done = cli("rules", "--config", str(config_path))
    assert done.returncode == 0, done.stderr
    document = yaml.safe_load(done.stdout)
    names = [group["name"] for group in document["groups"]]
    assert names[-1] == "more" and "http-service-instability" in names
    assert document["groups"][-1]["rules"][0]["expr"] == 'up{job="app-new"} == 0'


def test_rules_refuses_to_join_files_that_repeat_a_group_name(tmp_path: Path) -> None:
    twin = tmp_path / "twin.yml"
    twin.write_text(
        (ROOT / "rules" / "http-service.yml").read_text().replace("HttpService", "TwinService")
    )
    text = (ROOT / "config" / "http-service.yml").read_text()
    config_path = tmp_path / "http.yml"
    config_path.write_text(
        text.replace(
            "rules: [../rules/http-service.yml]", f"rules: [{ROOT}/rules/http-service.yml, {twin}]"
        )
    )
    assert_bad_input(cli("rules", "--config", str(config_path)), "http-service-instability")


def test_a_journal_that_is_not_a_database_is_a_clear_message(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "journal.sqlite3").write_bytes(b"this is not a journal\n" * 200)
    done = cli("status", "--config", str(path))
    assert_bad_input(done, "status:", "not a database")
    assert "Traceback" not in done.stderr


def test_status_shows_a_committed_release(tmp_path: Path) -> None:
    from watchdog import journal

    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    store = journal.Journal.open(tmp_path / "state")
    store.set_committed("lavalink", 1_765_000_000.0, "lavalink (inode 7)")
    store.close()
    done = cli("status", "--config", str(path))
    assert done.returncode == 3, done.stderr  # no daemon evaluates
    assert (
        "release committed at 2025-12-06T05:46:40Z: a rollback is proposed to a human, never "
        "automatic, until the next deploy"
    ) in done.stdout
    status = json.loads(cli("status", "--config", str(path), "--json").stdout)
    assert status["targets"][0]["committed_at"] == "2025-12-06T05:46:40Z"  # RFC 3339

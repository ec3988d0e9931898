"""The command line as scripts and people meet it: every command's help (a line, an example,
the exit codes), ``--json`` with RFC 3339 times, a quiet closed pipe, a table that fits 100
columns, "did you mean", the log format, the live view of a step, check-then-ask for a rollback,
and ``--help`` and ``validate`` that never load the daemon."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import rule
from tests.test_cli import ROOT, cli, closed_port, config_file
from tests.test_cli_status import drill
from watchdog import config, journal, model
from watchdog.cli import common, daemon, evaluate, operate, parser
from watchdog.executor import runbook

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
COMMANDS = sorted(parser.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_s_help_has_a_line_an_example_and_its_exit_codes(command: str) -> None:
    extra = ["status"] if command == "fleet" else []
    done = cli(command, *extra, "--help") if not extra else cli(command, "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "\nexample:\n  " in text and "rollback-watchdog " in text.split("example:")[1]
    codes = text.split("exit codes:\n")[1]
    assert re.search(r"^  0  \S", codes, re.M) and re.search(r"^  2  \S", codes, re.M)
    description = text.split("\n\n")[1]  # usage, then the one-line description
    assert description.strip().endswith(".") and "\n" not in description.strip()[:40]


def test_json_times_are_rfc3339_by_field_name() -> None:
    document = {
        "at": 1_765_000_000.0,
        "runs": [{"started_at": 1_765_000_000, "steps": [{"finished_at": None}], "id": 3}],
        "last_seen": 1_765_000_000.5,
        "score": 3.0,
        "armed": True,
    }
    assert common.instants_as_rfc3339(document) == {
        "at": "2025-12-06T05:46:40Z",
        "runs": [{"started_at": "2025-12-06T05:46:40Z", "steps": [{"finished_at": None}], "id": 3}],
        "last_seen": "2025-12-06T05:46:40.500Z",
        "score": 3.0,
        "armed": True,
    }


def test_validate_json(tmp_path: Path) -> None:
    done = cli("validate", "--config", "config/http-service.yml", "--syntax-only", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["ok"] is True and found["problems"] == []
    (checked,) = found["configs"]
    (target,) = checked["targets"]
    assert (
        target["rules"][0]["rules"]
        == target["rules"][0]["critical"] + target["rules"][0]["warning"]
        > 0
    )
    broken = tmp_path / "broken.yml"
    broken.write_text("intervall: 15s\ntargets: []\n")
    done = cli("validate", "--config", str(broken), "--json")
    assert done.returncode == 2
    found = json.loads(done.stdout)
    assert found["ok"] is False
    assert any("did you mean 'interval'?" in problem for problem in found["problems"])


def test_rearm_json(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    store = journal.Journal.open(tmp_path / "state")
    store.set_armed("lavalink", False, at=1_765_000_000.0, by="rollback", note="run #1")
    store.close()
    first = json.loads(cli("rearm", "--config", str(path), "--by", "alice", "--json").stdout)
    assert first["changed"] is True and first["was_disarmed_by"] == "rollback"
    assert first["by"] == "alice" and RFC3339.match(first["at"])
    again = json.loads(cli("rearm", "--config", str(path), "--by", "bob", "--json").stdout)
    assert again["changed"] is False and again["by"] == "alice" and again["at"] == first["at"]


def test_report_json_has_the_run_s_facts(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    store = journal.Journal.open(tmp_path / "state")
    run = drill(store, at=1_765_000_000.0)
    step = store.step_started(run, 1, "preflight", at=1_765_000_001.0)
    store.step_finished(step, model.StepStatus.FAILED, "no java", at=1_765_000_002.0)
    store.finish_run(run, model.RunStatus.FAILED, "preflight failed", at=1_765_000_003.0)
    store.close()
    done = cli("report", "--config", str(path), str(run), "--json")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["run"]["id"] == run and facts["run"]["status"] == "failed"
    assert facts["run"]["started_at"] == "2025-12-06T05:46:40Z"
    assert facts["run"]["duration_seconds"] == 3.0
    assert [(s["name"], s["status"], s["detail"]) for s in facts["steps"]] == [
        ("preflight", "failed", "no java")
    ]
    assert all(RFC3339.match(item["at"]) for item in facts["timeline"])
    markdown = cli("report", "--config", str(path), str(run))
    assert markdown.stdout.startswith(f"# Rollback report: lavalink, run #{run}")


def test_rollback_dry_run_json_and_json_needs_yes(tmp_path: Path) -> None:
    bus = f"unix:path={tmp_path / 'no-bus'}"
    path = config_file(tmp_path, f"systemd: {{bus: '{bus}'}}\n")
    done = cli("rollback", "--config", str(path), "--reason", "drill", "--dry-run", "--json")
    assert done.returncode == 3, done.stderr  # systemd did not answer: preflight cannot pass
    plan = json.loads(done.stdout)
    assert plan["dry_run"] is True and plan["preflight"]["ok"] is False
    assert [step["name"] for step in plan["plan"]][:2] == ["preflight", "backup"]
    refused = cli("rollback", "--config", str(path), "--reason", "drill", "--local", "--json")
    assert refused.returncode == 2 and "--json needs --yes" in refused.stderr


def test_unreachable_daemon_api_is_exit_3_like_an_unreachable_prometheus(tmp_path: Path) -> None:
    (tmp_path / "api.token").write_text("op-t0ken-1234\n")
    port = closed_port()
    path = config_file(
        tmp_path, f"listen: {{port: {port}, token_file: {tmp_path / 'api.token'}}}\n"
    )
    for args in (
        ("approve", "3"),
        ("deny", "3", "--json"),
        ("rollback", "--reason", "drill", "--yes"),
    ):
        done = cli(*args, "--config", str(path))
        assert done.returncode == 3, (args, done.stderr)
        assert f"the watchdog at http://127.0.0.1:{port} does not answer" in done.stderr


def test_a_local_rollback_checks_systemd_before_it_asks(tmp_path: Path) -> None:
    """At a terminal the question comes only once systemd answered: an unreachable bus is
    exit 3 with nothing asked (and nothing changed)."""
    bus = f"unix:path={tmp_path / 'no-bus'}"
    path = config_file(tmp_path, f"systemd: {{bus: '{bus}'}}\n")
    primary, secondary = pty.openpty()
    command = ["rollback", "--config", str(path), "--reason", "drill", "--local"]
    child = subprocess.Popen(
        [sys.executable, "-m", "watchdog", *command],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=ROOT,
    )
    os.close(secondary)
    said = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            said += chunk
            if b"[y/N]" in said:
                os.write(primary, b"n\n")
        elif child.poll() is not None:
            break
    code = child.wait(timeout=30)
    os.close(primary)
    assert code == 3, said
    assert b"[y/N]" not in said and b"nothing was changed" in said
    assert not (tmp_path / "state").exists()


def pty_run(script: str, answer: bytes, *, after: bytes) -> tuple[int, bytes]:
    """``script`` at a terminal: ``answer`` is typed once ``after`` is shown."""
    primary, secondary = pty.openpty()

    def controlling_terminal() -> None:  # after setsid: Ctrl-C there becomes our SIGINT
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=controlling_terminal,
    )
    os.close(secondary)
    said, typed = b"", False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and child.poll() is None:
        ready, _, _ = select.select([primary], [], [], 0.2)
        if ready:
            try:
                said += os.read(primary, 4096)
            except OSError:
                break
        if after in said and not typed:
            # a person's pause: a signal in the microseconds between the prompt and the read
            # is CPython's own race (it waits for the next one), not the question's
            time.sleep(0.3)
            os.write(primary, answer)
            typed = True
    try:
        code = child.wait(timeout=5)
    except subprocess.TimeoutExpired:  # still waiting for a line: the bug this guards
        child.kill()
        code = child.wait()
    os.close(primary)
    return code, said


def test_one_ctrl_c_ends_the_rollback_question_inside_the_event_loop() -> None:
    """The local rollback asks inside ``asyncio.run``, whose Ctrl-C handler only cancels the
    task: ``input`` kept waiting, and a "y" typed after Ctrl-C still rolled back."""
    script = (
        "import asyncio, sys\n"
        "from watchdog.cli import operate\n"
        "async def main():\n"
        "    return operate.ask('Roll back? [y/N] ')\n"
        "try:\n"
        "    print('ANSWER', repr(asyncio.run(main())))\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    code, said = pty_run(script, b"\x03", after=b"[y/N]")
    assert code == 130, said
    assert b"ANSWER" not in said
    code, said = pty_run(script, b"\x04", after=b"[y/N]")  # Ctrl-D: an empty answer, a no
    assert code == 0 and b"ANSWER ''" in said, said


def test_a_closed_stdout_is_no_traceback() -> None:
    command = f"{sys.executable} -m watchdog validate --config config/http-service.yml >&-"
    done = subprocess.run(
        ["bash", "-c", command + " --syntax-only"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 141), done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["rules", "--config", "config/http-service.yml"],  # more than a pipe's buffer
        ["validate", "--config", "config/http-service.yml", "--syntax-only"],  # a few lines
    ],
)
def test_a_closed_pipe_exits_quietly(args: list[str]) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # the reader went away before the first line: every write fails
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as in a shell
    done = subprocess.run(
        [sys.executable, "-m", "watchdog", *args],
        stdout=writer,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        check=False,
        timeout=60,
    )
    os.close(writer)
    assert done.returncode == 141
    assert done.stderr == b""


async def test_a_live_view_that_fails_never_fails_the_run(tmp_path: Path) -> None:
    """The CLI shows each step and the verify ticker on the operator's terminal or pipe; if
    that breaks (``| head`` went away, a stream that cannot encode), the run goes on: a failed
    print must never fail a step, or restore the primary."""
    from watchdog.executor import steps as runbook_steps
    from watchdog.executor.systemd import Unreachable

    store = journal.Journal.open(tmp_path / "state")
    run = drill(store, at=time.time())
    settings = config.load(config_file(tmp_path))
    ctx = runbook.Context(
        target=settings.target(None),
        systemd=Unreachable("not used"),
        store=store,
        state_dir=tmp_path / "state",
        run_id=run,
        password="",
    )

    async def waits(ctx: runbook.Context) -> str:
        ctx.waiting("not answering yet: connection refused")
        ctx.waiting("checking websocket")
        return "waited"

    async def never(ctx: runbook.Context) -> bool:
        return False

    seen: list[model.StepEvent] = []

    def broken(event: model.StepEvent) -> None:
        seen.append(event)
        raise BrokenPipeError(32, "Broken pipe")

    plan = [runbook_steps.Step("first", waits, never), runbook_steps.Step("second", waits, never)]
    try:
        outcome = await runbook.execute(ctx, observer=broken, steps=plan)
    finally:
        await ctx.http.aclose()
    assert outcome.succeeded, outcome
    assert [(s.name, s.status, s.detail) for s in store.steps(run)] == [
        ("first", model.StepStatus.OK, "waited"),
        ("second", model.StepStatus.OK, "waited"),
    ]
    assert len(seen) == 1  # told once, then left alone
    store.close()


def test_check_s_table_fits_100_columns(capsys: pytest.CaptureFixture[str]) -> None:
    long = rule(  # the longest shipped names, a long threshold and a long detail
        "LavalinkLatencyBudgetFastBurn",
        category="minor_performance",
        threshold="2 or more of youtube, soundcloud, bandcamp, twitch, vimeo failing",
    )
    signals = tuple(
        model.Signal(
            rule=long,
            state=model.SignalState.FIRING,
            value=123456.789,
            labels=(),
            active_since=1_765_000_000.0,
            detail="youtube: 429 Too Many Requests; soundcloud: connection refused " * 3,
        )
        for _ in range(3)
    )
    evaluated = model.Evaluation("lavalink", 1_765_000_100.0, signals)
    decided = model.Decision(
        target="lavalink",
        at=1_765_000_100.0,
        verdict=model.Verdict.ROLLBACK,
        score=3.0,
        reason="3 critical firing",
        action=model.Action.ROLLBACK,
    )
    evaluate._print_check(evaluated, decided)
    lines = capsys.readouterr().out.splitlines()
    table = lines[2:]
    assert table[0].startswith("SIGNAL") and len(table) == 4
    assert all(len(line) <= 100 for line in table), max(len(line) for line in table)
    for line in table[1:]:  # the name, the state and the value whole; the words cut, said so
        assert line.startswith("LavalinkLatencyBudgetFastBurn  critical  minor_performance  ")
        assert "  firing" in line and "1.235e+05" in line and "…" in line
        assert line.rstrip().endswith("  1m40s")  # active for 100 s at the evaluation


def test_log_format_defaults_to_json_under_systemd() -> None:
    assert daemon.log_format("console", environ={"INVOCATION_ID": "x"}) == "console"
    assert daemon.log_format(None, environ={"INVOCATION_ID": "abc"}) == "json"
    assert daemon.log_format(None, environ={"JOURNAL_STREAM": "8:123"}) == "json"
    expected = "console" if sys.stderr.isatty() else "json"
    assert daemon.log_format(None, environ={}) == expected


def test_run_log_format_console_is_not_json(tmp_path: Path) -> None:
    path = config_file(tmp_path, f"listen: {{port: {closed_port()}}}\n")
    with subprocess.Popen(
        [sys.executable, "-m", "watchdog", "run", "--config", str(path), "--log-format", "console"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    ) as running:
        assert running.stderr is not None
        ready, _, _ = select.select([running.stderr], [], [], 60)
        line = running.stderr.readline() if ready else ""
        running.terminate()
        running.communicate(timeout=60)
    assert "starting" in line and not line.lstrip().startswith("{"), line


def test_the_step_view_ticks_what_verify_waits_for() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def event(status: model.StepStatus, detail: str, *, progress: bool = False) -> model.StepEvent:
        return model.StepEvent(7, "verify", status, detail, 12.0, 8, progress=progress)

    running = model.StepStatus.RUNNING
    shown = Terminal()
    view = operate.StepView(shown)
    view.show(event(running, ""))
    view.show(event(running, "not answering yet: connection refused", progress=True))
    view.show(event(model.StepStatus.OK, "9 checks passed"))
    text = shown.getvalue()
    assert "\r\x1b[K  [7/8] verify          ... 12s: not answering yet: connection refused" in text
    assert text.endswith("\r\x1b[K  [7/8] verify          ... ok (12.0s) 9 checks passed\n")
    piped = io.StringIO()
    view = operate.StepView(piped)
    view.show(event(running, ""))
    for _ in range(5):  # into a file: one line, not five
        view.show(event(running, "not answering yet: refused", progress=True))
    view.show(event(model.StepStatus.OK, "9 checks passed"))
    assert piped.getvalue().count("not answering yet") == 1
    assert piped.getvalue().endswith(" ok (12.0s) 9 checks passed\n")


@pytest.mark.parametrize(
    ("args", "forbidden"),
    [
        (["--help"], ("pydantic", "yaml", "structlog", "httpx", "aiohttp", "slack_sdk")),
        (
            ["validate", "--config", "config/http-service.yml", "--syntax-only"],
            ("structlog", "asyncio", "httpx", "aiohttp", "slack_sdk", "dbus_fast", "requests"),
        ),
    ],
)
def test_help_and_validate_never_load_the_daemon(
    args: list[str], forbidden: tuple[str, ...]
) -> None:
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['rollback-watchdog', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('watchdog', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules}), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False
    )
    loaded = done.stderr.split("LOADED", 1)[1]
    assert not [name for name in forbidden if f"'{name}'" in loaded], loaded

"""Fuzzing every POST route of the real daemon: bad input is a JSON 4xx and never an action.

The listener is the daemon's attack surface: Alertmanager's webhook, Slack's button clicks and
the operator API all arrive there, and each can start a rollback. So the daemon runs here for
real (``runtime.run`` in its own thread and event loop, approve mode, a real journal with an
approval request pending) and hypothesis throws at it what a confused or hostile sender might:
random bytes, random JSON, valid payloads with one thing broken, missing and wrong tokens,
forged, stale and missing Slack signatures, nonsense approval ids, odd content types, bodies
over the limit. The properties, checked on every answer and after every test:

- never a 5xx; every 4xx is JSON ``{"error", "message"}``;
- without the route's credential: 401 (403 on a daemon where that secret is not configured);
- with it, a broken payload is a 400 whose message names the broken field;
- no action, ever: the journal's tables are exactly as before the fuzz; only ``audit`` grows,
  and only with refusals (``accepted = 0``) by people who are not approvers, and
  ``unrouted_alerts`` with the alerts that belong to no target. Each operator has a token of
  their own (alice and bob approve; operator, mallory and eve do not): generators for
  authenticated requests make only invalid payloads, or requests the gate must refuse (a vote
  by a stranger, an order for an unknown target), and those are counted and checked one by
  one. Nothing is logged at error level and no secret reaches the log.

Separate daemons check what needs other settings (no secrets configured) and that the checks
can fail at all (an approver's signed click does change the journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import socket
import sqlite3
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import structlog
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from slack_sdk.signature import SignatureVerifier
from structlog.testing import LogCapture

from watchdog import approval, comparison, config, journal, model, runtime

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules" / "lavalink.yml"
OPERATOR_TOKEN = "op-token-fuzz-5d1c0a"  # the shared token: its identity is "operator"
OPERATORS = {  # a token each: the token names the person, the body never does
    "alice": "alice-token-fuzz-7a11ce",
    "bob": "bob-token-fuzz-b0b0b0",
    "mallory": "mallory-token-fuzz-3e7a1d",
    "eve": "eve-token-fuzz-e4e4e4",
}
TOKEN_OF = {"operator": OPERATOR_TOKEN, **OPERATORS}
ALERTMANAGER_TOKEN = "am-token-fuzz-9b27e4"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-fuzz-0000"
SECRETS = (*TOKEN_OF.values(), ALERTMANAGER_TOKEN, SIGNING_SECRET, BOT_TOKEN)
BODY_LIMIT = 16384  # small, so bodies over it stay cheap to send
APPROVERS = ("alice", "bob", "U0ALICE")  # API names and a Slack user ID
STRANGERS = ("operator", "mallory", "eve")  # operators who are no approvers
TARGET = "lavalink"
# every table but audit: the fuzz must leave them exactly as they were
TABLES = ("targets", "evaluations", "incidents", "decisions", "runs", "steps", "alerts")
TABLES += ("approvals", "messages", "probe_changes", "meta")
STATUS = 8  # the status column of approvals
NAME = r"[A-Za-z0-9._@+-]{1,64}"  # a user name as the API takes it
POSITIVE_ID = re.compile(r"[1-9][0-9]{0,17}")
ALERT_NAMES = [  # the shipped rules' alerts, and some from other teams' rules
    *(
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    ),
    "UnitCrashLoop",
    "NodeFilesystemAlmostFull",
    "KubePodCrashLooping",
]
FUZZ = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


# --- The daemon, in process -------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    workdir: Path,
    *,
    secrets: bool = True,
    mode: str = "approve",
    interval: str = "1h",
    max_alerts: int = 1000,
) -> config.Settings:
    """Approve mode, a dead Prometheus, no probes, no systemd watch, no reachable systemd or
    Slack; with ``secrets``, the operator token, Alertmanager's token and Slack's signing
    secret are all configured (without, none is)."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = {
        "operator.token": OPERATOR_TOKEN,
        "alertmanager.token": ALERTMANAGER_TOKEN,
        "slack.signing": SIGNING_SECRET,
        "slack.bot": BOT_TOKEN,
        **{f"{name}.token": token for name, token in OPERATORS.items()},
    }
    for name, secret in files.items():
        (workdir / name).write_text(secret + "\n")
        (workdir / name).chmod(0o600)
    dead = closed_port()
    listen = f"{{port: 0, body_limit: {BODY_LIMIT}"
    extra = ""
    if secrets:
        listen += f", token_file: {workdir / 'operator.token'}, operators: ["
        listen += ", ".join(
            f"{{name: {name}, token_file: {workdir / f'{name}.token'}}}" for name in OPERATORS
        )
        listen += "]"
        extra = textwrap.dedent(f"""\
            alertmanager: {{token_file: {workdir / "alertmanager.token"}, max_alerts: {max_alerts}}}
            slack:
              channel: C0123ABC
              bot_token_file: {workdir / "slack.bot"}
              signing_secret_file: {workdir / "slack.signing"}
              api_url: http://127.0.0.1:{dead}/api/
              retries: 0
              timeout: 1s
            """)
    path = workdir / "config.yml"
    path.write_text(
        textwrap.dedent(f"""\
        mode: {mode}
        interval: {interval}
        state_dir: {workdir / "state"}
        prometheus: {{url: 'http://127.0.0.1:{dead}', timeout: 1s, retries: 1}}
        listen: {listen}}}
        systemd: {{bus: "unix:path=/nonexistent"}}
        approval: {{approvers: [{", ".join(APPROVERS)}], timeout: 1d}}
        targets:
          - name: {TARGET}
            primary: {{unit: lavalink-rust.service, job: lavalink-rust}}
            fallback: {{unit: lavalink-java.service, job: lavalink-java}}
            rules: [{RULES}]
            probes: {{enabled: false}}
            watch: {{enabled: false}}
        """)
        + extra
    )
    return config.load(path)


@dataclass(frozen=True)
class Seeded:
    pending: int  # an approval request waiting for people, of the open incident
    denied: int  # one already decided (alice said no)


def seed(settings_: config.Settings) -> Seeded:
    """Before the daemon starts: an incident whose rollback alice denied, then a newer one
    whose approval request is pending -- as the pipeline would have journaled them."""
    store = journal.Journal.open(settings_.state_dir)
    try:
        now = time.time()
        denied = ask_approval(store, at=now - 600)
        no = approval.Vote(approve=False, identities=("alice",), via="cli", at=now - 599)
        store.vote(denied, no, approval.Rules(approvers=frozenset(APPROVERS)))
        return Seeded(pending=ask_approval(store, at=now - 60), denied=denied)
    finally:
        store.close()


def ask_approval(store: journal.Journal, *, at: float) -> int:
    """A rollback decision in approve mode that opens an incident and asks people; its id."""
    decided = model.Decision(
        target=TARGET,
        at=at,
        verdict=model.Verdict.ROLLBACK,
        action=model.Action.ROLLBACK,
        reason="critical: LavalinkCrashLoop firing (seeded by the fuzz test)",
        incident=model.IncidentChange.OPEN,
    )
    store.record(
        model.Evaluation(target=TARGET, at=at, signals=()),
        decided,
        mode=model.Mode.APPROVE,
        outcome="approval requested",
        ask=journal.ApprovalAsk(expires_at=at + 86400, required=1),
    )
    (pending,) = store.approvals(status="pending")
    return pending.id


@contextlib.contextmanager
def running(settings_: config.Settings) -> Iterator[str]:
    """``runtime.run`` in a thread with its own event loop until the block ends; the base URL,
    once ``/readyz`` says the first evaluation is done (journaled)."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()
    handles: list[runtime.Running] = []
    failures: list[BaseException] = []

    def on_started(handle: runtime.Running) -> None:
        handles.append(handle)
        started.set()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runtime.run(settings_, stop=stop, started=on_started))
        except BaseException as exc:
            failures.append(exc)
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=main, name="daemon-under-fuzz", daemon=True)
    thread.start()
    try:
        assert started.wait(30), "the daemon did not start"
        if failures:
            raise failures[0]
        url = f"http://127.0.0.1:{handles[0].listen_port}"
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the daemon never became ready"
            time.sleep(0.05)
        yield url
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join(30)
        assert not thread.is_alive(), "the daemon did not stop"
    if failures:
        raise failures[0]


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but audit, read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in TABLES}  # noqa: S608 - fixed names


def audit_since(path: Path, after: int) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM audit WHERE id > ? ORDER BY id", (after,)).fetchall()
    return [dict(row) for row in rows]


def unrouted_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM unrouted_alerts").fetchone()[0])


def last_audit_id(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0])


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The sum of a /metrics family's samples with these labels (0 when there are none)."""
    text = httpx.get(f"{url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                total += found.value
    return total


@dataclass
class Daemon:
    """The module's daemon under fuzz and what it looked like before any request."""

    url: str
    journal: Path
    seeded: Seeded
    logs: Logs
    baseline: dict[str, list[tuple[Any, ...]]]
    baseline_audit: int
    client: httpx.Client
    expected: set[int] = field(default_factory=set)  # audit rows of approvers, expected
    request_ids: set[tuple[str, str]] = field(default_factory=set)  # (route, id) taken


class Records(logging.Filter):
    """Standard-library log records of aiohttp and asyncio, kept and stopped before any handler
    formats them: formatting a traceback parses source with ``ast`` (Python 3.11's carets),
    which CPython 3.11 does not do safely in two threads at once ("AST constructor recursion
    depth mismatch" while pytest renders a failure in the main thread)."""

    NAMES = (
        "aiohttp.access",
        "aiohttp.client",
        "aiohttp.internal",
        "aiohttp.server",
        "aiohttp.web",
        "aiohttp.websocket",
        "asyncio",
    )

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.records.append(record)
        return False


@dataclass(frozen=True)
class Logs:
    """What the daemons of this module logged, kept rather than printed."""

    events: list[dict[str, Any]]  # structlog's
    records: list[logging.LogRecord]  # the standard library's warnings and errors

    def errors(self, since: tuple[int, int] = (0, 0)) -> list[Any]:
        events = [e for e in self.events[since[0] :] if e.get("log_level") in _ERROR_LEVELS]
        return events + self.records[since[1] :]

    def mark(self) -> tuple[int, int]:
        return len(self.events), len(self.records)


_ERROR_LEVELS = ("error", "exception", "critical")


@pytest.fixture(scope="module")
def logs() -> Iterator[Logs]:
    capture = LogCapture()
    structlog.configure(processors=[capture])
    records = Records()
    for name in Records.NAMES:
        logging.getLogger(name).addFilter(records)
    yield Logs(capture.entries, records.records)
    for name in Records.NAMES:
        logging.getLogger(name).removeFilter(records)
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def under_fuzz(tmp_path_factory: pytest.TempPathFactory, logs: Logs) -> Iterator[Daemon]:
    settings_ = write_config(tmp_path_factory.mktemp("fuzz"))
    seeded = seed(settings_)
    path = settings_.state_dir / journal.DATABASE_NAME
    with running(settings_) as url, httpx.Client(base_url=url, timeout=30) as client:
        baseline = dump(path)
        assert [row[STATUS] for row in baseline["approvals"]] == ["denied", "pending"]
        yield Daemon(url, path, seeded, logs, baseline, last_audit_id(path), client)


@dataclass
class Live:
    """One test's view of the daemon under fuzz: what it sent that the daemon must process
    after answering, and the checks that nothing acted."""

    daemon: Daemon
    audit_from: int
    logs_from: tuple[int, int]
    slack_votes_from: float
    ignored_from: float
    unrouted_from: int
    # each signed click sent, as (user id, action_ts, approval id): one click, one vote
    slack_clicks: list[tuple[str, str, int]] = field(default_factory=list)
    ignored_alerts: int = 0  # alerts in accepted deliveries that name no guarded target

    @property
    def client(self) -> httpx.Client:
        return self.daemon.client

    def post(
        self,
        path: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | dict[str, str] | None = None,
    ) -> httpx.Response:
        return self.client.post(path, content=body, headers=headers)

    def assert_no_action(self) -> None:
        """After the work accepted for later is done: every table but audit as at the start,
        each new audit row a refusal of someone who is not an approver, no error logged."""
        url = self.daemon.url
        self.wait_for(
            "Slack clicks processed",
            lambda: (
                metric_sum(url, "rollback_watchdog_approval_votes_total", via="slack")
                - self.slack_votes_from
            ),
            len(self.slack_clicks),
        )
        self.wait_for(
            "unrouted alerts processed",
            lambda: metric_sum(url, "rollback_watchdog_alerts_unrouted_total") - self.ignored_from,
            self.ignored_alerts,
        )
        assert dump(self.daemon.journal) == self.daemon.baseline
        # the alerts that belong to no target are kept apart, at most one row per alert
        assert 0 <= unrouted_rows(self.daemon.journal) - self.unrouted_from <= self.ignored_alerts
        new = audit_since(self.daemon.journal, self.daemon.baseline_audit)
        assert all(row["accepted"] == 0 for row in new), [r for r in new if r["accepted"]]
        expected = self.daemon.expected
        assert not [r for r in new if r["actor"] in APPROVERS and r["id"] not in expected]
        for result in ("new", "repeated", "resolved"):
            assert metric_sum(url, "rollback_watchdog_alerts_total", result=result) == 0
        assert metric_sum(url, "rollback_watchdog_approval_votes_total", result="counted") == 0
        # every click journaled under its user's ID, at least once per distinct click (a
        # re-delivery may be journaled again as refused, or not at all)
        mine = audit_since(self.daemon.journal, self.audit_from)
        slack_rows = [(r["actor"], r["approval_id"]) for r in mine if r["via"] == "slack"]
        assert len(set(self.slack_clicks)) <= len(slack_rows) <= len(self.slack_clicks)
        assert set(slack_rows) == {
            (user, approval_id) for user, _, approval_id in self.slack_clicks
        }
        assert not self.daemon.logs.errors(self.logs_from)
        logged = repr(self.daemon.logs.events[self.logs_from[0] :])
        assert not [secret for secret in SECRETS if secret in logged]

    @staticmethod
    def wait_for(
        what: str, measure: Callable[[], float], expected: float, timeout: float = 15
    ) -> None:
        deadline = time.monotonic() + timeout
        while (seen := measure()) != expected:
            assert seen < expected, f"{what}: {seen} but only {expected} were sent"
            assert time.monotonic() < deadline, f"{what}: {seen} of {expected}"
            time.sleep(0.05)


@pytest.fixture
def live(under_fuzz: Daemon) -> Live:
    url = under_fuzz.url
    return Live(
        daemon=under_fuzz,
        audit_from=last_audit_id(under_fuzz.journal),
        logs_from=under_fuzz.logs.mark(),
        slack_votes_from=metric_sum(url, "rollback_watchdog_approval_votes_total", via="slack"),
        ignored_from=metric_sum(url, "rollback_watchdog_alerts_unrouted_total"),
        unrouted_from=unrouted_rows(under_fuzz.journal),
    )


# --- Checking answers -------------------------------------------------------------------------


def problem(answer: httpx.Response, status: int) -> str:
    """Assert a JSON error answer with this status; its message."""
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers.get("Content-Type", "").startswith("application/json"), answer.headers
    document = answer.json()
    assert isinstance(document, dict), document
    assert isinstance(document.get("error"), str) and document["error"], document
    assert isinstance(document.get("message"), str) and document["message"], document
    return str(document["message"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def slack_signature(body: bytes, timestamp: str, secret: str = SIGNING_SECRET) -> str:
    """Slack's v0 signature; where slack_sdk's signer can take the body (UTF-8), it must agree."""
    base = b"v0:" + timestamp.encode() + b":" + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    with contextlib.suppress(UnicodeDecodeError):
        reference = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
        assert signature == reference
    return signature


def slack_signed(body: bytes, *, secret: str = SIGNING_SECRET, at: float | None = None) -> dict:
    """Headers as Slack signs a request."""
    timestamp = str(int(time.time() if at is None else at))
    return {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": slack_signature(body, timestamp, secret),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def click(
    *,
    user_id: str = "U0MALLORY",
    username: str = "mallory",
    action: str = "approve",
    value: str = "1",
    action_ts: str = "1700000000.123456",
) -> dict[str, Any]:
    """A ``block_actions`` payload as Slack sends it for a click on our buttons."""
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": username, "name": username, "team_id": "T0001"},
        "api_app_id": "A0001",
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": "1700000000.000100",
            "channel_id": "C0123ABC",
            "is_ephemeral": False,
        },
        "trigger_id": "123.456.abc",
        "team": {"id": "T0001", "domain": "example"},
        "channel": {"id": "C0123ABC", "name": "ops"},
        "message": {"ts": "1700000000.000100", "text": "lavalink: rollback"},
        "response_url": "https://hooks.slack.com/actions/T0001/1/x",
        "actions": [
            {
                "action_id": action,
                "block_id": f"approval:{value}",
                "value": value,
                "type": "button",
                "action_ts": action_ts,
                "text": {"type": "plain_text", "text": "Approve rollback", "emoji": True},
            }
        ],
    }


def form(payload: Any) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def alert(name: str, fingerprint: str, **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager's webhook (v4) carries it."""
    return {
        "status": "firing",
        "labels": {
            "alertname": name,
            "severity": "critical",
            "rollback_category": "instability",
            "job": "lavalink-rust",
            "instance": "127.0.0.1:2333",
            **labels,
        },
        "annotations": {"summary": f"{name} is firing", "description": "seen by Prometheus"},
        "startsAt": "2026-11-25T10:00:00.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fingerprint,
    }


def delivery(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="LavalinkCrashLoop"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "rollback-watchdog",
        "groupLabels": {"alertname": "LavalinkCrashLoop"},
        "commonLabels": {"job": "lavalink-rust"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    }


def replayed(live: Live, route_: str, rid: str | None, answer: httpx.Response) -> bool:
    """Whether ``answer`` is a replay's -- allowed only for a request id this route took
    before (a server may also key replays by sender: then it is no replay). Marks it taken."""
    seen = rid is not None and (route_, rid) in live.daemon.request_ids
    if rid is not None:
        live.daemon.request_ids.add((route_, rid))
    if answer.status_code == 200 and answer.json().get("ignored") is True:
        assert seen, f"a first request with id {rid!r} on {route_} was taken for a replay"
        return True
    return False


def assert_nonce(row: dict[str, Any], rid: str | None) -> None:
    """A request with an id is journaled with a nonce (in whatever form), one without, not."""
    assert (row["nonce"] is None) == (rid is None), row


def assert_replay_audited(rows: list[dict[str, Any]], by: str) -> None:
    """A replay changes nothing; it may be journaled, once, as a refusal."""
    assert [(r["actor"], r["accepted"]) for r in rows] in ([], [(by, 0)]), rows


# --- Strategies -------------------------------------------------------------------------------

# what h11 lets through as a header value: visible Latin-1, inner spaces; sent as bytes
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=["Cc"]), max_size=60
).map(lambda s: s.strip(" \t"))
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.integers(min_value=10**30, max_value=10**60)
)
json_any = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
not_str = json_any.filter(lambda v: not isinstance(v, str))
not_list = json_any.filter(lambda v: not isinstance(v, list))
not_dict = json_any.filter(lambda v: not isinstance(v, dict))
huge_text = st.integers(1000, 8000).map(lambda n: "h" * n)
PATHOLOGICAL = st.one_of(  # all under BODY_LIMIT
    st.integers(1100, 6000).map(lambda n: b"[" * n + b"]" * n),  # deeper than json recurses
    st.integers(1100, 2000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(4301, 8000).map(lambda n: b"9" * n),  # more digits than int() converts
    st.integers(4301, 8000).map(lambda n: b'{"version": "4", "alerts": [' + b"1" * n + b"]}"),
    st.sampled_from(
        [
            b"",
            b"null",
            b"NaN",
            b"-Infinity",
            b"1e999999",
            b'"\\ud800"',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{\x00}\x00",
            b"{" * 10,
            b'{"a": 1,}',
            b"[1, 2",
            b"\x00" * 64,
        ]
    ),
)
random_json_bytes = json_any.map(lambda v: json.dumps(v).encode())
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=latin-1",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "multipart/form-data",
            "text/plain",
            "application/octet-stream",
            "*/*",
            "",
        ]
    ),
    header_text,
)
oversize = st.integers(0, 24).map(lambda n: n == 0)  # now and then, a body over the limit


def headers_with(
    base: dict[str, str] | list[tuple[bytes, bytes]], content_type: str | None
) -> list[tuple[bytes, bytes]]:
    items = list(base.items()) if isinstance(base, dict) else list(base)
    out = [
        (k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
        for k, v in items
        if (k.lower() if isinstance(k, str) else k.lower().decode()) != "content-type"
    ]
    if content_type is not None:
        out.append((b"Content-Type", content_type.encode("latin-1")))
    return out


def padded(body: bytes, over: bool) -> bytes:
    """Over the limit when ``over`` (JSON stays JSON: trailing spaces)."""
    return body + b" " * (BODY_LIMIT + 1 - len(body)) if over and len(body) <= BODY_LIMIT else body


def authorization_accepted(value: bytes, token: str) -> bool:
    """What a correct server must accept: ``Bearer <token>``, scheme in any case."""
    text = value.decode("latin-1").strip()
    scheme, _, presented = text.partition(" ")
    return scheme.lower() == "bearer" and presented.strip() == token


def wrong_authorization(
    token: str, others: tuple[str, ...], valid: tuple[str, ...] = ()
) -> st.SearchStrategy[bytes | None]:
    """A missing, malformed or wrong ``Authorization`` header for a route wanting ``token`` (or
    any of ``valid``: each operator's own)."""
    near_misses = [
        f"Basic {token}",
        f"Token {token}",
        token,
        f"Bearer {token}x",
        f"Bearer x{token}",
        f"Bearer {token[:-1]}",
        f"Bearer {token.upper()}",
        f"Bearer {token} {token}",
        f"Bearer\t{token}",
        f"Bearer{token}",
        f"Bearer: {token}",
        "Bearer",
        "Bearer null",
        "Bearer undefined",
    ]
    return st.one_of(
        st.none(),
        header_text.map(lambda s: s.encode("latin-1")),
        header_text.map(lambda s: f"Bearer {s}".strip().encode("latin-1")),
        st.sampled_from(others).map(lambda other: f"Bearer {other}".encode()),
        st.sampled_from(near_misses).map(str.encode),
        st.binary(min_size=1, max_size=30).map(lambda b: b"Bearer " + b.hex().encode()),
        st.just(b"Bearer \xff\xfe\xfd"),
    ).filter(
        lambda v: v is None or not any(authorization_accepted(v, one) for one in (token, *valid))
    )


def auth_headers(value: bytes | None) -> list[tuple[bytes, bytes]]:
    return [] if value is None else [(b"Authorization", value)]


@st.composite
def valid_delivery(draw: st.DrawFn, **labels: str) -> dict[str, Any]:
    count = draw(st.integers(1, 5))
    alerts = []
    for _ in range(count):
        name = draw(st.sampled_from(ALERT_NAMES))
        fingerprint = draw(st.text("0123456789abcdef", min_size=16, max_size=16))
        item = alert(name, fingerprint, **labels)
        item["status"] = draw(st.sampled_from(["firing", "resolved"]))
        alerts.append(item)
    return delivery(alerts)


BAD_TIMES = [
    "",
    " ",
    "-1",
    "1e300",
    "nan",
    "inf",
    "-inf",
    "5000000000",
    "1_700_000_000_000",
    "2026-11-25T10:00:00",
    "2026-11-25",
    "2026-13-01T00:00:00Z",
    "2026-11-25T25:00:00Z",
    "2026-11-25 10:00:00",
    "Tuesday",
]
bad_time = st.one_of(
    st.sampled_from(BAD_TIMES), st.text(max_size=40).map(lambda s: "x" + s), not_str
)


@st.composite
def broken_delivery(draw: st.DrawFn) -> tuple[Any, str]:
    """A realistic delivery with exactly one thing broken, and where that is (what the 400's
    message must name). Keys Alertmanager may add (ignored) are sprinkled on top."""
    document = draw(valid_delivery())
    alerts = document["alerts"]
    index = draw(st.integers(0, len(alerts) - 1))
    one = alerts[index]
    where = f"alerts.{index}"
    kind = draw(
        st.sampled_from(
            [
                "not-an-object",
                "drop-top",
                "version",
                "status",
                "alerts",
                "truncated",
                "receiver",
                "alert-not-an-object",
                "drop-alert",
                "alert-status",
                "labels",
                "label-value",
                "annotations",
                "starts",
                "ends",
                "fingerprint",
            ]
        )
    )
    if draw(st.booleans()):  # extra keys are ignored, so they must not mask the real problem
        document[f"x-junk-{draw(st.integers(0, 99))}"] = draw(json_any | huge_text)
        one[f"x-junk-{draw(st.integers(0, 99))}"] = draw(json_any)
    if kind == "not-an-object":
        return draw(not_dict), "JSON object"
    if kind == "drop-top":
        key = draw(st.sampled_from(["version", "status", "alerts"]))
        del document[key]
        return document, key
    if kind == "version":
        document["version"] = draw(json_any.filter(lambda v: v != "4"))
        return document, "version"
    if kind == "status":
        document["status"] = draw(json_any.filter(lambda v: v not in ("firing", "resolved")))
        return document, "status"
    if kind == "alerts":
        document["alerts"] = draw(not_list)
        return document, "alerts"
    if kind == "truncated":
        document["truncatedAlerts"] = draw(
            st.integers(max_value=-1) | json_any.filter(lambda v: type(v) is not int)
        )
        return document, "truncatedAlerts"
    if kind == "receiver":
        key = draw(st.sampled_from(["receiver", "groupKey"]))
        document[key] = draw(not_str)
        return document, key
    if kind == "alert-not-an-object":
        alerts[index] = draw(not_dict)
        return document, where
    if kind == "drop-alert":
        key = draw(st.sampled_from(["status", "labels", "startsAt", "fingerprint"]))
        del one[key]
        return document, f"{where}.{key}"
    if kind == "alert-status":
        one["status"] = draw(json_any.filter(lambda v: v not in ("firing", "resolved")))
        return document, f"{where}.status"
    if kind == "labels":
        one["labels"] = draw(not_dict)
        return document, f"{where}.labels"
    if kind == "label-value":
        one["labels"][draw(st.sampled_from(["alertname", "severity", "job"]))] = draw(not_str)
        return document, f"{where}.labels"
    if kind == "annotations":
        one["annotations"] = draw(not_dict | st.just({"summary": {"nested": ["junk"]}}))
        return document, f"{where}.annotations"
    if kind == "starts":
        one["startsAt"] = draw(bad_time)
        return document, f"{where}.startsAt"
    if kind == "ends":
        one["endsAt"] = draw(bad_time.filter(lambda v: v is not None))
        return document, f"{where}.endsAt"
    one["fingerprint"] = draw(
        st.just("")
        | st.integers(129, 6000).map(lambda n: "f" * n)
        | st.text(min_size=129)
        | not_str
    )
    return document, f"{where}.fingerprint"


def is_plausible_delivery(document: Any) -> bool:
    """Whether random JSON could possibly be a valid webhook payload (then it proves nothing)."""
    return isinstance(document, dict) and document.get("version") == "4"


def valid_name(text: Any) -> bool:
    return isinstance(text, str) and re.fullmatch(NAME, text) is not None


bad_name = st.one_of(
    not_str,
    st.just(""),
    st.text(max_size=80).filter(lambda s: not valid_name(s)),
    st.sampled_from(["alice bob", "alice\n", "al/ice", "ålice", "a" * 65, "\ud800"]),
)
stranger = st.sampled_from(STRANGERS)  # an operator who is no approver: their own token
anyone = st.sampled_from(list(TOKEN_OF))  # an operator, approver or not
request_id = st.one_of(
    st.none(), st.text(min_size=1, max_size=128), st.sampled_from(["r-1", "r-2", "r-3"])
)
reason_text = st.text(min_size=1, max_size=300).filter(lambda s: s.strip() != "")


@st.composite
def broken_order(draw: st.DrawFn) -> tuple[Any, str]:
    """A rollback order with exactly one thing wrong, and the field the 400 must name."""
    order: dict[str, Any] = {
        "reason": draw(reason_text),
        "category": draw(st.sampled_from(["manual", "security"])),
    }
    if draw(st.booleans()):
        order["target"] = draw(st.sampled_from([TARGET, None]))
    if (rid := draw(request_id)) is not None:
        order["request_id"] = rid
    kind = draw(
        st.sampled_from(
            ["not-an-object", "drop", "reason", "blank", "by", "category", "target", "rid", "extra"]
        )
    )
    if kind == "not-an-object":
        return draw(not_dict), "JSON object"
    if kind == "drop":
        del order["reason"]
        return order, "reason"
    if kind == "reason":
        order["reason"] = draw(not_str | st.just("") | st.text(min_size=2001, max_size=2600))
        return order, "reason"
    if kind == "blank":
        order["reason"] = draw(st.text(" \t\r\n\x0b\x0c\u2003", min_size=1, max_size=20))
        return order, "reason"
    if kind == "by":  # the token names the sender; whatever the body claims is refused
        order["by"] = draw(json_any | st.sampled_from([*APPROVERS, *STRANGERS]) | bad_name)
        return order, "by"
    if kind == "category":
        order["category"] = draw(json_any.filter(lambda v: v not in ("manual", "security")))
        return order, "category"
    if kind == "target":
        order["target"] = draw(
            json_any.filter(lambda v: v is not None and not isinstance(v, str))
            | st.text(min_size=201, max_size=400)
        )
        return order, "target"
    if kind == "rid":
        order["request_id"] = draw(
            st.just("")
            | st.text(min_size=129, max_size=300)
            | json_any.filter(lambda v: v is not None and not isinstance(v, str))
        )
        return order, "request_id"
    key = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in order and "." not in k))
    order[key] = draw(json_any)
    return order, key


@st.composite
def broken_vote(draw: st.DrawFn) -> tuple[Any, str]:
    """An approve/deny body with exactly one thing wrong (often by an approver: a broken
    request from alice must not count either), and the field the 400 must name."""
    vote: dict[str, Any] = {"decision": draw(st.sampled_from(["approve", "deny"]))}
    if (rid := draw(request_id)) is not None:
        vote["request_id"] = rid
    kind = draw(st.sampled_from(["not-an-object", "drop", "decision", "by", "rid", "extra"]))
    if kind == "not-an-object":
        return draw(not_dict), "JSON object"
    if kind == "drop":
        del vote["decision"]
        return vote, "decision"
    if kind == "decision":
        vote["decision"] = draw(
            json_any.filter(lambda v: v not in ("approve", "deny"))
            | st.sampled_from(["Approve", "APPROVE", "approve ", "yes", "true", "deny\n"])
        )
        return vote, "decision"
    if kind == "by":  # the token names the voter; whatever the body claims is refused
        vote["by"] = draw(json_any | st.sampled_from([*APPROVERS, *STRANGERS]) | bad_name)
        return vote, "by"
    if kind == "rid":
        vote["request_id"] = draw(
            st.just("")
            | st.text(min_size=129, max_size=300)
            | json_any.filter(lambda v: v is not None and not isinstance(v, str))
        )
        return vote, "request_id"
    key = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in vote and "." not in k))
    vote[key] = draw(json_any)
    return vote, key


@st.composite
def broken_click(draw: st.DrawFn) -> bytes:
    """A signed-worthy body that is not one valid click: not a form, no payload, two
    payloads, payload not JSON or not an object, or a click with one thing wrong."""
    kind = draw(
        st.sampled_from(
            [
                "bytes",
                "pathological",
                "form",
                "two",
                "not-json",
                "not-object",
                "type",
                "actions",
                "action",
                "action-id",
                "value",
                "user",
            ]
        )
    )
    payload = click(
        user_id="U0ALICE",
        username=draw(st.sampled_from(APPROVERS)),
        action=draw(st.sampled_from(["approve", "deny"])),
        value=draw(st.sampled_from(["1", "2", "3"])),
    )
    if kind == "bytes":
        return draw(st.binary(max_size=300).filter(lambda b: b"payload=" not in b))
    if kind == "pathological":
        return b"payload=" + draw(PATHOLOGICAL)  # none holds "&", "=", "+" or "%"
    if kind == "form":
        fields = draw(
            st.dictionaries(
                st.text(min_size=1, max_size=10).filter(lambda k: k != "payload"),
                st.text(max_size=20),
                max_size=4,
            )
        )
        return urlencode(fields).encode()
    if kind == "two":
        return form(payload) + b"&" + form(payload)
    if kind == "not-json":
        text = draw(st.text(max_size=50).filter(lambda s: not _is_json(s)))
        return urlencode({"payload": text}).encode()
    if kind == "not-object":
        return form(draw(not_dict))
    if kind == "type":
        payload["type"] = draw(json_any.filter(lambda v: v != "block_actions"))
    elif kind == "actions":
        payload["actions"] = draw(
            st.just([]) | not_list | st.lists(not_dict, min_size=1, max_size=3)
        )
    elif kind == "action":
        del payload["actions"][0][draw(st.sampled_from(["action_id", "value"]))]
    elif kind == "action-id":
        payload["actions"][0]["action_id"] = draw(
            json_any.filter(lambda v: v not in ("approve", "deny"))
            | st.sampled_from(["Approve", "approve ", "approve_rollback", "deny\x00"])
        )
    elif kind == "value":
        payload["actions"][0]["value"] = draw(
            not_str
            | st.sampled_from(
                ["", "0", "-1", "01", "1.0", "1e3", "+1", " 1", "1 ", "\uff11", "\u0663", "0x1"]
            )
            | st.integers(2**63, 10**40).map(str)
            | st.text(max_size=20).filter(lambda s: not re.fullmatch(r"[1-9][0-9]{0,18}", s))
        )
    else:
        payload["user"] = draw(
            not_dict | st.just({}) | st.just({"id": ""}) | st.just({"name": "alice"})
        )
    return form(payload)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# --- Fuzz: Alertmanager -----------------------------------------------------------------------


def test_fuzz_alertmanager_without_its_token_is_401(live: Live) -> None:
    """Even a perfect delivery of critical Lavalink alerts is refused without the token."""
    examples: list[int] = []

    @settings(FUZZ, max_examples=200)
    @given(
        auth=wrong_authorization(ALERTMANAGER_TOKEN, (OPERATOR_TOKEN, SIGNING_SECRET)),
        body=st.one_of(
            valid_delivery().map(lambda d: json.dumps(d).encode()),
            st.binary(max_size=500),
            random_json_bytes,
            PATHOLOGICAL,
        ),
        content_type=content_types,
        over=oversize,
    )
    def fuzz(auth: bytes | None, body: bytes, content_type: str | None, over: bool) -> None:
        examples.append(1)
        body = padded(body, over)
        answer = live.post("/alertmanager", body, headers_with(auth_headers(auth), content_type))
        if len(body) > BODY_LIMIT:
            problem(answer, 413)
            return
        problem(answer, 401)
        assert answer.headers["WWW-Authenticate"] == "Bearer"

    fuzz()
    assert len(examples) >= 200, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_alertmanager_with_its_token_but_a_broken_payload_is_400(live: Live) -> None:
    examples: list[int] = []

    @settings(FUZZ, max_examples=300)
    @given(
        case=st.one_of(
            broken_delivery(),
            st.binary(max_size=500).map(lambda b: (b, None)),
            PATHOLOGICAL.map(lambda b: (b, None)),
            json_any.filter(lambda v: not is_plausible_delivery(v)).map(lambda v: (v, None)),
        ),
        content_type=content_types,
        over=oversize,
    )
    def fuzz(case: tuple[Any, str | None], content_type: str | None, over: bool) -> None:
        examples.append(1)
        document, where = case
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        body = padded(body, over)
        answer = live.post(
            "/alertmanager", body, headers_with(bearer(ALERTMANAGER_TOKEN), content_type)
        )
        if len(body) > BODY_LIMIT:
            problem(answer, 413)
            return
        message = problem(answer, 400)
        if where is not None:
            assert where in message, (where, message)

    fuzz()
    assert len(examples) >= 300, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_alertmanager_deliveries_for_no_guarded_target_are_taken_and_ignored(
    live: Live,
) -> None:
    """The deliveries the fuzz lets through on purpose: valid, but every alert names a target
    this daemon does not guard. Each is answered with its count, each alert is counted as
    ignored once processed, and none is kept or evaluated."""
    examples: list[int] = []

    @settings(FUZZ, max_examples=60)
    @given(
        document=valid_delivery(rollback_target="not-guarded-here"),
        content_type=content_types,
    )
    def fuzz(document: dict[str, Any], content_type: str | None) -> None:
        examples.append(1)
        body = json.dumps(document).encode()
        answer = live.post(
            "/alertmanager", body, headers_with(bearer(ALERTMANAGER_TOKEN), content_type)
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"accepted": len(document["alerts"])}
        live.ignored_alerts += len(document["alerts"])

    fuzz()
    assert len(examples) >= 60, len(examples)  # none lost to filters
    assert live.ignored_alerts > 0
    live.assert_no_action()


CONTROL = [bytes([b]) for b in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F)]  # but tab


def send_raw(url: str, request: bytes) -> bytes:
    """Bytes as they are -- no HTTP client sends a control byte in a header -- and the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        chunks = []  # the server closes after an answer to a request it could not parse
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_fuzz_a_control_byte_in_a_header_is_a_400_that_never_logs_the_header(
    live: Live, under_fuzz: Daemon
) -> None:
    """aiohttp's own parser refuses these before any route runs; it used to log a plain-text
    traceback quoting the raw header -- a valid token and all. Now: counted, never quoted."""
    examples: list[int] = []
    counted = metric_sum(live.daemon.url, "rollback_watchdog_http_refused_total")

    @settings(FUZZ, max_examples=120)
    @given(
        path=st.sampled_from(
            ["/alertmanager", "/slack/interactions", "/api/v1/rollback", "/api/v1/status"]
        ),
        token=st.sampled_from(SECRETS),
        header=st.sampled_from(["Authorization", "X-Slack-Signature", "X-Request-Id"]),
        control=st.sampled_from(CONTROL),
        where=st.sampled_from(["after", "inside", "before"]),
    )
    def fuzz(path: str, token: str, header: str, control: bytes, where: str) -> None:
        examples.append(1)
        secret = token.encode()
        value = {
            "after": b"Bearer " + secret + control,
            "inside": b"Bearer " + secret[:5] + control + secret[5:],
            "before": b"Bearer " + control + secret,
        }[where]
        request = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n".encode()
            + header.encode()
            + b": "
            + value
            + b"\r\n\r\n{}"
        )
        answer = send_raw(live.daemon.url, request)
        status = answer.split(b"\r\n", 1)[0]
        assert b" 400 " in status, answer[:200]
        assert secret[:12] not in answer and secret[5:] not in answer  # nothing echoed

    fuzz()
    assert len(examples) >= 120, len(examples)
    assert metric_sum(live.daemon.url, "rollback_watchdog_http_refused_total") - counted >= 120
    records = live.daemon.logs.records[live.logs_from[1] :]
    assert not records, [r.getMessage() for r in records]  # aiohttp logged none of them
    live.assert_no_action()  # no error logged, no secret in any event


# --- Fuzz: Slack ------------------------------------------------------------------------------


SIGNATURE_FAULTS = [
    "no-headers",
    "no-signature",
    "no-timestamp",
    "malformed-timestamp",
    "stale",
    "future",
    "wrong-secret",
    "other-body",
    "other-timestamp",
    "random-signature",
    "v1",
    "uppercase",
    "truncated",
]


@st.composite
def badly_signed(draw: st.DrawFn, body: bytes) -> list[tuple[bytes, bytes]]:
    """Headers that must not pass Slack's v0 check for ``body``."""
    now = int(time.time())
    fault = draw(st.sampled_from(SIGNATURE_FAULTS))

    def sign(timestamp: str, signed_body: bytes = body, secret: str = SIGNING_SECRET) -> str:
        return slack_signature(signed_body, timestamp, secret)

    timestamp, signature = str(now), sign(str(now))
    if fault == "no-headers":
        return []
    if fault == "no-signature":
        return [(b"X-Slack-Request-Timestamp", timestamp.encode())]
    if fault == "no-timestamp":
        return [(b"X-Slack-Signature", signature.encode())]
    if fault == "malformed-timestamp":
        timestamp = draw(
            header_text.filter(lambda s: not re.fullmatch(r"[0-9]{1,15}", s))
            | st.sampled_from(
                [f"{now}.5", f"-{now}", f"{now}0000000000000", f"+{now}", "\u0663\u0663"]
            )
        )
        signature = sign(timestamp)  # the right HMAC for it: still refused
    elif fault in ("stale", "future"):
        skew = draw(st.integers(310, 10**9))
        timestamp = str(now - skew if fault == "stale" and skew < now else now + skew)
        signature = sign(timestamp)
    elif fault == "wrong-secret":
        # the reference (slack_sdk) refuses a blank secret: a wrong one, not an empty one
        secret = draw(
            st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and s != SIGNING_SECRET)
        )
        signature = sign(timestamp, secret=secret)
    elif fault == "other-body":
        signature = sign(timestamp, body + draw(st.binary(min_size=1, max_size=10)))
    elif fault == "other-timestamp":
        signature = sign(str(now - draw(st.integers(1, 250))))
    elif fault == "random-signature":
        signature = draw(header_text.filter(lambda s: s != signature))
    elif fault == "v1":
        signature = "v1=" + signature[3:]
    elif fault == "uppercase":
        signature = signature.upper()  # "V0=" at least
    else:
        signature = signature[: draw(st.integers(0, len(signature) - 1))]
    return [
        (b"X-Slack-Request-Timestamp", timestamp.encode()),
        (b"X-Slack-Signature", signature.encode()),
    ]


def test_fuzz_slack_without_a_valid_signature_is_401(live: Live, under_fuzz: Daemon) -> None:
    """Forged, stale or missing signatures, even on a real approver's click on the pending
    request: 401, and the click never counts."""
    pending = under_fuzz.seeded.pending

    examples: list[int] = []

    @settings(FUZZ, max_examples=300)
    @given(
        body=st.one_of(
            st.builds(
                click,
                user_id=st.just("U0ALICE"),
                username=st.sampled_from(APPROVERS),
                action=st.sampled_from(["approve", "deny"]),
                value=st.just(str(pending)),
            ).map(form),
            st.binary(max_size=300),
        ),
        data=st.data(),
        content_type=content_types,
        auth=st.none() | st.sampled_from(SECRETS).map(lambda s: f"Bearer {s}".encode()),
    )
    def fuzz(
        body: bytes, data: st.DataObject, content_type: str | None, auth: bytes | None
    ) -> None:
        examples.append(1)
        headers = data.draw(badly_signed(body)) + auth_headers(auth)  # a token is no signature
        answer = live.post("/slack/interactions", body, headers_with(headers, content_type))
        message = problem(answer, 401)
        assert message.startswith("Slack signature: "), message

    fuzz()
    assert len(examples) >= 300, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_slack_signed_but_not_one_valid_click_is_400(live: Live) -> None:
    examples: list[int] = []

    @settings(FUZZ, max_examples=300)
    @given(body=broken_click(), content_type=content_types, over=oversize)
    def fuzz(body: bytes, content_type: str | None, over: bool) -> None:
        examples.append(1)
        body = padded(body, over)
        answer = live.post(
            "/slack/interactions", body, headers_with(slack_signed(body), content_type)
        )
        problem(answer, 413 if len(body) > BODY_LIMIT else 400)

    fuzz()
    assert len(examples) >= 300, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_slack_clicks_by_people_off_the_allowlist_are_acknowledged_and_refused(
    live: Live, under_fuzz: Daemon
) -> None:
    """Valid, signed clicks by strangers on the pending request, a decided one or none -- some
    with an approver's name as their (self-chosen) Slack username: Slack gets its empty 200 at
    once, then each is refused and audited under the user's ID (checked per click)."""
    seeded = under_fuzz.seeded
    ids = st.sampled_from([seeded.pending, seeded.denied]) | st.integers(1, 2**63 - 1)
    # Slack's user IDs ([A-Z0-9], U0123ABC); a malformed one is a 400 (an example test below)
    nobody = st.from_regex(r"[A-Z0-9]{2,32}", fullmatch=True).filter(lambda s: s not in APPROVERS)
    anyone_named = st.text(min_size=1, max_size=40).filter(lambda s: s not in APPROVERS)

    examples: list[int] = []

    @settings(FUZZ, max_examples=150)
    @given(
        user_id=nobody,
        username=st.sampled_from(["", *APPROVERS]) | anyone_named,
        action=st.sampled_from(["approve", "deny"]),
        approval_id=ids,
        action_ts=st.sampled_from(["1700000000.1", "1700000000.2"])
        | st.from_regex(r"[0-9]{1,12}\.[0-9]{1,9}", fullmatch=True),
    )
    def fuzz(user_id: str, username: str, action: str, approval_id: int, action_ts: str) -> None:
        examples.append(1)
        body = form(
            click(
                user_id=user_id,
                username=username,
                action=action,
                value=str(approval_id),
                action_ts=action_ts,
            )
        )
        answer = live.post("/slack/interactions", body, slack_signed(body))
        assert (answer.status_code, answer.content) == (200, b""), answer.text
        # a re-delivery (same user, action_ts, approval) is counted as a replay, audited once
        live.slack_clicks.append((user_id, action_ts, approval_id))

    fuzz()
    assert len(examples) >= 150, len(examples)  # none lost to filters
    live.assert_no_action()


# --- Fuzz: the operator API -------------------------------------------------------------------


def test_fuzz_rollback_without_the_operator_token_is_401(live: Live) -> None:
    examples: list[int] = []

    @settings(FUZZ, max_examples=150)
    @given(
        auth=wrong_authorization(
            OPERATOR_TOKEN, (ALERTMANAGER_TOKEN, SIGNING_SECRET), tuple(OPERATORS.values())
        ),
        body=st.one_of(
            st.fixed_dictionaries(
                {"reason": reason_text},
                optional={"category": st.sampled_from(["manual", "security"])},
            ).map(lambda d: json.dumps(d).encode()),
            st.binary(max_size=300),
            random_json_bytes,
        ),
        content_type=content_types,
        over=oversize,
    )
    def fuzz(auth: bytes | None, body: bytes, content_type: str | None, over: bool) -> None:
        examples.append(1)
        body = padded(body, over)
        answer = live.post("/api/v1/rollback", body, headers_with(auth_headers(auth), content_type))
        if len(body) > BODY_LIMIT:
            problem(answer, 413)
            return
        problem(answer, 401)
        assert answer.headers["WWW-Authenticate"] == "Bearer"

    fuzz()
    assert len(examples) >= 150, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_rollback_with_the_token_but_a_broken_order_is_400(live: Live) -> None:
    examples: list[int] = []

    @settings(FUZZ, max_examples=300)
    @given(
        case=st.one_of(
            broken_order(),
            st.binary(max_size=300).map(lambda b: (b, None)),
            PATHOLOGICAL.map(lambda b: (b, None)),
            not_dict.map(lambda v: (v, "JSON object")),
        ),
        content_type=content_types,
        over=oversize,
        who=anyone,
    )
    def fuzz(case: tuple[Any, str | None], content_type: str | None, over: bool, who: str) -> None:
        examples.append(1)
        document, where = case
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        body = padded(body, over)
        answer = live.post(
            "/api/v1/rollback", body, headers_with(bearer(TOKEN_OF[who]), content_type)
        )
        if len(body) > BODY_LIMIT:
            problem(answer, 413)
            return
        message = problem(answer, 400)
        if where is not None:
            assert where in message, (where, message)

    fuzz()
    assert len(examples) >= 300, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_rollback_orders_for_unknown_targets_are_404_and_audited(live: Live) -> None:
    """Valid orders the gate must refuse (no such target): 404, one audit row each; a
    request id seen before is a replay (200, ignored, at most a refusal journaled)."""
    examples: list[int] = []

    @settings(FUZZ, max_examples=100)
    @given(
        target=st.text(max_size=200).filter(lambda t: t != TARGET),
        by=stranger,
        reason=reason_text,
        category=st.sampled_from(["manual", "security"]),
        rid=request_id,
    )
    def fuzz(target: str, by: str, reason: str, category: str, rid: str | None) -> None:
        examples.append(1)
        order = {"reason": reason, "category": category, "target": target}
        if rid is not None:
            order["request_id"] = rid
        before = last_audit_id(live.daemon.journal)
        answer = live.post("/api/v1/rollback", json.dumps(order).encode(), bearer(TOKEN_OF[by]))
        rows = audit_since(live.daemon.journal, before)
        if replayed(live, "rollback", rid, answer):
            assert_replay_audited(rows, by)
            return
        problem(answer, 404)
        assert [(r["via"], r["actor"], r["action"], r["accepted"]) for r in rows] == [
            ("api", by, "rollback", 0)
        ]
        assert_nonce(rows[0], rid)

    fuzz()
    assert len(examples) >= 100, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_votes_without_the_operator_token_are_401(live: Live, under_fuzz: Daemon) -> None:
    examples: list[int] = []

    @settings(FUZZ, max_examples=150)
    @given(
        auth=wrong_authorization(
            OPERATOR_TOKEN, (ALERTMANAGER_TOKEN, SIGNING_SECRET), tuple(OPERATORS.values())
        ),
        approval_id=st.sampled_from([str(under_fuzz.seeded.pending), "1", "0", "-1", "abc"]),
        body=st.one_of(
            st.fixed_dictionaries({"decision": st.sampled_from(["approve", "deny"])}).map(
                lambda d: json.dumps(d).encode()
            ),
            st.binary(max_size=300),
        ),
        content_type=content_types,
    )
    def fuzz(auth: bytes | None, approval_id: str, body: bytes, content_type: str | None) -> None:
        examples.append(1)
        answer = live.post(
            f"/api/v1/approvals/{approval_id}", body, headers_with(auth_headers(auth), content_type)
        )
        problem(answer, 401)

    fuzz()
    assert len(examples) >= 150, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_votes_on_ids_that_are_not_positive_integers_are_400(
    live: Live, under_fuzz: Daemon
) -> None:
    """The id is checked before anything else, even with an approver's valid vote."""
    examples: list[int] = []

    @settings(FUZZ, max_examples=150)
    @given(
        raw=st.one_of(
            st.text(min_size=1, max_size=30),
            st.integers(max_value=0).map(str),
            st.integers(10**18, 10**40).map(str),
            st.sampled_from(
                ["01", "1.0", "1e3", "+1", " 1", "1 ", "0x1", "\uff11", "\u0663", "NaN"]
            ),
            st.integers(1, 99).map(lambda n: f"{n}/"),
        ).filter(lambda s: not POSITIVE_ID.fullmatch(s)),
        by=st.sampled_from(["alice", "bob"]),
    )
    def fuzz(raw: str, by: str) -> None:
        examples.append(1)
        body = json.dumps({"decision": "approve"}).encode()
        path = f"/api/v1/approvals/{quote(raw, safe='')}"
        answer = live.post(path, body, bearer(TOKEN_OF[by]))
        if raw in (".", "..") or {"{", "}"} & set(raw):  # not this route's path at all:
            problem(answer, 404)  # normalised away by the client, or no match for {approval}
        else:
            message = problem(answer, 400)
            assert "approval id" in message, message

    fuzz()
    assert len(examples) >= 150, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_votes_with_a_broken_body_are_400(live: Live, under_fuzz: Daemon) -> None:
    seeded = under_fuzz.seeded

    examples: list[int] = []

    @settings(FUZZ, max_examples=250)
    @given(
        approval_id=st.sampled_from([seeded.pending, seeded.denied]) | st.integers(1, 10**18 - 1),
        case=st.one_of(
            broken_vote(),
            st.binary(max_size=300).map(lambda b: (b, None)),
            PATHOLOGICAL.map(lambda b: (b, None)),
        ),
        content_type=content_types,
        over=oversize,
        who=anyone,
    )
    def fuzz(
        approval_id: int,
        case: tuple[Any, str | None],
        content_type: str | None,
        over: bool,
        who: str,
    ) -> None:
        examples.append(1)
        document, where = case
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        body = padded(body, over)
        answer = live.post(
            f"/api/v1/approvals/{approval_id}",
            body,
            headers_with(bearer(TOKEN_OF[who]), content_type),
        )
        if len(body) > BODY_LIMIT:
            problem(answer, 413)
            return
        message = problem(answer, 400)
        if where is not None:
            assert where in message, (where, message)

    fuzz()
    assert len(examples) >= 250, len(examples)  # none lost to filters
    live.assert_no_action()


def test_fuzz_votes_by_people_off_the_allowlist_are_refused_and_audited(
    live: Live, under_fuzz: Daemon
) -> None:
    """403 on the pending request, 409 on a decided one, 404 on none; one audit row each,
    naming the voter; a request id seen before is a replay (200, ignored, at most a refusal
    journaled)."""
    seeded = under_fuzz.seeded

    examples: list[int] = []

    @settings(FUZZ, max_examples=150)
    @given(
        approval_id=st.sampled_from([seeded.pending, seeded.denied]) | st.integers(1, 10**18 - 1),
        by=stranger,
        decision=st.sampled_from(["approve", "deny"]),
        rid=request_id,
    )
    def fuzz(approval_id: int, by: str, decision: str, rid: str | None) -> None:
        examples.append(1)
        vote: dict[str, Any] = {"decision": decision}
        if rid is not None:
            vote["request_id"] = rid
        before = last_audit_id(live.daemon.journal)
        answer = live.post(
            f"/api/v1/approvals/{approval_id}", json.dumps(vote).encode(), bearer(TOKEN_OF[by])
        )
        rows = audit_since(live.daemon.journal, before)
        if replayed(live, "vote", rid, answer):
            assert_replay_audited(rows, by)
            return
        expected = {seeded.pending: 403, seeded.denied: 409}.get(approval_id, 404)
        message = problem(answer, expected)
        if expected == 403:
            assert by in message, message
        summary = [
            (r["via"], r["actor"], r["action"], r["approval_id"], r["accepted"]) for r in rows
        ]
        assert summary == [("api", by, decision, approval_id, 0)]
        assert_nonce(rows[0], rid)

    fuzz()
    assert len(examples) >= 150, len(examples)  # none lost to filters
    live.assert_no_action()


# --- Examples: each bad input of the issue, by hand ------------------------------------------

ROUTES = ["/alertmanager", "/api/v1/rollback", "/api/v1/approvals/{pending}"]


def route(path: str, daemon_: Daemon) -> str:
    return path.format(pending=daemon_.seeded.pending)


def valid_body(path: str) -> bytes:
    if path == "/alertmanager":
        return json.dumps(delivery([alert("LavalinkCrashLoop", "0123456789abcdef")])).encode()
    if path == "/api/v1/rollback":
        return json.dumps({"reason": "crash loop"}).encode()
    if path.startswith("/api/v1/approvals/"):
        return json.dumps({"decision": "approve"}).encode()
    return form(click(user_id="U0ALICE", username="alice"))


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", "Basic x", "Bearer am-token-fuzz-9b27e4x", "swap"],
)
def test_a_missing_or_wrong_token_is_401(
    live: Live, under_fuzz: Daemon, path: str, authorization: str | None
) -> None:
    if authorization == "swap":  # the other route's token
        other = OPERATOR_TOKEN if path == "/alertmanager" else ALERTMANAGER_TOKEN
        authorization = f"Bearer {other}"
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = live.post(route(path, under_fuzz), valid_body(path), headers)
    assert problem(answer, 401) == "a valid bearer token is required"
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    live.assert_no_action()


BAD_REQUESTS = [
    ("/alertmanager", b"{not json", "not JSON"),
    ("/alertmanager", b"[]", "JSON object"),
    ("/alertmanager", json.dumps({"version": "3", "status": "firing", "alerts": []}), "version"),
    ("/alertmanager", json.dumps({"version": "4", "status": "firing"}), "alerts"),
    (
        "/alertmanager",
        json.dumps(delivery([{**alert("LavalinkDown", "ab"), "startsAt": 17}])),
        "alerts.0.startsAt",
    ),
    (
        "/alertmanager",
        json.dumps(delivery([{**alert("LavalinkDown", "ab"), "labels": {"severity": 1}}])),
        "alerts.0.labels",
    ),
    ("/api/v1/rollback", b"reason=x&category=manual", "not JSON"),
    ("/api/v1/rollback", b'"rollback"', "JSON object"),
    ("/api/v1/rollback", json.dumps({"category": "manual"}), "reason: required field is missing"),
    ("/api/v1/rollback", json.dumps({"reason": "x", "by": 7}), "by"),
    ("/api/v1/rollback", json.dumps({"reason": "x", "by": "alice"}), "by: the token names"),
    ("/api/v1/rollback", json.dumps({"reason": "  "}), "reason"),
    ("/api/v1/rollback", json.dumps({"reason": "x", "now": True}), "now"),
    ("/api/v1/rollback", json.dumps({"reason": "x", "category": "x"}), "category"),
    ("/api/v1/approvals/{pending}", b"", "not JSON"),
    ("/api/v1/approvals/{pending}", json.dumps({"decision": "maybe"}), "decision"),
    ("/api/v1/approvals/{pending}", json.dumps({"decision": "approve", "by": "bob"}), "by"),
    ("/api/v1/approvals/{pending}", json.dumps({"decision": True}), "decision"),
    ("/api/v1/approvals/abc", json.dumps({"decision": "approve"}), "approval id"),
    ("/api/v1/approvals/-1", json.dumps({"decision": "approve"}), "approval id"),
    ("/api/v1/approvals/0", json.dumps({"decision": "approve"}), "approval id"),
    ("/api/v1/approvals/" + "9" * 19, json.dumps({"decision": "deny"}), "id"),
]


@pytest.mark.parametrize(("path", "body", "named"), BAD_REQUESTS)
def test_malformed_json_or_a_wrong_shape_is_400_naming_the_problem(
    live: Live, under_fuzz: Daemon, path: str, body: str | bytes, named: str
) -> None:
    token = ALERTMANAGER_TOKEN if path == "/alertmanager" else OPERATORS["alice"]
    raw = body.encode() if isinstance(body, str) else body
    answer = live.post(route(path, under_fuzz), raw, bearer(token))
    assert named in problem(answer, 400)
    live.assert_no_action()


NOT_DECODABLE = {
    "nested deeper than the decoder recurses": b"[" * 5000 + b"]" * 5000,
    "objects nested too deep": b'{"a":' * 2000 + b"1" + b"}" * 2000,
    "an integer longer than int() converts": b'{"version": "4", "x": ' + b"7" * 5000 + b"}",
    "a bare huge integer": b"1" * 4400,
}


@pytest.mark.parametrize("path", [*ROUTES, "/slack/interactions"])
@pytest.mark.parametrize("what", list(NOT_DECODABLE))
def test_json_python_cannot_decode_is_400_not_500(
    live: Live, under_fuzz: Daemon, path: str, what: str
) -> None:
    """json.loads raises RecursionError and plain ValueError (not JSONDecodeError) for these;
    they are bad input all the same."""
    body = NOT_DECODABLE[what]
    if path == "/slack/interactions":
        body = b"payload=" + body  # a form value as is: none holds "&", "=", "+" or "%"
        headers = slack_signed(body)
    else:
        headers = bearer(ALERTMANAGER_TOKEN if path == "/alertmanager" else OPERATOR_TOKEN)
    answer = live.post(route(path, under_fuzz), body, headers)
    problem(answer, 400)
    live.assert_no_action()


@pytest.mark.parametrize("path", [*ROUTES, "/slack/interactions"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "x-unknown"])
def test_a_body_in_an_encoding_that_does_not_decode_is_a_json_4xx(
    live: Live, under_fuzz: Daemon, path: str, encoding: str
) -> None:
    body = b"this is not compressed at all"
    headers = {"Content-Encoding": encoding}
    if path == "/slack/interactions":
        headers |= slack_signed(body)
    else:
        headers |= bearer(ALERTMANAGER_TOKEN if path == "/alertmanager" else OPERATOR_TOKEN)
    answer = live.post(route(path, under_fuzz), body, headers)
    assert answer.status_code in (400, 415), (answer.status_code, answer.text)
    problem(answer, answer.status_code)
    live.assert_no_action()


@pytest.mark.parametrize("path", [*ROUTES, "/slack/interactions"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_413(
    live: Live, under_fuzz: Daemon, path: str, framing: str
) -> None:
    body = b'{"pad": "' + b"x" * BODY_LIMIT + b'"}'
    if path == "/slack/interactions":
        headers = slack_signed(body)
    else:
        headers = bearer(ALERTMANAGER_TOKEN if path == "/alertmanager" else OPERATOR_TOKEN)
    content: Any = body if framing == "content-length" else iter([body[:100], body[100:]])
    answer = live.client.post(route(path, under_fuzz), content=content, headers=headers)
    assert f"over {BODY_LIMIT} bytes" in problem(answer, 413)
    just_under = b" " * (BODY_LIMIT - 2) + b"{}"
    if path != "/slack/interactions":  # the limit itself is not over it
        problem(live.client.post(route(path, under_fuzz), content=just_under, headers=headers), 400)
    live.assert_no_action()


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "missing X-Slack-Signature"),
        ({"X-Slack-Request-Timestamp": "now"}, "missing X-Slack-Signature"),
        ({"signature-only": "1"}, "missing X-Slack-Request-Timestamp"),
        ({"wrong-secret": "1"}, "bad signature"),
        ({"stale": "301"}, "stale"),
        ({"stale": "3600"}, "stale"),
        ({"stale": "-400"}, "stale"),  # from the future
        ({"X-Slack-Request-Timestamp": "12a", "X-Slack-Signature": "v0=00"}, "timestamp"),
    ],
)
def test_slack_unsigned_wrongly_signed_or_stale_is_401(
    live: Live, under_fuzz: Daemon, headers: dict[str, str], why: str
) -> None:
    """Alice's own click on the pending request, but not (validly) signed by Slack."""
    body = form(click(user_id="U0ALICE", username="alice", value=str(under_fuzz.seeded.pending)))
    if "signature-only" in headers:
        headers = {"X-Slack-Signature": slack_signed(body)["X-Slack-Signature"]}
    elif "wrong-secret" in headers:
        headers = slack_signed(body, secret="not-" + SIGNING_SECRET)
    elif "stale" in headers:
        headers = slack_signed(body, at=time.time() - int(headers["stale"]) - 1)
    elif headers.get("X-Slack-Request-Timestamp") == "now":
        headers = {"X-Slack-Request-Timestamp": str(int(time.time()))}
    answer = live.post("/slack/interactions", body, headers)
    message = problem(answer, 401)
    assert why in message, message
    live.assert_no_action()


def test_an_unknown_slack_action_is_400(live: Live, under_fuzz: Daemon) -> None:
    pending = str(under_fuzz.seeded.pending)
    for action in ("approve_all", "Approve", "rollback", ""):
        body = form(click(user_id="U0ALICE", username="alice", action=action, value=pending))
        message = problem(live.post("/slack/interactions", body, slack_signed(body)), 400)
        assert "action" in message, message
    live.assert_no_action()


def test_an_api_vote_by_someone_off_the_allowlist_is_403_and_audited(
    live: Live, under_fuzz: Daemon
) -> None:
    before = last_audit_id(under_fuzz.journal)
    for decision in ("approve", "deny"):
        answer = live.post(
            f"/api/v1/approvals/{under_fuzz.seeded.pending}",
            json.dumps({"decision": decision}).encode(),
            bearer(OPERATORS["mallory"]),
        )
        assert "mallory" in problem(answer, 403)
    rows = audit_since(under_fuzz.journal, before)
    assert [(r["actor"], r["action"], r["accepted"], r["approval_id"]) for r in rows] == [
        ("mallory", "approve", 0, under_fuzz.seeded.pending),
        ("mallory", "deny", 0, under_fuzz.seeded.pending),
    ]
    assert all("mallory is not on the approvers list" in r["detail"] for r in rows)
    live.assert_no_action()


def test_a_slack_click_by_someone_off_the_allowlist_is_acknowledged_then_refused(
    live: Live, under_fuzz: Daemon
) -> None:
    """Mallory renamed herself "alice" in Slack: the allowlist holds IDs and API names, and
    her ID is on neither."""
    pending = under_fuzz.seeded.pending
    body = form(click(user_id="U0MALLORY", username="alice", value=str(pending)))
    answer = live.post("/slack/interactions", body, slack_signed(body))
    assert (answer.status_code, answer.content) == (200, b"")
    live.slack_clicks.append(("U0MALLORY", "1700000000.123456", pending))
    live.assert_no_action()
    (row,) = [r for r in audit_since(under_fuzz.journal, live.audit_from) if r["via"] == "slack"]
    assert (row["actor"], row["accepted"], row["approval_id"]) == ("U0MALLORY", 0, pending)
    assert "U0MALLORY is not on the approvers list" in row["detail"]


def test_a_valid_order_without_systemd_is_refused_and_audited(
    live: Live, under_fuzz: Daemon
) -> None:
    """The one valid order the module sends: no executor is connected, so nothing starts."""
    before = last_audit_id(under_fuzz.journal)
    answer = live.post(
        "/api/v1/rollback",
        json.dumps({"reason": "security: CVE without a fix"}).encode(),
        bearer(OPERATORS["alice"]),
    )
    assert "no executor is connected" in problem(answer, 503)
    rows = audit_since(under_fuzz.journal, before)
    assert [(r["actor"], r["action"], r["accepted"]) for r in rows] == [("alice", "rollback", 0)]
    under_fuzz.expected.add(rows[0]["id"])  # an approver's, but refused: expected
    live.assert_no_action()


MARKER = "zq-echo-31337"
ECHOES = {
    "alertmanager startsAt": (
        "/alertmanager",
        json.dumps(delivery([{**alert("LavalinkDown", "ab"), "startsAt": MARKER}])).encode(),
    ),
    "alertmanager endsAt": (
        "/alertmanager",
        json.dumps(delivery([{**alert("LavalinkDown", "ab"), "endsAt": MARKER * 400}])).encode(),
    ),
    "slack action_id": ("/slack/interactions", form(click(action=MARKER))),
    "slack value": ("/slack/interactions", form(click(value=MARKER))),
    "slack type": ("/slack/interactions", form({**click(), "type": MARKER})),
}


@pytest.mark.parametrize("case", list(ECHOES))
def test_error_answers_name_the_problem_without_echoing_what_was_sent(
    live: Live, case: str
) -> None:
    """README: errors "name the problem and never echo what was sent"."""
    path, body = ECHOES[case]
    headers = slack_signed(body) if path.startswith("/slack") else bearer(ALERTMANAGER_TOKEN)
    answer = live.post(path, body, headers)
    problem(answer, 400)
    assert MARKER not in answer.text, answer.text[:300]
    live.assert_no_action()


# --- Other daemons: secrets not configured; the checks can fail -------------------------------


def test_without_configured_secrets_every_post_route_is_403(tmp_path: Path, logs: Logs) -> None:
    """Whatever credentials are presented, a route whose secret is not configured is off."""
    settings_ = write_config(tmp_path, secrets=False)
    seeded = seed(settings_)
    path = settings_.state_dir / journal.DATABASE_NAME
    logged_from = logs.mark()
    with running(settings_) as url, httpx.Client(base_url=url, timeout=30) as client:
        before = dump(path)

        examples: list[int] = []

        @settings(FUZZ, max_examples=120)
        @given(
            path_=st.sampled_from(
                [
                    "/alertmanager",
                    "/slack/interactions",
                    "/api/v1/rollback",
                    f"/api/v1/approvals/{seeded.pending}",
                ]
            ),
            auth=st.one_of(
                st.none(),
                st.sampled_from(SECRETS).map(lambda s: f"Bearer {s}".encode()),
                header_text.map(lambda s: s.encode("latin-1")),
            ),
            signed=st.booleans(),
            body=st.sampled_from(["/alertmanager", "/api/v1/rollback", "/api/v1/approvals/1"]).map(
                valid_body
            )
            | st.binary(max_size=200),
            over=oversize,
        )
        def fuzz(path_: str, auth: bytes | None, signed: bool, body: bytes, over: bool) -> None:
            examples.append(1)
            body = padded(body, over)
            headers = auth_headers(auth)
            if signed:
                headers += [(k.encode(), v.encode()) for k, v in slack_signed(body).items()]
            answer = client.post(path_, content=body, headers=headers)
            if len(body) > BODY_LIMIT:
                problem(answer, 413)
                return
            message = problem(answer, 403)
            assert re.search(r"token_file|signing_secret_file", message), message

        fuzz()
        assert len(examples) >= 120, len(examples)  # none lost to filters
        assert dump(path) == before
        assert [r["via"] for r in audit_since(path, 0)] == ["cli"]  # only the seeded vote
    assert not logs.errors(logged_from)


def test_a_flood_of_distinct_alert_names_stays_bounded_and_leaves_no_series(
    tmp_path: Path, logs: Logs
) -> None:
    """Thousands of distinct alert names: other teams' (severity and category labels, but not
    this target's) and this target's own. The foreign ones are unrouted, never a signal; of
    the routed ones at most max_alerts are kept, the rest dropped and counted; /metrics holds a
    series per kept signal only, and none is left once they resolve."""
    settings_ = write_config(tmp_path, mode="observe", interval="2s", max_alerts=50)
    url_metrics = "rollback_watchdog_signal_state"
    with running(settings_) as url, httpx.Client(base_url=url, timeout=30) as client:
        journal_path = settings_.state_dir / journal.DATABASE_NAME
        names = {
            "foreign": [f"PostgresDown{i:04d}" for i in range(2000)],
            "routed": [f"TeamLavalinkAlert{i:04d}" for i in range(2000)],
        }
        labels = {
            "foreign": {"job": "postgres", "instance": "db-1:5432"},
            "routed": {
                "rollback_target": TARGET,
                "severity": "warning",
                "rollback_category": "monitoring",
            },
        }

        def deliver(kind: str, status: str) -> None:
            for start in range(0, 2000, 25):  # 25 a delivery: under the listener's body limit
                batch = []
                for name in names[kind][start : start + 25]:
                    fingerprint = hashlib.sha256(name.encode()).hexdigest()[:16]
                    item = alert(name, fingerprint, **labels[kind])
                    item["status"] = status
                    batch.append(item)
                answer = client.post(
                    "/alertmanager", json=delivery(batch), headers=bearer(ALERTMANAGER_TOKEN)
                )
                assert answer.status_code == 200, answer.text

        deliver("foreign", "firing")
        deliver("routed", "firing")
        Live.wait_for(
            "foreign alerts counted",
            lambda: metric_sum(url, "rollback_watchdog_alerts_unrouted_total", reason="no_match"),
            2000,
        )
        Live.wait_for(
            "routed alerts kept or dropped",
            lambda: (
                metric_sum(url, "rollback_watchdog_alerts_total", result="new")
                + metric_sum(url, "rollback_watchdog_alerts_dropped_total", kind="routed")
            ),
            2000,
        )
        assert metric_sum(url, "rollback_watchdog_alerts_total", result="new") == 50
        assert metric_sum(url, "rollback_watchdog_alerts_dropped_total", kind="unrouted") == 1950
        with contextlib.closing(sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True)) as db:
            kept = db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
            unrouted = db.execute("SELECT COUNT(*) FROM unrouted_alerts").fetchone()[0]
            foreign = db.execute(
                "SELECT COUNT(*) FROM alerts WHERE alertname LIKE 'PostgresDown%'"
            ).fetchone()[0]
        assert (kept, unrouted, foreign) == (50, 50, 0)

        def signals() -> set[str]:
            text = client.get("/metrics").text
            return {
                sample.labels["signal"]
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == url_metrics
            }

        shipped = {
            r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
        } | {r.name for r in comparison.rules(comparison.Criteria())}  # the profile's own two
        deadline = time.monotonic() + 20
        while len(signals() - shipped) < 50:  # the next evaluation takes the kept ones
            assert time.monotonic() < deadline, len(signals())
            time.sleep(0.2)
        with contextlib.closing(sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT alertname FROM alerts").fetchall()
        assert signals() - shipped == {name for (name,) in rows}  # the kept ones: first come
        assert not any(name.startswith("PostgresDown") for name in signals())
        size = len(client.get("/metrics").content)
        assert size < 200_000, size  # 11 rules and 50 alerts; 25 000 names once made 16.5 MB

        deliver("routed", "resolved")  # resolved: their series go at the next evaluation
        deadline = time.monotonic() + 20
        while signals() != shipped:
            assert time.monotonic() < deadline, sorted(signals() - shipped)[:5]
            time.sleep(0.2)
        status = client.get("/api/v1/status", headers=bearer(OPERATORS["alice"])).json()[
            "unrouted_alerts"
        ]
        assert status["kept"] == 50 and status["latest"][0]["reason"] == "no_match"
    assert not logs.errors()


def test_the_no_action_checks_can_fail_an_approver_s_signed_click_counts(
    tmp_path: Path, logs: Logs
) -> None:
    """The same kind of click the fuzz forges, signed properly by alice: the approval changes,
    the audit row is accepted -- so the fuzz's unchanged tables mean something."""
    settings_ = write_config(tmp_path)
    seeded = seed(settings_)
    path = settings_.state_dir / journal.DATABASE_NAME
    with running(settings_) as url:
        before = dump(path)
        body = form(click(user_id="U0ALICE", username="alice", value=str(seeded.pending)))
        answer = httpx.post(f"{url}/slack/interactions", content=body, headers=slack_signed(body))
        assert (answer.status_code, answer.content) == (200, b"")
        Live.wait_for(
            "alice's click",
            lambda: metric_sum(url, "rollback_watchdog_approval_votes_total", result="counted"),
            1,
        )
        after = dump(path)
    assert after["approvals"] != before["approvals"]
    status = {row[0]: row[STATUS] for row in after["approvals"]}
    assert status[seeded.pending] == "approved"
    (row,) = [r for r in audit_since(path, 0) if r["via"] == "slack"]
    assert (row["actor"], row["accepted"]) == ("U0ALICE", 1)


def test_a_request_id_is_one_sender_s_not_a_key_anyone_can_burn(tmp_path: Path, logs: Logs) -> None:
    """A replay is the very same request again. A stranger's refused vote that happens to (or
    is made to) carry the request id alice will use must not make alice's vote a "replay"."""
    settings_ = write_config(tmp_path)
    seeded = seed(settings_)
    with running(settings_) as url:
        vote = f"{url}/api/v1/approvals/{seeded.pending}"
        first = httpx.post(
            vote,
            json={"decision": "deny", "request_id": "r-42"},
            headers=bearer(OPERATORS["mallory"]),
        )
        assert first.status_code == 403
        again = httpx.post(
            vote,
            json={"decision": "deny", "request_id": "r-42"},
            headers=bearer(OPERATORS["mallory"]),
        )
        assert again.status_code == 200 and again.json()["ignored"] is True  # a true replay
        alice = httpx.post(
            vote,
            json={"decision": "approve", "request_id": "r-42"},
            headers=bearer(OPERATORS["alice"]),
        )
    assert alice.status_code == 200, alice.text
    assert alice.json().get("status") == "approved", alice.text


def test_a_signed_click_whose_text_is_not_unicode_is_refused_not_lost(
    tmp_path: Path, logs: Logs
) -> None:
    """JSON may escape a lone surrogate (\\ud800), which no database can store: the click must
    be refused with a 400, or acknowledged and audited -- never fail after the 200."""
    settings_ = write_config(tmp_path)
    seeded = seed(settings_)
    path = settings_.state_dir / journal.DATABASE_NAME
    logged_from = logs.mark()
    with running(settings_) as url:
        body = form(click(user_id="U0\ud800", username="mallory", value=str(seeded.pending)))
        answer = httpx.post(f"{url}/slack/interactions", content=body, headers=slack_signed(body))
        assert answer.status_code in (200, 400), answer.text
        if answer.status_code == 400:
            problem(answer, 400)
        else:
            votes = "rollback_watchdog_approval_votes_total"
            deadline = time.monotonic() + 5
            while not logs.errors(logged_from) and not metric_sum(url, votes, via="slack"):
                assert time.monotonic() < deadline, "the click was neither counted nor failed"
                time.sleep(0.05)
            assert not logs.errors(logged_from)
            assert [r["accepted"] for r in audit_since(path, 0) if r["via"] == "slack"] == [0]
    assert not logs.errors(logged_from)

"""Approve mode end to end on real sockets: an Alertmanager notification opens an approval, the
incident's Slack message (on a local fake of Slack's Web API) carries the buttons, signed clicks
and the CLI vote through the HTTP listener, and every refusal says why and is journaled.

Nothing here reaches systemd (its bus address is a path that does not exist), so an approved
rollback waits for an executor: that is the state the last assertions check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from watchdog import config, journal, runtime
from watchdog_lab import slack as fake_slack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN, AM_TOKEN, SECRET = "op-token-e2e", "am-token-e2e", "signing-secret-e2e"
ENV = {
    "WD_TOKEN": TOKEN,
    "WD_AM_TOKEN": AM_TOKEN,
    "WD_SLACK_SECRET": SECRET,
    "WD_BOT": "xoxb-e2e",
    "WD_APP": "xapp-e2e",
    "WD_BOB": "bob-token-e2e",  # the operator API names the voter by the token
    "WD_MALLORY": "mallory-token-e2e",
}


@dataclass
class Running:
    url: str
    store: journal.Journal
    slack: fake_slack.FakeSlack
    config_path: Path
    hooked: list[dict[str, Any]]  # what the generic JSON webhook received


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A local receiver for the generic JSON webhook notifier (bearer token checked)."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer hook-token":
            return web.Response(status=401)
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


@pytest.fixture
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WD_HOOK", "hook-token")
    async with (
        fake_slack.FakeSlack(token=ENV["WD_BOT"], app_token=ENV["WD_APP"]) as slack,
        webhook_receiver() as (hook_url, hooked),
    ):
        path = tmp_path / "config.yml"
        path.write_text(
            textwrap.dedent(f"""\
            mode: approve
            interval: 1s
            state_dir: {tmp_path / "state"}
            prometheus: {{url: 'http://127.0.0.1:9', timeout: 1s, retries: 1}}
            systemd: {{bus: 'unix:path={tmp_path / "no-bus"}'}}
            listen:
              port: 0
              token_env: WD_TOKEN
              operators:
                - {{name: U0BOB, token_env: WD_BOB}}
                - {{name: mallory, token_env: WD_MALLORY}}
            alertmanager: {{token_env: WD_AM_TOKEN}}
            approval: {{approvers: [U0ALICE, U0BOB], required_approvals: 2, timeout: 10m}}
            slack:
              channel: C0ROLLBACK
              bot_token_env: WD_BOT
              signing_secret_env: WD_SLACK_SECRET
              socket_mode: true  # clicks also arrive over Socket Mode (no public URL needed)
              app_token_env: WD_APP
              api_url: '{slack.api_url}'
              retries: 0
            notify:
              webhooks: [{{url: '{hook_url}', token_env: WD_HOOK}}]
            targets:
              - name: lavalink
                primary: {{unit: lavalink-rust.service, job: lavalink-rust}}
                fallback: {{unit: lavalink-java.service, job: lavalink-java}}
                rules: [{ROOT / "rules" / "lavalink.yml"}]
                probes: {{enabled: false}}
                watch: {{enabled: false}}
            """)
        )
        settings = config.load(path)
        stop = asyncio.Event()
        handles: list[runtime.Running] = []
        task = asyncio.create_task(runtime.run(settings, stop=stop, started=handles.append))
        for _ in range(200):
            if handles or task.done():
                break
            await asyncio.sleep(0.05)
        assert handles, f"the daemon did not start: {task}"
        try:
            yield Running(
                f"http://127.0.0.1:{handles[0].listen_port}",
                handles[0].journal,
                slack,
                path,
                hooked,
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


def notification(*, fingerprint: str = "a1b2c3", status: str = "firing") -> dict[str, Any]:
    """What Alertmanager POSTs for the shipped LavalinkDown rule (payload version 4)."""
    alert = {
        "status": status,
        "labels": {
            "alertname": "LavalinkDown",
            "job": "lavalink-rust",
            "severity": "critical",
            "rollback_category": "instability",
        },
        "annotations": {"summary": "lavalink-rust is down"},
        "startsAt": "2026-11-26T10:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": '{}:{alertname="LavalinkDown"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "rollback-watchdog",
        "groupLabels": {"alertname": "LavalinkDown"},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert],
        "notification_reason": "new alert",  # newer releases add keys: ignored
    }


async def until(check: Any, what: str, within: float = 15.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def cli(
    config_path: Path, *args: str, url: str | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it: ``token`` is theirs (else the shared one is used)."""
    where = ["--url", url] if url else []  # the test's listener took a free port (listen.port 0)
    env = {**os.environ, **ENV}
    env.pop("ROLLBACK_WATCHDOG_TOKEN", None)
    if token is not None:
        env["ROLLBACK_WATCHDOG_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "watchdog", *args, "--config", str(config_path), *where],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


async def click(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    *,
    secret: str = SECRET,
    age: float = 0.0,
) -> httpx.Response:
    body = fake_slack.interaction_body(payload)
    headers = fake_slack.sign(secret, body, int(time.time() - age))
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    return await client.post(f"{url}/slack/interactions", content=body, headers=headers)


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        element
        for block in message.get("blocks", [])
        if block.get("type") == "actions"
        for element in block["elements"]
    ]


async def test_an_alert_asks_slack_and_two_people_approve(running: Running) -> None:
    url, store, slack = running.url, running.store, running.slack
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(f"{url}/alertmanager", json=notification())
        assert refused.status_code == 401
        answer = await client.post(
            f"{url}/alertmanager",
            json=notification(),
            headers={"Authorization": f"Bearer {AM_TOKEN}"},
        )
        assert (answer.status_code, answer.json()) == (200, {"accepted": 1})

        async def pending() -> list[journal.ApprovalRow]:
            return await asyncio.to_thread(store.approvals, status="pending")

        [asked] = await until(pending, "an approval request")
        assert asked.verdict == "rollback" and "firing in Alertmanager" in asked.reason

        async def posted() -> list[fake_slack.Call]:
            return slack.calls_to("chat.postMessage")

        [post] = await until(posted, "the incident's Slack message")
        assert post.args["channel"] == "C0ROLLBACK"
        [message] = slack.messages.values()
        approve, deny = buttons(message)
        assert (approve["action_id"], approve["value"], approve["style"]) == (
            "approve",
            str(asked.id),
            "primary",
        )
        assert "lavalink-rust.service" in json.dumps(approve["confirm"])
        assert (deny["action_id"], deny["style"]) == ("deny", "danger")

        status = await asyncio.to_thread(cli, running.config_path, "status")
        assert status.returncode == 1, status.stderr  # the daemon runs; a target needs a human
        assert status.stdout.startswith("daemon: running (pid ")
        assert f"approval #{asked.id} pending" in status.stdout  # the headline's problems
        assert f"approval #{asked.id} PENDING (0 of 2)" in status.stdout

        # Slack's signature: unsigned, wrongly signed and stale clicks change nothing
        payload = fake_slack.block_actions(value=str(asked.id), user_id="U0ALICE", username="alice")
        body = fake_slack.interaction_body(payload)
        unsigned = await client.post(f"{url}/slack/interactions", content=body)
        wrong = await click(client, url, payload, secret="not-the-secret")
        stale = await click(client, url, payload, age=301)
        assert [r.status_code for r in (unsigned, wrong, stale)] == [401, 401, 401]
        assert "stale" in stale.json()["message"]

        stranger = fake_slack.block_actions(
            value=str(asked.id), user_id="U0EVE", username="eve", action_ts="1.1"
        )
        assert (await click(client, url, stranger)).status_code == 200  # acknowledged, then refused

        first = await click(client, url, payload)
        replay = await click(client, url, payload)  # the same click delivered again
        assert (first.status_code, first.text, replay.status_code) == (200, "", 200)

        async def one_approval() -> bool:
            row = await asyncio.to_thread(store.approval, asked.id)
            return row is not None and row.approvers == ("U0ALICE",)

        await until(one_approval, "alice's approval")

        async def audited() -> list[journal.AuditRow]:
            rows = await asyncio.to_thread(store.audit_trail)
            return rows if len(rows) >= 3 else []

        trail = [(a.actor, a.via, a.accepted) for a in reversed(await until(audited, "audit"))]
        assert trail[:3] == [
            ("U0EVE", "slack", 0),
            ("U0ALICE", "slack", 1),
            ("U0ALICE", "slack", 0),
        ]
        assert "already received" in (await asyncio.to_thread(store.audit_trail))[0].detail

    voted = await asyncio.to_thread(
        cli, running.config_path, "approve", str(asked.id), url=running.url, token=ENV["WD_BOB"]
    )
    assert voted.returncode == 0, voted.stderr
    assert voted.stdout.strip() == "approved by U0ALICE, U0BOB (api)"
    again = await asyncio.to_thread(
        cli,
        running.config_path,
        "deny",
        str(asked.id),
        url=running.url,
        token=ENV["WD_MALLORY"],
    )
    assert again.returncode == 1
    assert f"approval #{asked.id} was already approved (HTTP 409)" in again.stderr

    approved = await asyncio.to_thread(store.approval, asked.id)
    assert approved is not None and approved.status == "approved"
    assert approved.launched == 0  # no systemd here: the run waits for an executor

    async def updated() -> bool:
        texts = json.dumps(list(slack.messages.values()))
        return "approved by U0ALICE, U0BOB (api)" in texts and "not on the approvers list" in texts

    await until(updated, "the Slack message to show the votes")

    async def hooked() -> bool:  # the generic webhook got the same story, as JSON
        cards = [h["card"] for h in running.hooked]
        return any(c["approval"] == asked.id for c in cards) and any(
            "approved by U0ALICE, U0BOB (api)" in line for c in cards for line in c["history"]
        )

    await until(hooked, "the webhook to carry the approval")
    assert buttons(next(iter(slack.messages.values()))) == []  # decided: no more buttons

    shared = await asyncio.to_thread(  # the shared token names "operator": not an approver
        cli, running.config_path, "rollback", "--reason", "drill", "--yes", url=running.url
    )
    assert shared.returncode == 1
    assert (
        "operator is not on approval.approvers: in approve mode only an approver may order a "
        "rollback (HTTP 403)"
    ) in shared.stderr
    ordered = await asyncio.to_thread(
        cli,
        running.config_path,
        "rollback",
        "--reason",
        "drill",
        "--yes",
        url=running.url,
        token=ENV["WD_BOB"],
    )
    assert ordered.returncode == 1
    assert "cannot start now: no executor is connected (HTTP 503)" in ordered.stderr
    trail = [(a.actor, a.action, a.accepted) for a in store.audit_trail(limit=2)]
    assert trail == [("U0BOB", "rollback", 0), ("operator", "rollback", 0)]


async def test_cli_votes_refuse_strangers_and_bad_ids(running: Running) -> None:
    stranger = await asyncio.to_thread(
        cli, running.config_path, "approve", "5", url=running.url, token=ENV["WD_MALLORY"]
    )
    assert stranger.returncode == 2 and "there is no approval #5 (HTTP 404)" in stranger.stderr
    bad = await asyncio.to_thread(cli, running.config_path, "deny", "five", url=running.url)
    assert bad.returncode == 2 and "'five' is not an approval number" in bad.stderr


async def test_a_click_over_socket_mode_counts_like_one_over_http(running: Running) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            f"{running.url}/alertmanager",
            json=notification(fingerprint="d4e5f6"),
            headers={"Authorization": f"Bearer {AM_TOKEN}"},
        )
        assert answer.status_code == 200

    async def pending() -> list[journal.ApprovalRow]:
        return await asyncio.to_thread(running.store.approvals, status="pending")

    [asked] = await until(pending, "an approval request")
    await running.slack.wait_connected()
    payload = fake_slack.block_actions(
        action="deny", value=str(asked.id), user_id="U0BOB", username="bob"
    )
    envelope = await running.slack.push_interactive(payload)
    await running.slack.wait_ack(envelope)

    async def denied() -> bool:
        row = await asyncio.to_thread(running.store.approval, asked.id)
        return row is not None and row.status == "denied"

    await until(denied, "the denial over Socket Mode")
    row = await asyncio.to_thread(running.store.approval, asked.id)
    assert row is not None and (row.decided_by, row.outcome) == ("U0BOB", "denied by U0BOB (slack)")

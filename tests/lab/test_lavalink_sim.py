"""The Lavalink simulator answers as Lavalink does, over a real socket, from a real process.

Every node here is `python -m watchdog_lab.lavalink` in a subprocess on a free port; REST goes
through httpx and the WebSocket through aiohttp's client, as a bot's library would talk to it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdog_lab.lavalink import Faults, Severity, load_result, parse_options

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "youshallnotpass"
BOT_USER_ID = "170939974227591168"
READY_TIMEOUT = 10.0
INFO_FIELDS = {
    "version",
    "buildTime",
    "git",
    "jvm",
    "lavaplayer",
    "sourceManagers",
    "filters",
    "plugins",
}
TRACK_INFO_FIELDS = {
    "identifier",
    "isSeekable",
    "author",
    "length",
    "isStream",
    "position",
    "title",
    "uri",
    "artworkUrl",
    "isrc",
    "sourceName",
}
ERROR_BODY_FIELDS = {"timestamp", "status", "error", "message", "path"}
RUST_FRAME_STATS = {"sent": 1000, "nulled": 5, "deficit": 2}
CONTROL = "/sim/faults"
MIB = 1 << 20


# --- Running nodes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    port: int
    launched_at: float
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(
        self, path: str, *, password: str | None = PASSWORD, params: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = {} if password is None else {"Authorization": password}
        return httpx.get(f"{self.url}{path}", headers=headers, params=params, timeout=10.0)

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        password: str | None = PASSWORD,
        content: bytes | None = None,
    ) -> httpx.Response:
        headers = {} if password is None else {"Authorization": password}
        return httpx.post(
            f"{self.url}{path}", headers=headers, json=body, content=content, timeout=10.0
        )

    def faults(self) -> dict[str, Any]:
        response = self.get(CONTROL)
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def set_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.post(CONTROL, body)
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not accepts_connections(self.port):
            assert self.process.poll() is None, f"simulator exited early:\n{self.log()}"
            assert time.monotonic() < deadline, f"simulator never listened:\n{self.log()}"
            time.sleep(0.05)

    def exit_code(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch(log_dir: Path, *flags: str, wait: bool = True) -> Node:
    port = free_port()
    log_path = log_dir / f"lavalink-{port}.log"
    command = [sys.executable, "-m", "watchdog_lab.lavalink", "--port", str(port), *flags]
    launched_at = time.time()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    node = Node(process, port, launched_at, log_path)
    if wait:
        node.wait_until_listening()
    return node


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Any]:
    """Start nodes inside one test; every one is stopped afterwards."""
    started: list[Node] = []

    def start(*flags: str, wait: bool = True) -> Node:
        node = launch(tmp_path, *flags, wait=wait)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def _module_node(tmp_path_factory: pytest.TempPathFactory, *flags: str) -> Iterator[Node]:
    node = launch(tmp_path_factory.mktemp("lavalink"), *flags)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def java_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from _module_node(tmp_path_factory, "--flavour", "java", "--stats-interval", "1")


@pytest.fixture(scope="module")
def rust_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from _module_node(tmp_path_factory, "--flavour", "rust")


@pytest.fixture(scope="module")
def failing_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    flags = ("--fail-sources", "youtube", "--error-severity", "fault")
    yield from _module_node(tmp_path_factory, *flags)


# --- A lavaplayer track decoder, written from the format, checked on a real track --------------


def _read_java_utf(reader: io.BytesIO) -> str:
    (length,) = struct.unpack(">H", reader.read(2))
    modified = reader.read(length).replace(b"\xc0\x80", b"\x00")
    units = modified.decode("utf-8", "surrogatepass").encode("utf-16-be", "surrogatepass")
    return units.decode("utf-16-be")


def _read_nullable_utf(reader: io.BytesIO) -> str | None:
    return _read_java_utf(reader) if reader.read(1) == b"\x01" else None


def decode_track(encoded: str) -> dict[str, Any]:
    """Decode lavaplayer's message format: versions 2 (uri) and 3 (+ artworkUrl, isrc)."""
    data = base64.b64decode(encoded)
    (header,) = struct.unpack(">i", data[:4])
    assert header & 0x3FFFFFFF == len(data) - 4, "header size must match the message"
    assert header >> 30 & 1, "the versioned flag must be set"
    reader = io.BytesIO(data[4:-8])
    version = reader.read(1)[0]
    track: dict[str, Any] = {"version": version}
    track["title"] = _read_java_utf(reader)
    track["author"] = _read_java_utf(reader)
    (track["length"],) = struct.unpack(">q", reader.read(8))
    track["identifier"] = _read_java_utf(reader)
    track["isStream"] = reader.read(1) == b"\x01"
    track["uri"] = _read_nullable_utf(reader)
    if version >= 3:
        track["artworkUrl"] = _read_nullable_utf(reader)
        track["isrc"] = _read_nullable_utf(reader)
    track["sourceName"] = _read_java_utf(reader)
    track["sourceDetails"] = reader.read()  # what the source manager appends
    (track["position"],) = struct.unpack(">q", data[-8:])
    return track


def test_the_decoder_reads_a_track_lavaplayer_encoded() -> None:
    # A version-2 track from the README of lavalink's track encoding library (itslukej/encoding).
    real = (
        "QAAAkwIANFNrcmlsbGV4ICYgSGFic3RyYWt0IC0gQ2hpY2tlbiBTb3VwIFtPZmZpY2lhbCBBdWRpb10ABU9XU0xB"
        "AAAAAAADLIAACzIyTVdyV1BWX1FNAAEAK2h0dHBzOi8vd3d3LnlvdXR1YmUuY29tL3dhdGNoP3Y9MjJNV3JXUFZf"
        "UU0AB3lvdXR1YmUAAAAAAAAAAA=="
    )
    assert decode_track(real) == {
        "version": 2,
        "title": "Skrillex & Habstrakt - Chicken Soup [Official Audio]",
        "author": "OWSLA",
        "length": 208000,
        "identifier": "22MWrWPV_QM",
        "isStream": False,
        "uri": "https://www.youtube.com/watch?v=22MWrWPV_QM",
        "sourceName": "youtube",
        "sourceDetails": b"",
        "position": 0,
    }


def assert_realistic_track(track: dict[str, Any], source: str) -> None:
    assert set(track) == {"encoded", "info", "pluginInfo", "userData"}
    info = track["info"]
    assert set(info) == TRACK_INFO_FIELDS
    assert info["sourceName"] == source
    assert info["length"] > 0 and info["position"] == 0
    assert info["isStream"] is False and info["isSeekable"] is True
    assert info["uri"].startswith("https://")
    decoded = decode_track(track["encoded"])
    assert decoded["version"] == 3
    for field in ("title", "author", "length", "identifier", "uri", "artworkUrl", "isrc"):
        assert decoded[field] == info[field], field
    assert decoded["sourceName"] == source


# --- Authorization and headers -----------------------------------------------------------------

PROTECTED_PATHS = [
    "/version",
    "/v4/info",
    "/v4/stats",
    "/v4/loadtracks?identifier=ytsearch:test",
    "/v4/no-such-route",
]


@pytest.mark.parametrize("path", PROTECTED_PATHS)
@pytest.mark.parametrize(("password", "status"), [(None, 401), ("wrong", 403)])
def test_every_route_needs_the_password(
    java_node: Node, path: str, password: str | None, status: int
) -> None:
    response = java_node.get(path, password=password)
    assert response.status_code == status
    assert response.content == b""
    assert response.headers["Lavalink-Api-Version"] == "4"


def test_the_rust_flavour_guards_version_too(rust_node: Node) -> None:
    assert rust_node.get("/version", password=None).status_code == 401
    assert rust_node.get("/version", password="wrong").status_code == 403


def test_metrics_are_scraped_anonymously(java_node: Node) -> None:
    response = java_node.get("/metrics", password=None)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/version", 200),
        ("/v4/info", 200),
        ("/v4/stats", 200),
        ("/v4/loadtracks?identifier=scsearch:x", 200),
        ("/v4/loadtracks", 400),
        ("/v4/no-such-route", 404),
        ("/metrics", 200),
    ],
)
def test_every_answer_carries_the_api_version(java_node: Node, path: str, status: int) -> None:
    response = java_node.get(path)
    assert response.status_code == status
    assert response.headers["Lavalink-Api-Version"] == "4"


# --- /version, /v4/info, /v4/stats -------------------------------------------------------------


def test_java_version_is_plain_text(java_node: Node) -> None:
    response = java_node.get("/version")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == "4.2.2"


def test_rust_version_is_a_json_object(rust_node: Node) -> None:
    response = rust_node.get("/version")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert document["version"] == "4.0.0"
    assert document["jvm"] == "N/A - Rust"


def test_info_has_exactly_lavalinks_fields(java_node: Node, rust_node: Node) -> None:
    java = java_node.get("/v4/info").json()
    rust = rust_node.get("/v4/info").json()
    for info in (java, rust):
        assert set(info) == INFO_FIELDS
        assert set(info["version"]) == {"semver", "major", "minor", "patch", "preRelease", "build"}
        assert set(info["git"]) == {"branch", "commit", "commitTime"}
        assert {"youtube", "soundcloud"} <= set(info["sourceManagers"])
        assert all(set(plugin) == {"name", "version"} for plugin in info["plugins"])
    assert java["version"]["semver"] == "4.2.2"
    assert (java["version"]["major"], java["version"]["minor"]) == (4, 2)
    assert rust["version"]["semver"] == "4.0.0"
    version_strings = ("version", "jvm", "lavaplayer")
    assert {k: v for k, v in java.items() if k not in version_strings} == {
        k: v for k, v in rust.items() if k not in version_strings
    }


def assert_sensible_stats(stats: dict[str, Any], node: Node) -> None:
    assert stats["players"] == 0 and stats["playingPlayers"] == 0
    memory = stats["memory"]
    assert memory["used"] > 0
    assert memory["free"] + memory["used"] == memory["allocated"] <= memory["reservable"]
    cpu = stats["cpu"]
    assert cpu["cores"] >= 1
    assert 0.0 <= cpu["systemLoad"] <= 1.0 and 0.0 <= cpu["lavalinkLoad"] <= 1.0
    since_launch_ms = (time.time() - node.launched_at) * 1000
    assert 0 < stats["uptime"] <= since_launch_ms + 50


def test_java_stats_over_rest_have_no_frame_stats(java_node: Node) -> None:
    stats = java_node.get("/v4/stats").json()
    assert set(stats) == {"players", "playingPlayers", "uptime", "memory", "cpu"}
    assert_sensible_stats(stats, java_node)
    time.sleep(0.05)
    assert java_node.get("/v4/stats").json()["uptime"] > stats["uptime"]


def test_rust_stats_carry_the_hard_coded_frame_stats(rust_node: Node) -> None:
    stats = rust_node.get("/v4/stats").json()
    assert stats["frameStats"] == RUST_FRAME_STATS
    assert_sensible_stats(stats, rust_node)


# --- /v4/loadtracks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "source", "uri_prefix"),
    [
        ("ytsearch:lofi beats", "youtube", "https://www.youtube.com/watch?v="),
        ("ytmsearch:lofi beats", "youtube", "https://music.youtube.com/watch?v="),
        ("scsearch:lofi beats", "soundcloud", "https://soundcloud.com/"),
    ],
)
def test_search_prefixes_pick_the_source(
    java_node: Node, identifier: str, source: str, uri_prefix: str
) -> None:
    response = java_node.get(f"/v4/loadtracks?identifier={identifier}")
    assert response.status_code == 200
    result = response.json()
    assert result["loadType"] == "search"
    assert 3 <= len(result["data"]) <= 20
    for track in result["data"]:
        assert_realistic_track(track, source)
        assert track["info"]["uri"].startswith(uri_prefix)
        assert "lofi beats" in track["info"]["title"]
    identifiers = [track["info"]["identifier"] for track in result["data"]]
    assert len(set(identifiers)) == len(identifiers)


def test_tracks_encode_awkward_text_as_java_does(java_node: Node) -> None:
    query = "Beyoncé — 😀 \x00"
    result = java_node.get("/v4/loadtracks", params={"identifier": f"ytsearch:{query}"}).json()
    (first, *_) = result["data"]
    assert decode_track(first["encoded"])["title"] == first["info"]["title"]
    assert query in first["info"]["title"]


def test_an_http_url_loads_one_track(java_node: Node) -> None:
    url = "https://cdn.example.org/audio/theme.mp3"
    result = java_node.get(f"/v4/loadtracks?identifier={url}").json()
    assert result["loadType"] == "track"
    assert_realistic_track(result["data"], "http")
    assert result["data"]["info"]["identifier"] == url
    # The http source appends its container probe after the source name, as lavaplayer does.
    assert decode_track(result["data"]["encoded"])["sourceDetails"] == b"\x00\x03mp3"


def test_a_youtube_url_loads_that_video(java_node: Node) -> None:
    url = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    result = java_node.get(f"/v4/loadtracks?identifier={url}").json()
    assert result["loadType"] == "track"
    assert_realistic_track(result["data"], "youtube")
    assert result["data"]["info"]["identifier"] == "dQw4w9WgXcQ"


def test_an_unknown_identifier_is_empty(java_node: Node) -> None:
    response = java_node.get("/v4/loadtracks?identifier=no source claims this")
    assert response.status_code == 200
    assert response.json() == {"loadType": "empty", "data": {}}


def test_a_missing_identifier_is_a_bad_request(java_node: Node) -> None:
    before_ms = time.time() * 1000
    response = java_node.get("/v4/loadtracks")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == ERROR_BODY_FIELDS
    assert body["status"] == 400
    assert body["error"] == "Bad Request"
    assert "'identifier'" in body["message"]
    assert body["path"] == "/v4/loadtracks"
    assert before_ms - 1000 <= body["timestamp"] <= time.time() * 1000 + 1000


def test_an_unknown_route_is_not_found(java_node: Node) -> None:
    response = java_node.get("/v4/sessions")
    assert response.status_code == 404
    body = response.json()
    assert set(body) == ERROR_BODY_FIELDS
    assert (body["status"], body["error"], body["path"]) == (404, "Not Found", "/v4/sessions")


def test_trace_is_added_only_when_asked_for(java_node: Node) -> None:
    assert "trace" not in java_node.get("/v4/nowhere").json()
    traced = java_node.get("/v4/nowhere?trace=true").json()
    assert set(traced) == ERROR_BODY_FIELDS | {"trace"}
    assert "NoResourceFoundException" in traced["trace"]


def test_a_failing_source_answers_200_with_load_type_error(failing_node: Node) -> None:
    response = failing_node.get("/v4/loadtracks?identifier=ytsearch:anything")
    assert response.status_code == 200
    result = response.json()
    assert result["loadType"] == "error"
    data = result["data"]
    assert set(data) == {"message", "severity", "cause", "causeStackTrace"}
    assert data["severity"] == "fault"
    assert data["message"] == "Something went wrong while looking up the track."
    assert data["causeStackTrace"].startswith(data["cause"])
    url = failing_node.get("/v4/loadtracks?identifier=https://youtu.be/dQw4w9WgXcQ").json()
    assert url["loadType"] == "error"
    # Only the named source fails.
    other = failing_node.get("/v4/loadtracks?identifier=scsearch:anything").json()
    assert other["loadType"] == "search"


@pytest.mark.parametrize("severity", list(Severity))
@pytest.mark.parametrize("source", ["youtube", "soundcloud"])
def test_each_severity_is_reported_as_configured(source: str, severity: Severity) -> None:
    faults = Faults(failing_sources={"youtube", "soundcloud"}, error_severity=severity)
    prefix = "ytsearch" if source == "youtube" else "scsearch"
    result = load_result(f"{prefix}:anything", faults)
    assert result["loadType"] == "error"
    assert result["data"]["severity"] == severity.value
    assert result["data"]["message"]
    assert re.match(r"^[a-z]+(\.[a-zA-Z0-9]+)+: ", result["data"]["cause"])


def test_a_common_youtube_failure_reads_as_the_real_one() -> None:
    result = load_result("ytsearch:x", Faults(failing_sources={"youtube"}))
    assert result["data"]["message"] == "This video requires login."
    assert result["data"]["cause"] == (
        "com.sedmelluq.discord.lavaplayer.tools.FriendlyException: This video requires login."
    )


# --- /metrics ----------------------------------------------------------------------------------

LAVALINK_GAUGES = {
    "lavalink_players_total",
    "lavalink_playing_players_total",
    "lavalink_uptime_milliseconds",
    "lavalink_memory_free_bytes",
    "lavalink_memory_used_bytes",
    "lavalink_memory_allocated_bytes",
    "lavalink_memory_reservable_bytes",
    "lavalink_cpu_cores",
    "lavalink_cpu_system_load_percentage",
    "lavalink_cpu_lavalink_load_percentage",
}


def scrape(node: Node) -> dict[str, list[Any]]:
    response = node.get("/metrics", password=None)
    assert response.status_code == 200
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def only(samples: dict[str, list[Any]], name: str) -> float:
    (sample,) = samples[name]
    return float(sample.value)


def real_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_metrics_use_lavalinks_names_and_real_process_figures(java_node: Node) -> None:
    samples = scrape(java_node)
    process_names = {
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    }
    assert LAVALINK_GAUGES | process_names <= set(samples)
    levels = {sample.labels["level"] for sample in samples["logback_appender_total"]}
    assert levels == {"trace", "debug", "info", "warn", "error"}
    rss = only(samples, "process_resident_memory_bytes")
    assert rss == pytest.approx(real_rss_bytes(java_node.process.pid), rel=0.25)
    assert abs(only(samples, "process_start_time_seconds") - java_node.launched_at) < 5
    for load in ("lavalink_cpu_system_load_percentage", "lavalink_cpu_lavalink_load_percentage"):
        assert 0.0 <= only(samples, load) <= 1.0
    free = only(samples, "lavalink_memory_free_bytes")
    used = only(samples, "lavalink_memory_used_bytes")
    assert free + used == only(samples, "lavalink_memory_allocated_bytes")
    assert not any("frame" in name for name in samples)  # upstream exports no frame metrics


def test_load_failures_are_counted_as_logged_errors(failing_node: Node) -> None:
    def errors() -> float:
        (error,) = [
            sample
            for sample in scrape(failing_node)["logback_appender_total"]
            if sample.labels["level"] == "error"
        ]
        return float(error.value)

    before = errors()
    failing_node.get("/v4/loadtracks?identifier=ytsearch:again")
    assert errors() == before + 1


# --- WebSocket ---------------------------------------------------------------------------------


def bot_headers(**overrides: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "Authorization": PASSWORD,
        "User-Id": BOT_USER_ID,
        "Client-Name": "rollback-watchdog-tests/1.0",
        **overrides,
    }
    return {name: value for name, value in headers.items() if value is not None}


def handshake_recorder() -> tuple[aiohttp.TraceConfig, list[Any]]:
    """aiohttp hides the upgrade response; its trace hooks see it."""
    responses: list[Any] = []
    trace = aiohttp.TraceConfig()

    async def on_request_end(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
    ) -> None:
        responses.append(params.response)

    trace.on_request_end.append(on_request_end)
    return trace, responses


async def test_websocket_sends_ready_then_stats_at_once(java_node: Node) -> None:
    trace, responses = handshake_recorder()
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        session.ws_connect(f"{java_node.url}/v4/websocket", headers=bot_headers()) as ws,
    ):
        ready = await ws.receive_json(timeout=2)
        stats_arrived = time.monotonic()
        stats = await ws.receive_json(timeout=2)
        (upgrade,) = responses
    assert upgrade.status == 101
    assert upgrade.headers["Session-Resumed"] == "false"
    assert upgrade.headers["Lavalink-Api-Version"] == "4"
    assert set(ready) == {"op", "resumed", "sessionId"}
    assert ready["op"] == "ready" and ready["resumed"] is False
    assert re.fullmatch(r"[a-z0-9]{16}", ready["sessionId"])
    assert time.monotonic() - stats_arrived < 1.0
    assert stats["op"] == "stats"
    assert set(stats) == {"op", "players", "playingPlayers", "uptime", "memory", "cpu"}


async def test_websocket_stats_repeat_at_the_interval(java_node: Node) -> None:
    # java_node runs with --stats-interval 1.
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{java_node.url}/v4/websocket", headers=bot_headers()) as ws,
    ):
        await ws.receive_json(timeout=2)  # ready
        first = await ws.receive_json(timeout=2)
        first_at = time.monotonic()
        second = await ws.receive_json(timeout=3)
        gap = time.monotonic() - first_at
    assert first["op"] == second["op"] == "stats"
    assert 0.7 <= gap <= 2.0
    assert second["uptime"] > first["uptime"]


async def test_rust_websocket_stats_carry_frame_stats(rust_node: Node) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{rust_node.url}/v4/websocket", headers=bot_headers()) as ws,
    ):
        assert (await ws.receive_json(timeout=2))["op"] == "ready"
        stats = await ws.receive_json(timeout=2)
    assert stats["frameStats"] == RUST_FRAME_STATS


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"Authorization": None}, 401),
        ({"Authorization": "wrong"}, 401),
        ({"User-Id": None}, 400),
        ({"User-Id": "0"}, 400),
    ],
)
async def test_websocket_handshake_failures(
    java_node: Node, overrides: dict[str, str | None], status: int
) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as failure:
            await session.ws_connect(
                f"{java_node.url}/v4/websocket", headers=bot_headers(**overrides)
            )
    assert failure.value.status == status


async def test_a_missing_client_name_only_logs_a_warning(java_node: Node) -> None:
    def warnings() -> float:
        samples = scrape(java_node)["logback_appender_total"]
        (warn,) = [sample for sample in samples if sample.labels["level"] == "warn"]
        return float(warn.value)

    before = warnings()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{java_node.url}/v4/websocket", headers=bot_headers(**{"Client-Name": None})
        ) as ws,
    ):
        assert (await ws.receive_json(timeout=2))["op"] == "ready"
    assert warnings() == before + 1
    assert "Please specify a 'Client-Name' header" in java_node.log()


# --- Process lifecycle -------------------------------------------------------------------------


def test_startup_delay_refuses_connections_until_bound(start_node: Any) -> None:
    node = start_node("--startup-delay", "2", wait=False)
    time.sleep(0.7)  # the interpreter is up, the port is not
    assert node.process.poll() is None
    with pytest.raises(httpx.ConnectError):
        node.get("/version")
    node.wait_until_listening()
    assert time.time() - node.launched_at >= 2.0
    assert node.get("/version").text == "4.2.2"
    assert node.get("/v4/stats").json()["uptime"] >= 2000  # uptime counts from process start


def test_fail_at_start_exits_1_without_listening(start_node: Any) -> None:
    node = start_node("--fail-at-start", "--flavour", "java", wait=False)
    assert node.exit_code(timeout=10) == 1
    assert not accepts_connections(node.port)


async def test_exit_after_crashes_with_the_exit_code(start_node: Any) -> None:
    node: Node = start_node("--exit-after", "1.5", "--exit-code", "3")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{node.url}/v4/websocket", headers=bot_headers()) as ws,
    ):
        assert (await ws.receive_json(timeout=2))["op"] == "ready"
        async for _ in ws:  # stats until the node dies
            pass
        # No close frame: the connection is simply gone at once, as when a JVM is killed.
        assert ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
        assert time.time() - node.launched_at < 1.5 + 1.5  # exit-after + interpreter start
    assert await asyncio.to_thread(node.exit_code, 10) == 3
    assert not accepts_connections(node.port)


async def test_sigterm_stops_gracefully_with_exit_0(start_node: Any) -> None:
    node: Node = start_node()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{node.url}/v4/websocket", headers=bot_headers()) as ws,
    ):
        assert (await ws.receive_json(timeout=2))["op"] == "ready"
        os.kill(node.process.pid, signal.SIGTERM)
        async for _ in ws:
            pass
        assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
    assert await asyncio.to_thread(node.exit_code, 10) == 0


def test_latency_delays_rest_answers_but_not_the_scrape(start_node: Any) -> None:
    node: Node = start_node("--latency", "0.6")
    started = time.monotonic()
    assert node.get("/version").status_code == 200
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    assert node.get("/version", password=None).status_code == 401  # every answer, even a 401
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    assert node.get("/metrics", password=None).status_code == 200
    assert time.monotonic() - started < 0.5


# --- Fault injection: flags --------------------------------------------------------------------


def websocket_handshake_headers() -> dict[str, str]:
    """A real upgrade request, sent with httpx so the refused answer's body can be read."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": key,
    }
    return {**bot_headers(), **upgrade}


def assert_injected_error(response: httpx.Response, status: int, path: str) -> None:
    assert response.status_code == status
    assert response.headers["Lavalink-Api-Version"] == "4"
    body = response.json()
    assert set(body) == ERROR_BODY_FIELDS
    assert body["status"] == status
    assert body["error"] == {500: "Internal Server Error", 503: "Service Unavailable"}[status]
    assert body["path"] == path
    assert body["message"]


def test_fail_endpoints_answer_springs_error_body_after_authorization(start_node: Any) -> None:
    node: Node = start_node("--fail-endpoints", "/v4/info,/version", "--fail-status", "503")
    assert_injected_error(node.get("/v4/info"), 503, "/v4/info")
    assert_injected_error(node.get("/version"), 503, "/version")
    # The authorization interceptor runs before the handler that fails.
    assert node.get("/v4/info", password=None).status_code == 401
    denied = node.get("/v4/info", password="wrong")
    assert (denied.status_code, denied.content) == (403, b"")
    traced = node.get("/v4/info?trace=true").json()
    assert "org.springframework.web.server.ResponseStatusException" in traced["trace"]
    # Only the named endpoints fail.
    assert node.get("/v4/stats").status_code == 200
    assert node.get("/v4/loadtracks?identifier=ytsearch:x").json()["loadType"] == "search"


def test_a_failing_scrape_is_an_anonymous_500(start_node: Any) -> None:
    node: Node = start_node("--fail-endpoints", "/metrics,/v4/loadtracks")
    assert_injected_error(node.get("/metrics", password=None), 500, "/metrics")
    response = node.get("/v4/loadtracks?identifier=ytsearch:x&trace=true")
    assert response.status_code == 500
    assert response.json()["trace"].startswith("java.lang.RuntimeException: ")
    # A 500 is an uncaught exception: logged at ERROR, as the counter shows once /metrics works.
    node.set_faults({"fail_endpoints": []})
    (errors,) = [s for s in scrape(node)["logback_appender_total"] if s.labels["level"] == "error"]
    assert errors.value == 2


async def test_refuse_websocket_fails_the_handshake_with_500(start_node: Any) -> None:
    node: Node = start_node("--refuse-websocket")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{node.url}/v4/websocket", headers=bot_headers())
        assert refused.value.status == 500
        # The handshake interceptor still runs first.
        with pytest.raises(aiohttp.WSServerHandshakeError) as unauthorized:
            await session.ws_connect(
                f"{node.url}/v4/websocket", headers=bot_headers(Authorization="wrong")
            )
        assert unauthorized.value.status == 401
    assert node.get("/version").status_code == 200  # REST is unaffected


def test_a_refused_handshake_answers_springs_error_body(start_node: Any) -> None:
    node: Node = start_node("--refuse-websocket")
    url = f"{node.url}/v4/websocket?trace=true"
    response = httpx.get(url, headers=websocket_handshake_headers(), timeout=10.0)
    assert response.status_code == 500
    body = response.json()
    assert set(body) == ERROR_BODY_FIELDS | {"trace"}
    assert (body["error"], body["path"]) == ("Internal Server Error", "/v4/websocket")
    assert body["message"].startswith("Uncaught failure for request ")
    assert body["trace"].startswith(
        "org.springframework.web.socket.server.HandshakeFailureException: "
    )


def scraped_rss(node: Node) -> float:
    return only(scrape(node), "process_resident_memory_bytes")


def test_memory_growth_raises_the_real_resident_memory(start_node: Any) -> None:
    node: Node = start_node("--memory-growth", "50M")
    before = scrape(node)
    stats_before = node.get("/v4/stats").json()["memory"]["used"]
    time.sleep(1.6)  # 80 MiB at 50 MiB/s, give or take the 0.5 s tick at either end
    after = scrape(node)
    grown = only(after, "process_resident_memory_bytes") - only(
        before, "process_resident_memory_bytes"
    )
    assert 50 * MIB <= grown <= 130 * MIB
    assert only(after, "process_resident_memory_bytes") == pytest.approx(
        real_rss_bytes(node.process.pid), rel=0.1
    )
    # RSS plays the heap, so the Lavalink gauges and /v4/stats see the leak too.
    used_growth = only(after, "lavalink_memory_used_bytes") - only(
        before, "lavalink_memory_used_bytes"
    )
    assert used_growth >= 50 * MIB
    assert node.get("/v4/stats").json()["memory"]["used"] >= stats_before + 50 * MIB
    assert node.faults()["memory_grown_bytes"] >= 50 * MIB


def test_memory_growth_stops_at_the_cap(start_node: Any) -> None:
    cap = 100 * MIB
    node: Node = start_node("--memory-growth", str(200 * MIB), "--memory-cap", "100M")
    assert node.faults()["memory_cap"] == cap
    deadline = time.monotonic() + 2.0
    peak = 0.0
    while time.monotonic() < deadline:
        peak = max(peak, float(real_rss_bytes(node.process.pid)))
        time.sleep(0.1)
    assert cap - 10 * MIB <= peak <= cap + 4 * MIB  # reached it, never went past
    assert scraped_rss(node) <= cap + 4 * MIB


def test_flags_parse_byte_sizes_and_share_the_endpoints_checks() -> None:
    options = parse_options(["--memory-growth", "64M", "--memory-cap", "2g"])
    assert (options.memory_growth, options.memory_cap) == (64 * MIB, 2 << 30)
    options = parse_options(["--fail-endpoints", "/v4/info,/metrics", "--fail-status", "502"])
    assert options.fail_endpoints == {"/v4/info", "/metrics"}
    assert options.fail_status == 502
    assert parse_options([]).memory_cap == 3 << 30


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--fail-status", "404"], "500..599"),
        (["--fail-endpoints", "/v4/websocket"], "unknown path(s) /v4/websocket"),
        (["--fail-endpoints", "/sim/faults"], "unknown path(s) /sim/faults"),
        (["--memory-growth", "-5"], "number of bytes"),
        (["--memory-growth", "12Q"], "number of bytes"),
        (["--memory-cap", "lots"], "number of bytes"),
        (["--fail-sources", "myspace"], "unknown source(s) myspace"),
        (["--latency", "-1"], ">= 0"),
    ],
)
def test_bad_fault_flags_are_refused_with_the_reason(flags: list[str], complaint: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "watchdog_lab.lavalink", "--port", str(free_port()), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2
    assert flags[0] in run.stderr
    assert complaint in run.stderr


# --- Fault injection: the control endpoint -----------------------------------------------------

HEALTHY = {
    "failing_sources": [],
    "error_severity": "common",
    "latency": 0.0,
    "latency_share": 1.0,
    "fail_endpoints": [],
    "fail_status": 500,
    "refuse_websocket": False,
    "memory_growth": 0,
    "memory_cap": 3 << 30,
    "crash": None,
    "memory_grown_bytes": 0,
}


@pytest.fixture
def node(start_node: Any) -> Node:
    """A node of its own: live changes must not leak into other tests."""
    started: Node = start_node()
    return started


def test_the_control_endpoint_reports_the_start_flags(start_node: Any) -> None:
    flags = ("--fail-sources", "youtube", "--error-severity", "fault", "--latency", "0.8")
    node: Node = start_node(*flags, "--fail-endpoints", "/v4/stats", "--refuse-websocket")
    started = time.monotonic()
    faults = node.faults()
    assert time.monotonic() - started < 0.5  # not delayed by the injected latency
    assert faults == {
        **HEALTHY,
        "failing_sources": ["youtube"],
        "error_severity": "fault",
        "latency": 0.8,
        "fail_endpoints": ["/v4/stats"],
        "refuse_websocket": True,
    }


def test_a_healthy_node_reports_no_faults(node: Node) -> None:
    assert node.faults() == HEALTHY


def test_latency_changes_live_and_clears(node: Node) -> None:
    def answer_seconds() -> float:
        started = time.monotonic()
        assert node.get("/version").status_code == 200
        return time.monotonic() - started

    assert answer_seconds() < 0.4
    assert node.set_faults({"latency": 0.6})["latency"] == 0.6
    assert answer_seconds() >= 0.6
    started = time.monotonic()
    assert node.set_faults({"clear": True}) == HEALTHY  # the control endpoint is never delayed
    assert time.monotonic() - started < 0.4
    assert answer_seconds() < 0.4


def test_a_latency_tail_slows_only_its_share(node: Node) -> None:
    # 0.6 s, not less: a busy machine (CI's 2 cores) can delay a fast answer by a few hundred
    # milliseconds, and one counted slow that way failed this test once
    node.set_faults({"latency": 0.6, "latency_share": 0.3})
    slow = 0
    for _ in range(40):
        started = time.monotonic()
        assert node.get("/version").status_code == 200
        slow += time.monotonic() - started >= 0.6
    # 30 % of 40: 12 expected; outside [2, 24] has a chance of 1 in 30 000 (binomial tails)
    assert 2 <= slow <= 24, slow


def test_failing_sources_change_live_and_clear(node: Node) -> None:
    def load_type(identifier: str) -> str:
        result = node.get("/v4/loadtracks", params={"identifier": identifier}).json()
        return str(result["loadType"])

    node.set_faults({"failing_sources": ["youtube", "soundcloud"], "error_severity": "fault"})
    for identifier in ("ytsearch:x", "scsearch:x"):
        result = node.get("/v4/loadtracks", params={"identifier": identifier}).json()
        assert result["loadType"] == "error"
        assert result["data"]["severity"] == "fault"
    node.set_faults({"error_severity": "suspicious", "failing_sources": ["soundcloud"]})
    assert load_type("ytsearch:x") == "search"
    suspicious = node.get("/v4/loadtracks?identifier=scsearch:x").json()
    assert suspicious["data"]["severity"] == "suspicious"
    node.set_faults({"clear": True})
    assert load_type("scsearch:x") == "search"


def test_fail_endpoints_change_live_and_clear(node: Node) -> None:
    node.set_faults({"fail_endpoints": ["/v4/info"], "fail_status": 503})
    assert_injected_error(node.get("/v4/info"), 503, "/v4/info")
    assert node.get("/v4/stats").status_code == 200
    assert node.get(CONTROL).status_code == 200  # never failed
    node.set_faults({"fail_status": 500})
    assert_injected_error(node.get("/v4/info"), 500, "/v4/info")
    node.set_faults({"clear": True})
    assert node.get("/v4/info").status_code == 200


async def test_websocket_refusal_changes_live_and_clears(node: Node) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{node.url}/v4/websocket", headers=bot_headers()) as open_ws:
            assert (await open_ws.receive_json(timeout=2))["op"] == "ready"
            node.set_faults({"refuse_websocket": True})
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{node.url}/v4/websocket", headers=bot_headers())
            assert refused.value.status == 500
            assert not open_ws.closed  # sockets already open stay open
        node.set_faults({"clear": True})
        async with session.ws_connect(f"{node.url}/v4/websocket", headers=bot_headers()) as ws:
            assert (await ws.receive_json(timeout=2))["op"] == "ready"


def test_memory_growth_changes_live_and_clears(node: Node) -> None:
    before = scraped_rss(node)
    node.set_faults({"memory_growth": 50_000_000})
    time.sleep(1.6)
    stopped = node.set_faults({"memory_growth": 0})
    grown = scraped_rss(node) - before
    assert 50_000_000 <= grown <= 130_000_000  # 1.6 s at 50 MB/s, and up to a tick more
    assert stopped["memory_grown_bytes"] >= 50_000_000
    time.sleep(0.8)  # stopped: no further tick adds memory
    assert node.faults()["memory_grown_bytes"] == stopped["memory_grown_bytes"]
    assert node.set_faults({"clear": True})["memory_grown_bytes"] == 0


async def test_a_crash_ordered_now_exits_with_its_code(node: Node) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{node.url}/v4/websocket", headers=bot_headers()) as ws,
    ):
        assert (await ws.receive_json(timeout=2))["op"] == "ready"
        ordered = node.set_faults({"crash": {"exit_code": 4}})  # the order is still answered
        assert ordered["crash"] == {"after": 0.0, "exit_code": 4}
        async for _ in ws:
            pass
        assert ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
    assert await asyncio.to_thread(node.exit_code, 10) == 4
    assert not accepts_connections(node.port)


def test_a_crash_ordered_after_n_seconds_exits_then(node: Node) -> None:
    ordered_at = time.monotonic()
    assert node.set_faults({"crash": {"after": 1.5, "exit_code": 3}})["crash"]["after"] > 1.4
    time.sleep(0.7)
    pending = node.faults()["crash"]
    assert pending["exit_code"] == 3
    assert 0.5 <= pending["after"] <= 0.9
    assert node.exit_code(timeout=10) == 3
    assert 1.5 <= time.monotonic() - ordered_at < 3.0


def test_a_later_order_replaces_a_pending_crash(node: Node) -> None:
    node.set_faults({"crash": {"after": 0.5}})
    node.set_faults({"crash": {"after": 1.5, "exit_code": 7}})
    time.sleep(1.0)
    assert node.process.poll() is None  # the first order no longer stands
    assert node.exit_code(timeout=10) == 7


def test_clear_cancels_the_crash_of_exit_after(start_node: Any) -> None:
    node: Node = start_node("--exit-after", "1.5", "--exit-code", "3")
    assert node.faults()["crash"]["exit_code"] == 3
    assert node.set_faults({"clear": True})["crash"] is None
    time.sleep(2.0)
    assert node.process.poll() is None
    assert node.get("/version").status_code == 200
    node.set_faults({"crash": None})  # cancelling nothing is fine
    assert node.process.poll() is None


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(("password", "status"), [(None, 401), ("wrong", 403)])
def test_the_control_endpoint_needs_the_password(
    node: Node, method: str, password: str | None, status: int
) -> None:
    if method == "GET":
        response = node.get(CONTROL, password=password)
    else:
        response = node.post(CONTROL, {"latency": 5}, password=password)
    assert response.status_code == status
    assert response.content == b""
    assert node.faults() == HEALTHY


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"latency": -1}, "latency"),
        ({"latency": "0.5"}, "latency"),
        ({"latency": True}, "latency"),
        ({"latency_share": 0}, "latency_share"),
        ({"latency_share": 1.5}, "latency_share"),
        ({"failing_sources": ["youtube", "myspace"]}, "failing_sources"),
        ({"failing_sources": "youtube"}, "failing_sources"),
        ({"error_severity": "fatal"}, "error_severity"),
        ({"fail_endpoints": ["/v4/websocket"]}, "fail_endpoints"),
        ({"fail_endpoints": ["/sim/faults"]}, "fail_endpoints"),
        ({"fail_status": 404}, "fail_status"),
        ({"refuse_websocket": "yes"}, "refuse_websocket"),
        ({"memory_growth": -5}, "memory_growth"),
        ({"memory_cap": 1.5}, "memory_cap"),
        ({"crash": 3}, "crash"),
        ({"crash": {"after": -1}}, "crash.after"),
        ({"crash": {"exit_code": 256}}, "crash.exit_code"),
        ({"crash": {"in": 2}}, "crash.in"),
        ({"clear": "yes"}, "clear"),
        ({"memory_grown_bytes": 0}, "memory_grown_bytes"),
        # One bad key spoils the whole body: the good one must not apply either.
        ({"latency": 0.5, "colour": "red"}, "colour"),
        ({"latency": 0.5, "fail_status": 200}, "fail_status"),
        ({"clear": True, "crash": {"after": 1, "exit_code": -1}}, "crash.exit_code"),
        ([], "body"),
    ],
)
def test_bad_control_input_is_400_naming_the_field_and_changes_nothing(
    node: Node, body: Any, field: str
) -> None:
    node.set_faults({"failing_sources": ["youtube"]})
    before = node.faults()
    response = node.post(CONTROL, body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["status"] == 400 and answer["error"] == "Bad Request"
    assert answer["field"] == field
    assert answer["message"].startswith(f"{field}: ")
    assert answer["path"] == CONTROL
    assert node.faults() == before


def test_a_body_that_is_not_json_is_400(node: Node) -> None:
    response = node.post(CONTROL, content=b"latency=0.5")
    assert response.status_code == 400
    assert response.json()["field"] == "body"
    assert node.faults() == HEALTHY


def test_clear_resets_first_then_applies_the_rest(node: Node) -> None:
    node.set_faults({"latency": 0.3, "fail_endpoints": ["/v4/info"], "memory_cap": 1 << 30})
    assert node.set_faults({"clear": True, "refuse_websocket": True}) == {
        **HEALTHY,
        "refuse_websocket": True,
        "memory_cap": 1 << 30,  # a safety limit, not a fault: clear keeps it
    }

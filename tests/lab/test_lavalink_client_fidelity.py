"""A real Lavalink client library, lavalink.py 5.x from PyPI, works against the simulator as it
would against Lavalink: its REST helpers, its WebSocket transport (`ready`, `stats`) and its
error handling all run unchanged against simulator processes.

No Discord library is needed: lavalink.py only wants the bot's user id. Every node is a real
`python -m watchdog_lab.lavalink` subprocess, as in test_lavalink_sim.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import lavalink
import pytest
from lavalink.errors import AuthenticationError, RequestError
from lavalink.events import Event, NodeDisconnectedEvent, NodeReadyEvent
from lavalink.server import LoadType
from lavalink.server import Severity as LibrarySeverity

from tests.lab.test_lavalink_sim import BOT_USER_ID, PASSWORD, Node, launch

STATS_INTERVAL = "0.5"
EVENT_TIMEOUT = 5.0
EventT = TypeVar("EventT", bound=Event)


# --- Nodes and clients -------------------------------------------------------------------------


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start simulator nodes inside one test; every one is stopped afterwards."""
    started: list[Node] = []

    def start(*flags: str) -> Node:
        node = launch(tmp_path, "--stats-interval", STATS_INTERVAL, *flags)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="module", params=["java", "rust"])
def sim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One healthy node per flavour, shared by the tests that change nothing on it."""
    node = launch(
        tmp_path_factory.mktemp("lavalink"),
        "--flavour",
        request.param,
        "--stats-interval",
        STATS_INTERVAL,
    )
    yield node
    node.stop()


def flavour_of(node: Node) -> str:
    command = node.process.args
    assert isinstance(command, list)
    return "rust" if "rust" in command else "java"


@pytest.fixture
async def client() -> AsyncIterator[lavalink.Client[Any]]:
    # Made inside the running loop: the library opens its aiohttp session in the constructor.
    library_client: lavalink.Client[Any] = lavalink.Client(int(BOT_USER_ID))
    yield library_client
    await library_client.close()  # destroys every node's transport, closes the session


def next_event(client: lavalink.Client[Any], event_type: type[EventT]) -> asyncio.Queue[EventT]:
    """A queue that receives every `event_type` the library dispatches from now on."""
    events: asyncio.Queue[EventT] = asyncio.Queue()

    async def hook(event: EventT) -> None:
        await events.put(event)

    client.add_event_hook(hook, event=event_type)
    return events


async def connected(
    client: lavalink.Client[Any], sim: Node, *, password: str = PASSWORD
) -> tuple[lavalink.Node, NodeReadyEvent]:
    ready = next_event(client, NodeReadyEvent)
    node = client.add_node("127.0.0.1", sim.port, password, "eu", "sim")
    event = await asyncio.wait_for(ready.get(), EVENT_TIMEOUT)
    return node, event


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(int(EVENT_TIMEOUT / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def set_faults(sim: Node, body: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sim.url}/sim/faults", json=body, headers={"Authorization": PASSWORD}
        ) as response,
    ):
        assert response.status == 200, await response.text()


# --- WebSocket: ready and stats ----------------------------------------------------------------


async def test_the_library_connects_and_takes_the_session_id(
    client: lavalink.Client[Any], sim: Node
) -> None:
    node, ready = await connected(client, sim)
    assert ready.node is node
    assert re.fullmatch(r"[a-z0-9]{16}", ready.session_id)
    assert ready.resumed is False
    assert node.session_id == ready.session_id
    assert node.available
    # The library's handshake headers reached the node: Client-Name as NAME/VERSION.
    await eventually(
        lambda: f"established from Lavalink.py/{lavalink.__version__}" in sim.log(),
        "the node to log the client's name",
    )


async def test_stats_ops_update_the_librarys_node_stats(
    client: lavalink.Client[Any], sim: Node
) -> None:
    node, _ = await connected(client, sim)
    await eventually(lambda: not node.stats.is_fake, "the first stats op")
    first = node.stats
    await eventually(lambda: node.stats is not first, "the next stats op")  # every 0.5 s
    stats = node.stats
    assert stats.uptime > first.uptime > 0
    assert (stats.players, stats.playing_players) == (0, 0)
    assert stats.memory_used > 0
    assert stats.memory_free + stats.memory_used == stats.memory_allocated
    assert stats.memory_allocated <= stats.memory_reservable == 1 << 30
    assert stats.cpu_cores >= 1
    assert 0.0 <= stats.system_load <= 1.0 and 0.0 <= stats.lavalink_load <= 1.0
    frames = (stats.frames_sent, stats.frames_nulled, stats.frames_deficit)
    if flavour_of(sim) == "java":
        # No player has a minute of audio: Lavalink leaves frameStats out, the library reads 0.
        assert frames == (0, 0, 0)
        assert stats.penalty.total == pytest.approx(stats.penalty.cpu_penalty)
    else:
        # lavalink-rust's hard-coded frameStats read as real frame loss: a genuine difference,
        # and it costs the node load-balancing penalty in this library.
        assert frames == (1000, 5, 2)
        assert stats.penalty.null_frame_penalty > 0 and stats.penalty.deficit_frame_penalty > 0


# --- REST --------------------------------------------------------------------------------------


async def test_rest_helpers_read_info_stats_and_version(
    client: lavalink.Client[Any], sim: Node
) -> None:
    node = client.add_node("127.0.0.1", sim.port, PASSWORD, "eu", "sim", connect=False)
    info = await node.get_info()
    stats = await node.get_stats()
    version = await node.get_version()
    assert await node.get_rest_latency() > 0  # -1 would mean the request failed
    assert {"youtube", "soundcloud"} <= set(info["sourceManagers"])
    assert stats["memory"]["used"] > 0
    if flavour_of(sim) == "java":
        assert info["version"]["semver"] == version == "4.2.2"
        assert "frameStats" not in stats
    else:
        # get_version() returns the body as text: against lavalink-rust that text is its JSON
        # object, not a version. A bot comparing versions sees the difference; nothing breaks.
        assert json.loads(version)["version"] == info["version"]["semver"] == "4.0.0"
        assert stats["frameStats"] == {"sent": 1000, "nulled": 5, "deficit": 2}


async def test_a_search_loads_tracks_the_library_decodes(
    client: lavalink.Client[Any], sim: Node
) -> None:
    client.add_node("127.0.0.1", sim.port, PASSWORD, "eu", "sim", connect=False)
    result = await client.get_tracks("ytsearch:lofi beats")
    assert result.load_type is LoadType.SEARCH
    assert result.error is None
    assert len(result.tracks) == 5
    for track in result.tracks:
        assert track.source_name == "youtube"
        assert "lofi beats" in track.title
        assert track.duration > 0 and not track.is_stream and track.is_seekable
        assert track.uri.startswith("https://www.youtube.com/watch?v=")
        # The library's own lavaplayer decoder reads the encoded track back.
        assert track.track is not None
        decoded = lavalink.decode_track(track.track)
        assert decoded.extra["encoder_version"] == 3
        for attribute in ("title", "author", "duration", "identifier", "uri", "artwork_url"):
            assert getattr(decoded, attribute) == getattr(track, attribute), attribute


async def test_track_playlist_and_empty_results(client: lavalink.Client[Any], sim: Node) -> None:
    client.add_node("127.0.0.1", sim.port, PASSWORD, "eu", "sim", connect=False)
    single = await client.get_tracks("https://cdn.example.org/audio/theme.mp3")
    assert single.load_type is LoadType.TRACK
    (track,) = single.tracks
    assert track.source_name == "http"
    assert track.track is not None
    # The http source appends its container probe; the library's http decoder reads it.
    assert lavalink.decode_track(track.track).extra["source_specific"] == {"probe_info": "mp3"}

    playlist = await client.get_tracks("https://www.youtube.com/watch?v=dQw4w9WgXcQ&list=PL1")
    assert playlist.load_type is LoadType.PLAYLIST
    assert playlist.playlist_info.name
    assert playlist.selected_track is playlist.tracks[0]
    assert playlist.tracks[0].identifier == "dQw4w9WgXcQ"

    empty = await client.get_tracks("nothing claims this")
    assert empty.load_type is LoadType.EMPTY
    assert list(empty.tracks) == []


async def test_a_failing_source_is_a_load_result_error(
    client: lavalink.Client[Any], start_sim: Callable[..., Node]
) -> None:
    sim = start_sim("--fail-sources", "youtube", "--error-severity", "suspicious")
    client.add_node("127.0.0.1", sim.port, PASSWORD, "eu", "sim", connect=False)
    result = await client.get_tracks("ytsearch:anything")
    assert result.load_type is LoadType.ERROR
    assert result.tracks == []
    error = result.error
    assert error is not None
    assert error.severity is LibrarySeverity.SUSPICIOUS
    assert error.message == "Loading information for a YouTube track failed."
    assert error.cause.startswith("java.io.IOException: ")
    assert error.cause_stacktrace.startswith(error.cause)

    await set_faults(sim, {"error_severity": "fault"})  # the library sees the live change
    fault = await client.get_tracks("https://youtu.be/dQw4w9WgXcQ")
    assert fault.error is not None
    assert fault.error.severity is LibrarySeverity.FAULT
    assert (await client.get_tracks("scsearch:anything")).load_type is LoadType.SEARCH


async def test_an_injected_5xx_is_a_request_error_with_springs_fields(
    client: lavalink.Client[Any], start_sim: Callable[..., Node]
) -> None:
    sim = start_sim("--fail-endpoints", "/v4/info,/v4/loadtracks", "--fail-status", "503")
    node = client.add_node("127.0.0.1", sim.port, PASSWORD, "eu", "sim", connect=False)
    client.set_request_tracebacks(True)  # ?trace=true, as the library sends it
    with pytest.raises(RequestError) as failed:
        await node.get_info()
    # RequestError reads timestamp, error, message, path and trace from the body: a body
    # without them would surface as a ClientError (KeyError) instead.
    assert failed.value.status == 503
    assert failed.value.error == "Service Unavailable"
    assert failed.value.path == "/v4/info"
    assert failed.value.message
    assert failed.value.trace is not None and "ResponseStatusException" in failed.value.trace
    with pytest.raises(RequestError) as load_failed:
        await client.get_tracks("ytsearch:anything")
    assert load_failed.value.params["identifier"] == "ytsearch:anything"
    assert isinstance(await node.get_stats(), dict)  # only the named endpoints fail


# --- Failures the library must see as it would against Lavalink --------------------------------


async def test_a_wrong_password_is_an_authentication_failure(
    client: lavalink.Client[Any], sim: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lavalink")
    node = client.add_node("127.0.0.1", sim.port, "wrong", "eu", "sim")
    # The handshake answers 401: the library logs it and, as designed, never retries.
    await eventually(lambda: "Authentication failed" in caplog.text, "the library to see the 401")
    handshakes_refused = sim.log().count("Authentication failed from")
    await asyncio.sleep(1.5)  # the library's first backoff is 1 s: a retry would show by now
    assert sim.log().count("Authentication failed from") == handshakes_refused
    assert not node.available and node.session_id is None
    with pytest.raises(AuthenticationError):  # REST: 403 with the wrong password
        await node.get_version()
    with pytest.raises(AuthenticationError):
        await client.get_tracks("ytsearch:anything")
    assert await node.get_rest_latency() == -1


async def test_a_refused_websocket_is_reported_and_rest_still_works(
    client: lavalink.Client[Any], start_sim: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lavalink")
    sim = start_sim("--refuse-websocket")
    node = client.add_node("127.0.0.1", sim.port, PASSWORD, "eu", "sim")
    await eventually(
        lambda: "Received code '500' (expected '101')" in caplog.text,
        "the library to see the refused handshake",
    )
    assert not node.available and node.session_id is None
    assert await node.get_version() == "4.2.2"


async def test_a_crash_disconnects_the_library(
    client: lavalink.Client[Any], start_sim: Callable[..., Node]
) -> None:
    sim = start_sim()
    node, _ = await connected(client, sim)
    disconnected = next_event(client, NodeDisconnectedEvent)
    await set_faults(sim, {"crash": {"exit_code": 3}})
    event = await asyncio.wait_for(disconnected.get(), EVENT_TIMEOUT)
    assert event.node is node
    # Dropped without a close frame, as when a JVM dies: the library sees an abnormal closure.
    assert event.code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
    assert not node.available
    assert await asyncio.to_thread(sim.exit_code, 10) == 3

"""The agent audio socket (``/sessions/{id}/audio``) end to end, through a real uvicorn on 127.0.0.1.

The server runs in the test's event loop on a socket bound to a free loopback port, and the agent
side is the ``websockets`` client, so the handshake, close codes and message framing are the real
ones. Most tests drive the fake session of tests/test_server_http.py (exact inputs, instant
playback events); the last one drives a real :class:`~streaming.session.AvatarSession` with
espeak-ng speech, including ``clear`` mid-utterance.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emote.server import tts
from emote.server.app import create_app
from emote.server.config import ServerConfig
from emote.server.sessions import ManagedSession
from tests.server.test_server_http import Fakes, FakeSession, fake_app


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yields the ws:// base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # clients may connect at once: they wait in the backlog until uvicorn accepts
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, ws="websockets-sansio", lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
        await app.state.emote.aclose()


@asynccontextmanager
async def fake_server(tmp_path: Path) -> AsyncIterator[tuple[str, ManagedSession, FakeSession]]:
    fakes = Fakes()
    app = fake_app(tmp_path, fakes)
    async with serving(app) as url:
        managed = await app.state.emote.manager.create_session()
        yield f"{url}/sessions/{managed.id}/audio", managed, fakes.sessions[0]


async def receive_json(ws: ClientConnection, timeout_s: float = 2.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), timeout_s)
    assert isinstance(message, str), message
    return json.loads(message)


async def start(ws: ClientConnection, sample_rate: int = 16000) -> None:
    await ws.send(json.dumps({"type": "start", "sample_rate": sample_rate}))
    assert (await receive_json(ws))["type"] == "started"


def pcm16(samples: np.ndarray) -> bytes:
    return np.asarray(samples, "<i2").tobytes()


def tone(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3000, 3000, int(seconds * rate)).astype(np.int16)


@pytest.mark.asyncio
async def test_unknown_session_is_refused_with_404(tmp_path: Path) -> None:
    async with serving(fake_app(tmp_path, Fakes())) as url:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{url}/sessions/nope/audio"):
                pass
        assert refused.value.response.status_code == 404
        assert "nope" in json.loads(refused.value.response.body or b"{}")["error"]


@pytest.mark.asyncio
async def test_audio_before_start_closes_with_1003(tmp_path: Path) -> None:
    async with fake_server(tmp_path) as (url, managed, session), connect(url) as ws:
        await ws.send(pcm16(tone(0.1)))
        error = await receive_json(ws)
        assert error["type"] == "error" and "start" in error["error"]
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 2.0)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
        assert session.pushed == [] and not managed.agent_connected


@pytest.mark.asyncio
@pytest.mark.parametrize(("first", "words"), [
    ("not json", ["JSON"]),
    ("[" * 50_000 + "]" * 50_000, ["JSON"]),
    (json.dumps({"type": "hello"}), ['"start"']),
    (json.dumps({"type": "start"}), ["'sample_rate'", "None"]),
    (json.dumps({"type": "start", "sample_rate": 1000}), ["'sample_rate'", "8000", "48000"]),
    (json.dumps({"type": "start", "sample_rate": "16000"}), ["'sample_rate'"]),
])
async def test_a_bad_start_message_closes_with_1008(tmp_path: Path, first: str, words: list[str]) -> None:
    async with fake_server(tmp_path) as (url, _, _), connect(url) as ws:
        await ws.send(first)
        error = await receive_json(ws)
        assert error["type"] == "error" and all(w in error["error"] for w in words), error
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 2.0)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@pytest.mark.asyncio
async def test_pushed_audio_reaches_the_session_and_playback_events_come_back(tmp_path: Path) -> None:
    async with fake_server(tmp_path) as (url, managed, session), connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        assert await receive_json(ws) == {"type": "started", "session_id": managed.id, "sample_rate": 16000}
        assert managed.agent_connected
        chunks = [tone(0.1, seed=k) for k in range(3)]
        for chunk in chunks:
            await ws.send(pcm16(chunk))
        await ws.send(b"\x01\x02\x03")  # an odd byte count: answered, ignored, the stream goes on
        error = await receive_json(ws)
        assert error["type"] == "error" and "odd" in error["error"]
        await ws.send(json.dumps({"type": "end_of_speech"}))
        assert await receive_json(ws) == {"type": "playback_started", "segment_id": 1}
        assert await receive_json(ws) == {"type": "playback_finished", "segment_id": 1, "position_s": 0.3,
                                          "interrupted": False}
        np.testing.assert_array_equal(session.samples_of(1), np.concatenate(chunks))
        assert {rate for _, rate, _ in session.pushed} == {16000}

        await ws.send(pcm16(tone(0.05)))  # the next audio opens the next segment
        await ws.send(json.dumps({"type": "end_of_speech"}))
        assert await receive_json(ws) == {"type": "playback_started", "segment_id": 2}
        assert (await receive_json(ws))["segment_id"] == 2
        await ws.send(json.dumps({"type": "pause"}))
        assert "unknown message type 'pause'" in (await receive_json(ws))["error"]


@pytest.mark.asyncio
async def test_clear_mid_utterance_drops_what_has_not_played(tmp_path: Path) -> None:
    async with fake_server(tmp_path) as (url, _, session), connect(url) as ws:
        await start(ws)
        session.allow(1)  # the session takes one chunk, then holds (it is "full")
        chunks = [tone(0.1, seed=k) for k in range(5)]
        for chunk in chunks:
            await ws.send(pcm16(chunk))
        assert await receive_json(ws) == {"type": "playback_started", "segment_id": 1}
        await asyncio.wait_for(session.waiting.wait(), 2.0)
        await ws.send(json.dumps({"type": "clear"}))
        assert await receive_json(ws) == {"type": "playback_finished", "segment_id": 1, "position_s": 0.0,
                                          "interrupted": True}
        session.allow()
        after = tone(0.2, seed=9)
        await ws.send(pcm16(after))
        await ws.send(json.dumps({"type": "end_of_speech"}))
        assert await receive_json(ws) == {"type": "playback_started", "segment_id": 2}
        assert await receive_json(ws) == {"type": "playback_finished", "segment_id": 2, "position_s": 0.2,
                                          "interrupted": False}
        # Only the chunk the session had taken and the audio after the clear were pushed.
        np.testing.assert_array_equal(session.samples_of(1), chunks[0])
        np.testing.assert_array_equal(session.samples_of(2), after)
        assert session.calls.count("clear") == 1


async def clear_via(how: str, ws: ClientConnection, http_base: str, session_id: str) -> None:
    if how == "socket":
        await ws.send(json.dumps({"type": "clear"}))
    else:
        import httpx

        async with httpx.AsyncClient(base_url=http_base) as http:
            assert (await http.post(f"/sessions/{session_id}/clear")).status_code == 204


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["socket", "http"])
async def test_clear_behind_30_s_of_audio_acts_at_once_and_nothing_cancelled_plays_later(
    tmp_path: Path, how: str
) -> None:
    fakes = Fakes()
    app = fake_app(tmp_path, fakes)
    async with serving(app) as url:
        managed = await app.state.emote.manager.create_session()
        session = fakes.sessions[0]
        session.allow(200)  # the session takes 20 s of the 30 s, then holds
        async with connect(f"{url}/sessions/{managed.id}/audio") as ws:
            await start(ws)
            chunks = [tone(0.1, seed=k) for k in range(300)]
            for chunk in chunks:  # 30 s at once, much faster than real time
                await ws.send(pcm16(chunk))
            assert await receive_json(ws) == {"type": "playback_started", "segment_id": 1}
            await asyncio.wait_for(session.waiting.wait(), 2.0)
            loop = asyncio.get_running_loop()
            cleared_at = loop.time()
            await clear_via(how, ws, url.replace("ws://", "http://"), managed.id)
            finished = await receive_json(ws, 0.5)
            assert finished == {"type": "playback_finished", "segment_id": 1, "position_s": 0.0, "interrupted": True}
            assert loop.time() - cleared_at < 0.5
            session.allow()
            after = tone(0.3, seed=999)
            await ws.send(pcm16(after))
            await ws.send(json.dumps({"type": "end_of_speech"}))
            assert await receive_json(ws) == {"type": "playback_started", "segment_id": 2}
            assert (await receive_json(ws))["segment_id"] == 2
            # The 20 s the session had taken, then only the new audio: none of the 10 s read ahead.
            np.testing.assert_array_equal(session.samples_of(1), np.concatenate(chunks[:200]))
            np.testing.assert_array_equal(session.samples_of(2), after)
            assert {seg for _, _, seg in session.pushed} == {1, 2}


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["socket", "http"])
async def test_real_session_clear_behind_30_s_of_audio(tmp_path: Path, how: str) -> None:
    app = create_app(ServerConfig(data_dir=tmp_path / "data", size=128))
    rate = 16000
    noise = tone(30.0, rate)
    async with serving(app) as url:
        managed = await app.state.emote.manager.create_session()
        async with connect(f"{url}/sessions/{managed.id}/audio") as ws:
            await start(ws, rate)
            for k in range(0, len(noise), rate // 10):
                await ws.send(pcm16(noise[k : k + rate // 10]))
            assert await receive_json(ws) == {"type": "playback_started", "segment_id": 1}
            await asyncio.sleep(0.5)
            loop = asyncio.get_running_loop()
            cleared_at = loop.time()
            await clear_via(how, ws, url.replace("ws://", "http://"), managed.id)
            finished = await receive_json(ws, 0.5)
            took_s = loop.time() - cleared_at
            assert finished["type"] == "playback_finished" and finished["interrupted"], finished
            assert took_s < 0.5 and managed.session.stats().queued_speech_s == 0.0
            after = tone(0.4, rate, seed=5)
            await ws.send(pcm16(after))
            await ws.send(json.dumps({"type": "end_of_speech"}))
            assert await receive_json(ws) == {"type": "playback_started", "segment_id": 2}
            second = await receive_json(ws, 3.0)
            assert second["segment_id"] == 2 and not second["interrupted"]
            assert second["position_s"] == pytest.approx(0.4, abs=0.05)  # only the new audio played
            print(f"\n{how} clear acted on after {took_s * 1000:.0f} ms")


@pytest.mark.asyncio
async def test_reading_stops_when_the_read_ahead_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emote.server import agent_ws

    monkeypatch.setattr(agent_ws, "READ_AHEAD_S", 0.5)
    held: list[int] = []  # samples read ahead after each audio message read
    on_audio = agent_ws._AgentConnection._on_audio

    def recording(self: Any, payload: bytes) -> None:
        on_audio(self, payload)
        held.append(self.pending_samples)

    monkeypatch.setattr(agent_ws._AgentConnection, "_on_audio", recording)
    async with fake_server(tmp_path) as (url, _, session), connect(url) as ws:
        await start(ws)
        session.allow(2)  # the session takes 0.2 s, then is "full"
        chunks = [tone(0.1, seed=k) for k in range(30)]
        for chunk in chunks:
            await ws.send(pcm16(chunk))
        await asyncio.wait_for(session.waiting.wait(), 2.0)
        await asyncio.sleep(0.3)
        assert max(held) <= 0.5 * 16000 and len(held) <= 2 + 1 + 5  # taken, in the push, read ahead
        session.allow()  # playback made room: the rest is read and pushed, in order
        await ws.send(json.dumps({"type": "end_of_speech"}))
        assert (await receive_json(ws))["type"] == "playback_started"
        assert (await receive_json(ws))["type"] == "playback_finished"
        np.testing.assert_array_equal(session.samples_of(1), np.concatenate(chunks))


@pytest.mark.asyncio
async def test_one_agent_at_a_time_and_a_gone_agent_ends_its_segment(tmp_path: Path) -> None:
    async with fake_server(tmp_path) as (url, managed, session):
        async with connect(url) as ws:
            await start(ws)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 409
            await ws.send(pcm16(tone(0.1)))
            assert (await receive_json(ws))["type"] == "playback_started"
        # The agent left mid-utterance: its segment is ended, the socket is free for the next agent.
        await asyncio.wait_for(session.ended.wait(), 2.0)
        async with connect(url) as ws:
            await start(ws)
            assert managed.agent_connected


@pytest.mark.asyncio
async def test_the_socket_closes_with_1001_when_the_session_ends(tmp_path: Path) -> None:
    fakes = Fakes()
    app = fake_app(tmp_path, fakes)
    async with serving(app) as url:
        manager = app.state.emote.manager
        managed = await manager.create_session()
        async with connect(f"{url}/sessions/{managed.id}/audio") as ws:
            await start(ws)
            await manager.close_session(managed.id)  # a hang-up by the viewer
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 2.0)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert fakes.sessions[0].closed and manager.count == 0


@pytest.mark.skipif(not tts.espeak_available(), reason="espeak-ng (the tts extra) is not installed")
@pytest.mark.asyncio
async def test_real_session_plays_pushed_speech_and_clear_interrupts_it(tmp_path: Path) -> None:
    app = create_app(ServerConfig(data_dir=tmp_path / "data"))
    speech, rate = tts.synthesize("Hello, I am the avatar, and this is what the agent says to you now.")
    samples = (np.clip(speech, -1, 1) * 32767).astype(np.int16)
    duration_s = len(samples) / rate
    piece = rate // 10
    async with serving(app) as url:
        managed = await app.state.emote.manager.create_session()
        async with connect(f"{url}/sessions/{managed.id}/audio") as ws:
            await start(ws, rate)
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            for k in range(0, len(samples), piece):  # all of it at once: faster than real time
                await ws.send(pcm16(samples[k : k + piece]))
            await ws.send(json.dumps({"type": "end_of_speech"}))
            assert await receive_json(ws) == {"type": "playback_started", "segment_id": 1}
            started_s = loop.time() - sent_at
            finished = await receive_json(ws, duration_s + 3.0)
            played_s = loop.time() - sent_at
            assert finished["type"] == "playback_finished" and finished["segment_id"] == 1
            assert not finished["interrupted"]
            assert finished["position_s"] == pytest.approx(duration_s, abs=0.1)
            assert started_s < 0.5 and duration_s - 0.1 < played_s < duration_s + 1.0

            for k in range(0, len(samples), piece):  # say it again, and interrupt it after 1 s
                await ws.send(pcm16(samples[k : k + piece]))
            assert await receive_json(ws) == {"type": "playback_started", "segment_id": 2}
            await asyncio.sleep(1.0)
            await ws.send(json.dumps({"type": "clear"}))
            cleared_at = loop.time()
            interrupted = await receive_json(ws)
            assert interrupted["type"] == "playback_finished" and interrupted["interrupted"]
            assert loop.time() - cleared_at < 0.2
            assert 0.7 < interrupted["position_s"] < 1.5
            assert managed.session.stats().queued_speech_s == 0.0

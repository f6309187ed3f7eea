"""The agent audio socket: a voice agent pushes speech into a live session and hears when it plays.

``WebSocket /sessions/{id}/audio`` is the avatar contract of LiveKit Agents and Pipecat: the session
is one a viewer created with ``POST /offer``; the agent (an LLM + TTS pipeline somewhere else) sends
the speech the avatar should say, faster than real time if it likes, and is told when each segment
starts and stops playing, so that it can track what the person actually heard.

Client → server:

- first, text ``{"type": "start", "sample_rate": N}`` with N from 8000 to 48000; anything else closes
  the socket (1003 for binary data, 1008 otherwise) after an ``error`` message;
- binary messages: PCM16 little-endian mono samples at that rate (an odd byte count is answered with
  an ``error`` message and ignored);
- text ``{"type": "end_of_speech"}``: the segment is complete (``playback_finished`` follows once it
  has played); the next audio opens a new segment;
- text ``{"type": "clear"}``: interrupt; audio not yet played is dropped, including audio received
  but not yet handed to the session, and open segments finish with ``"interrupted": true``.

Server → client: ``{"type": "started", "session_id", "sample_rate"}`` once the start message is
accepted; ``{"type": "playback_started", "segment_id"}``; ``{"type": "playback_finished",
"segment_id", "position_s", "interrupted"}``; ``{"type": "error", "error"}``.

Queues and the clear policy. A ``clear`` arrives on the same TCP stream as the audio sent before it,
so it can be acted on only once that audio has been read. The socket is therefore read as fast as
messages arrive, and what is read waits in a local read-ahead buffer until the session has room (the
session holds about 20 s of speech). Control messages are acted on the moment they are read, ahead of
the buffered audio: a ``clear`` drops the buffer, the audio the session holds and the audio a push
was waiting to hand over, all at once. The buffer holds up to :data:`READ_AHEAD_S` seconds of audio
at the declared rate (at most ~5.5 MiB, at 48 kHz) or :data:`MAX_READ_AHEAD_MESSAGES` messages; only
beyond that does the server stop reading (back-pressure through TCP). So an agent up to about 20 s +
:data:`READ_AHEAD_S` ahead of playback is never slowed down and its ``clear`` takes effect within a
frame; an agent further ahead is slowed to playback speed, and a ``clear`` it sends then waits until
playback has made room for the audio it sent before it. An HTTP ``POST /sessions/{id}/clear`` drops
this socket's buffer too (audio still in transit at that moment plays afterwards: an agent that
interrupts itself should send its ``clear`` on the socket). Each message is at most
:data:`MAX_AUDIO_MESSAGE_BYTES`. Outgoing events wait in a queue of :data:`OUTBOX_MESSAGES`; a client
that does not read them is disconnected (1008). One agent per session at a time (a second gets 409).
When the agent disconnects, audio it sent that was not yet handed to the session is dropped and the
open segment is ended; when the session ends, the socket closes with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

import numpy as np
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from emote.server.errors import UnknownSessionError
from emote.server.sessions import ManagedSession, SessionManager
from emote.streaming.session import (
    PlaybackFinished,
    PlaybackStarted,
    SessionClosed,
    SessionEvent,
    SessionFailed,
    SpeechCleared,
)

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 48000
START_TIMEOUT_S = 10.0
MAX_AUDIO_MESSAGE_BYTES = 1024 * 1024  # ~11 s at 48 kHz
#: Seconds of audio (at the declared rate) read ahead of what the session holds, before reading stops.
READ_AHEAD_S = 60.0
MAX_READ_AHEAD_MESSAGES = 4096
OUTBOX_MESSAGES = 256
_START_HINT = 'send {"type": "start", "sample_rate": N} first, N from 8000 to 48000'

# Close codes: RFC 6455 ones, and 4000 + the HTTP status where the server cannot answer with HTTP.
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_UNKNOWN_SESSION = 4404
CLOSE_CONFLICT = 4409

log = logging.getLogger(__name__)
_END = object()  # end_of_speech, in the audio queue so that it follows the audio sent before it


def event_message(event: SessionEvent) -> dict[str, Any]:
    """The JSON message for a session's playback event."""
    if isinstance(event, PlaybackStarted):
        return {"type": "playback_started", "segment_id": event.segment_id}
    if isinstance(event, PlaybackFinished):
        return {"type": "playback_finished", "segment_id": event.segment_id, "position_s": event.position_s,
                "interrupted": event.interrupted}
    raise TypeError(f"not a playback event: {event!r}")


async def agent_audio_endpoint(websocket: WebSocket) -> None:
    """The Starlette endpoint of ``/sessions/{session_id}/audio``."""
    manager: SessionManager = websocket.app.state.emote.manager
    try:
        managed = manager.get(websocket.path_params["session_id"])
    except UnknownSessionError as exc:
        await _refuse(websocket, 404, CLOSE_UNKNOWN_SESSION, str(exc))
        return
    if managed.agent_connected:
        await _refuse(websocket, 409, CLOSE_CONFLICT,
                      f"session {managed.id!r} already has an agent connected; one agent at a time")
        return
    managed.agent_connected = True  # before the first await: two handshakes at once cannot both pass
    try:
        await websocket.accept()
        await _AgentConnection(websocket, managed).run()
    finally:
        managed.agent_connected = False


async def _refuse(websocket: WebSocket, status: int, close_code: int, message: str) -> None:
    """Answer the handshake with an HTTP error where the server allows it, else accept and close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"error": message}, status_code=status))
        return
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.send_json({"type": "error", "error": message})
        await websocket.close(close_code, message[:120])


class _AgentConnection:
    """One accepted agent socket: reads, pushes and forwards events until either side ends it."""

    def __init__(self, websocket: WebSocket, managed: ManagedSession) -> None:
        self.ws = websocket
        self.managed = managed
        self.sample_rate = 0
        self.pending: deque[np.ndarray | object] = deque()  # read ahead: audio arrays and _END markers
        self.pending_samples = 0
        self.room = asyncio.Event()  # the read-ahead buffer is below its bound
        self.room.set()
        self.arrived = asyncio.Event()  # something was added to the buffer
        self.pusher: asyncio.Task[None] | None = None
        self.pushers: set[asyncio.Task[None]] = set()  # the current one, and cancelled ones still ending
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(OUTBOX_MESSAGES)
        self.overflow = asyncio.Event()
        self.client_gone = False
        self.segment_open = False  # this agent pushed audio since its last end_of_speech or clear

    async def run(self) -> None:
        rate = await self._start()
        if rate is None:
            return
        self.sample_rate = rate
        self.outbox.put_nowait({"type": "started", "session_id": self.managed.id, "sample_rate": rate})
        unsubscribe = self.managed.subscribe(self._on_event)
        unhook = self.managed.on_clear(self._drop_pending)
        sender = asyncio.create_task(self._send_loop(), name="agent-send")
        reader = asyncio.create_task(self._read_loop(), name="agent-read")
        ended = asyncio.create_task(self.managed.closed.wait(), name="agent-session-ended")
        overflow = asyncio.create_task(self.overflow.wait(), name="agent-overflow")
        close: tuple[int, str] | None = None
        try:
            done, _ = await asyncio.wait({reader, ended, overflow, sender}, return_when=asyncio.FIRST_COMPLETED)
            if ended in done:
                close = (CLOSE_GOING_AWAY, "session ended")
            elif overflow in done:
                close = (CLOSE_POLICY_VIOLATION, "events were not read; closing")
            elif reader in done and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        finally:
            unsubscribe()
            unhook()
            tasks = [reader, ended, overflow, *self.pushers]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.pending.clear()
            if self.segment_open and not self.managed.closed.is_set():
                self.managed.session.end_of_speech()  # the agent is gone: its open segment is complete
            if close is not None and not self.client_gone:
                # Let the event messages already queued go out first (briefly), then say goodbye.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.outbox.join(), 1.0)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if close is not None and not self.client_gone:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await self.ws.close(*close)

    async def _start(self) -> int | None:
        """Read and check the start message; on a bad one, say why and close. Returns the sample rate."""
        try:
            message = await asyncio.wait_for(self.ws.receive(), START_TIMEOUT_S)
        except TimeoutError:
            await self._fail(CLOSE_POLICY_VIOLATION, f"no start message within {START_TIMEOUT_S:.0f} s; {_START_HINT}")
            return None
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("text") is None:
            await self._fail(CLOSE_UNSUPPORTED_DATA, f"audio arrived before the start message; {_START_HINT}")
            return None
        try:
            data = json.loads(message["text"])
        except (ValueError, RecursionError):
            await self._fail(CLOSE_POLICY_VIOLATION, f"the start message is not valid JSON; {_START_HINT}")
            return None
        if not isinstance(data, dict) or data.get("type") != "start":
            await self._fail(CLOSE_POLICY_VIOLATION, f"the first message must have \"type\": \"start\"; {_START_HINT}")
            return None
        rate = data.get("sample_rate")
        if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            await self._fail(CLOSE_POLICY_VIOLATION,
                             f"field 'sample_rate' must be a whole number of Hz from {MIN_SAMPLE_RATE} to "
                             f"{MAX_SAMPLE_RATE}, got {rate!r}")
            return None
        return rate

    async def _fail(self, code: int, message: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.ws.send_json({"type": "error", "error": message})
            await self.ws.close(code, message[:120])

    def _on_event(self, event: SessionEvent) -> None:
        if isinstance(event, PlaybackStarted | PlaybackFinished):
            self._post(event_message(event))
        elif isinstance(event, SessionFailed):
            self._post({"type": "error", "error": "the avatar session failed and is being closed"})

    def _post(self, message: dict[str, Any]) -> None:
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            self.overflow.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                message = await self.outbox.get()
                await self.ws.send_json(message)
                self.outbox.task_done()
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.client_gone = True

    async def _read_loop(self) -> None:
        while True:
            while self._full():  # back-pressure: stop reading until the session has taken some
                self.room.clear()
                await self.room.wait()
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.client_gone = True
                return
            if (payload := message.get("bytes")) is not None:
                self._on_audio(payload)
            elif (text := message.get("text")) is not None:
                await self._on_control(text)

    def _full(self) -> bool:
        return (self.pending_samples >= READ_AHEAD_S * self.sample_rate
                or len(self.pending) >= MAX_READ_AHEAD_MESSAGES)

    def _on_audio(self, payload: bytes) -> None:
        if len(payload) % 2:
            self._post({"type": "error", "error": f"an audio message had {len(payload)} bytes, an odd number; "
                                                  "send whole 16-bit samples (PCM16 little-endian mono)"})
            return
        if len(payload) > MAX_AUDIO_MESSAGE_BYTES:
            self._post({"type": "error", "error": f"an audio message had {len(payload)} bytes; "
                                                  f"send at most {MAX_AUDIO_MESSAGE_BYTES} per message"})
            return
        if payload:
            samples = np.frombuffer(payload, "<i2")
            self.pending.append(samples)
            self.pending_samples += len(samples)
            self._wake_pusher()

    async def _on_control(self, text: str) -> None:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            self._post({"type": "error", "error": "a text message is not valid JSON; send "
                                                  '{"type": "clear"} or {"type": "end_of_speech"}'})
            return
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "end_of_speech":
            if not self.pending or self.pending[-1] is not _END:  # two in a row are one
                self.pending.append(_END)  # after the audio sent before it
                self._wake_pusher()
        elif kind == "clear":
            await self.managed.clear()  # drops this socket's read-ahead too (_drop_pending)
        elif kind == "start":
            self._post({"type": "error", "error": "the stream has already started; reconnect to change the rate"})
        else:
            self._post({"type": "error", "error": f"unknown message type {kind!r}; expected 'clear' or "
                                                  "'end_of_speech' (audio goes in binary messages)"})

    def _drop_pending(self) -> None:
        """The session's clear hook (an agent's clear or ``POST /sessions/{id}/clear``): drop what this socket
        read ahead and stop the push in progress, now (the session's own ``clear`` follows at once)."""
        if self.pusher is not None:
            self.pusher.cancel()  # it never runs again past the push it was waiting in
            self.pusher = None
        self.pending.clear()
        self.pending_samples = 0
        self.segment_open = False
        self.room.set()

    def _wake_pusher(self) -> None:
        self.arrived.set()
        if self.pusher is None:
            self.pusher = asyncio.create_task(self._push_loop(), name="agent-push")
            self.pushers.add(self.pusher)
            self.pusher.add_done_callback(self.pushers.discard)

    async def _push_loop(self) -> None:
        """Hand the read-ahead to the session in order; the session's back-pressure paces it."""
        session = self.managed.session
        with contextlib.suppress(SessionClosed):
            while True:
                while not self.pending:
                    self.arrived.clear()
                    await self.arrived.wait()
                item = self.pending.popleft()
                if item is _END:
                    session.end_of_speech()
                    self.segment_open = False
                    continue
                self.pending_samples -= len(item)  # type: ignore[arg-type]
                if not self._full():
                    self.room.set()
                try:
                    await session.push_speech(item, self.sample_rate)  # type: ignore[arg-type]
                except SpeechCleared:
                    continue  # cleared while it waited for room: it belonged to the interrupted turn
                self.segment_open = True

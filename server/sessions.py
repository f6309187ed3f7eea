"""Live avatar sessions: created for a caller, found by id, and released completely when they end.

A session is one animated portrait: an :class:`~streaming.session.AvatarSession` (motion, rendering,
the media clock) and, when a browser or another WebRTC peer is watching, the
:class:`~server.webrtc.AvatarPeer` that carries its video and audio. ``POST /offer`` creates both;
the agent audio socket and ``POST /sessions/{id}/say`` find a session by its id and feed it speech.

:class:`SessionManager` enforces the session limit (a slot is reserved before the slow portrait
preparation starts, so concurrent offers cannot overshoot it), and closes sessions on every path
one can end by: a hang-up (``DELETE /sessions/{id}``), a client that vanished (the peer's
``on_closed``), and server shutdown. Closing stops the peer first, then the session (reverse order
of creation), cancels the session's speech tasks, wakes the agent sockets attached to it, and only
then frees the slot. Rendering for every session runs on one shared thread pool owned by the caller.

Starting a session must not stall the others (their frames are due every 40 ms): it is built on the
preparation thread from parts made ahead of time, a warm speech gate lent from a pool of
``max_sessions`` (filled when the server starts, each reset and returned when its session closes)
and the framed portrait kept from the last session on that portrait; only the session's own renderer
and warm-up are new (~0.1 s, the event loop never stalled more than ~5 ms here, was ~70 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from emote.model.motion.registry import make_generator
from emote.server.config import ServerConfig
from emote.server.errors import SayQueueFullError, TooManySessionsError, UnknownSessionError
from emote.server.portraits import PortraitInfo, PortraitStore, PreparedPortraits
from emote.server.speech_gates import GateLease, GatePool
from emote.streaming.session import (
    AvatarSession,
    SessionClosed,
    SessionConfig,
    SessionEvent,
    SessionFailed,
    SpeechCleared,
)

if TYPE_CHECKING:
    from emote.server.webrtc import AvatarPeer

#: /say pushes its speech in pieces this long, so that the session's back-pressure paces it.
SAY_PIECE_S = 1.0
#: Texts a session holds for /say beyond the one being spoken (HTTP 429 beyond).
SAY_QUEUE_TEXTS = 8

log = logging.getLogger(__name__)

SessionBuilder = Callable[[PortraitInfo], Awaitable[AvatarSession]]
PeerBuilder = Callable[[AvatarSession, Callable[[], None]], "AvatarPeer"]


@dataclass(eq=False)
class SayTicket:
    """A text queued by :meth:`ManagedSession.say`.

    Attributes:
        duration_s: length of its speech.
        ahead: texts queued or being said before it (0: it starts now).
        started: resolves to its segment id once its first second is queued in the session, or to
            ``None`` when it was cleared or the session ended first.
    """

    samples: np.ndarray
    sample_rate: int
    ahead: int
    started: asyncio.Future[int | None]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


class _SayQueue:
    """The texts of one session waiting to be said, served in order by one task (started when needed).

    Each text is one segment, pushed in :data:`SAY_PIECE_S` pieces so the session's back-pressure paces
    it; at most :data:`SAY_QUEUE_TEXTS` wait behind the one being said. :meth:`stop` drops them all.
    """

    def __init__(self, session: AvatarSession, name: str) -> None:
        self.session = session
        self.name = name
        self.waiting: list[SayTicket] = []
        self.current: SayTicket | None = None
        self.left_s = 0.0  # of the text being said, not yet handed to the session
        self.worker: asyncio.Task[None] | None = None

    def put(self, samples: np.ndarray, sample_rate: int) -> SayTicket:
        if len(self.waiting) >= SAY_QUEUE_TEXTS:
            raise SayQueueFullError(len(self.waiting), max(1, int(np.ceil(self.left_s))))
        ticket = SayTicket(samples, sample_rate, len(self.waiting) + (self.current is not None),
                           asyncio.get_running_loop().create_future())
        self.waiting.append(ticket)
        if self.worker is None:
            self.worker = asyncio.create_task(self._serve(), name=f"say-{self.name}")
        return ticket

    def stop(self) -> asyncio.Task[None] | None:
        """Drop every text, the one being said included, at once; returns the worker to await (cancelled)."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.cancel()  # it never runs again past the push it was waiting in
        self._drop()
        return worker

    def _drop(self) -> None:
        for ticket in [*self.waiting, *([self.current] if self.current else [])]:
            if not ticket.started.done():
                ticket.started.set_result(None)
        self.waiting.clear()
        self.current, self.left_s = None, 0.0

    async def _serve(self) -> None:
        try:
            while self.waiting:
                self.current = self.waiting.pop(0)
                await self._say(self.current)
                self.current = None
        except SessionClosed:
            self._drop()
        except Exception:
            log.exception("session %s: saying a text failed", self.name)
            self._drop()
        finally:
            if self.worker is asyncio.current_task():
                self.worker = None

    async def _say(self, ticket: SayTicket) -> None:
        samples, rate = ticket.samples, ticket.sample_rate
        piece = max(1, int(rate * SAY_PIECE_S))
        try:
            for start in range(0, len(samples), piece):
                self.left_s = (len(samples) - start) / rate
                segment_id = await self.session.push_speech(samples[start : start + piece], rate)
                if not ticket.started.done():
                    ticket.started.set_result(segment_id)
            self.session.end_of_speech()
        except SpeechCleared:  # the session was cleared while this text waited for room: it ends here
            pass
        finally:
            self.left_s = 0.0
            if not ticket.started.done():
                ticket.started.set_result(None)


@dataclass(eq=False)
class ManagedSession:
    """A live session as the server tracks it.

    Attributes:
        id: unguessable token; whoever knows it can make the avatar speak.
        portrait_id: which portrait it animates.
        session: the streaming core.
        peer: the WebRTC connection, ``None`` for a session without a viewer (tests, benchmarks).
        created_at: ``time.monotonic()`` at creation.
        closed: set once everything is released.
        agent_connected: an agent audio socket is attached (at most one at a time).
    """

    id: str
    portrait_id: str
    session: AvatarSession
    peer: AvatarPeer | None = None
    created_at: float = field(default_factory=time.monotonic)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    agent_connected: bool = False
    _listeners: list[Callable[[SessionEvent], None]] = field(default_factory=list)
    _clear_hooks: list[Callable[[], None]] = field(default_factory=list)
    _texts: _SayQueue | None = None
    _sinks: list[asyncio.Task[None]] = field(default_factory=list)
    _closing: asyncio.Task[None] | None = None

    def subscribe(self, listener: Callable[[SessionEvent], None]) -> Callable[[], None]:
        """Call ``listener`` with every playback event (on the event loop); returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def on_clear(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` (synchronously, on the event loop) at every :meth:`clear`, just before the session's own
        clear: whoever feeds the session speech drops what it holds there. Returns the unregister function."""
        self._clear_hooks.append(hook)
        return lambda: self._clear_hooks.remove(hook) if hook in self._clear_hooks else None

    def _dispatch(self, event: SessionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one broken subscriber must not silence the others
                log.exception("session %s: event listener failed", self.id)

    def say(self, samples: np.ndarray, sample_rate: int) -> SayTicket:
        """Queue synthesized speech as one segment, after the texts queued before it; returns at once.

        A task the session owns says the texts in order (cancelled by :meth:`clear` and on close).

        Raises:
            SayQueueFullError: :data:`SAY_QUEUE_TEXTS` texts are already waiting.
            SessionClosed: the session has ended.
        """
        if self._closing is not None or self.session.closed:
            raise SessionClosed("the avatar session is closed")
        if self._texts is None:
            self._texts = _SayQueue(self.session, self.id)
        return self._texts.put(samples, sample_rate)

    async def clear(self) -> None:
        """Interrupt, at once: the texts waiting for /say are dropped, every feeder drops what it holds (the
        agent socket's read-ahead, see :meth:`on_clear`), then the session drops what it queued.

        All of it happens in one step of the event loop, so no audio can slip in between.
        """
        worker = self._texts.stop() if self._texts is not None else None
        for hook in list(self._clear_hooks):
            try:
                hook()
            except Exception:
                log.exception("session %s: a clear hook failed", self.id)
        self.session.clear()
        if worker is not None:
            await asyncio.gather(worker, return_exceptions=True)

    async def _cancel_speech(self) -> None:
        worker = self._texts.stop() if self._texts is not None else None
        if worker is not None:
            await asyncio.gather(worker, return_exceptions=True)


class SessionManager:
    """Creates, finds and closes sessions; at most ``config.max_sessions`` at a time.

    Args:
        config: the server settings (session limit, fps, size, ICE allow-list).
        portraits: where portrait ids are resolved.
        render_executor: the thread pool shared by all sessions for motion and rendering.
        prepare_executor: where portraits are prepared for a new session (default: ``render_executor``);
            a separate one keeps a slow first analysis from delaying live sessions' frames.
        build_session: makes an unstarted session for a portrait; default: the real pipeline.
        build_peer: makes the WebRTC peer for a session; default: :class:`server.webrtc.AvatarPeer`.
    """

    def __init__(
        self,
        config: ServerConfig,
        portraits: PortraitStore,
        *,
        render_executor: Executor,
        prepare_executor: Executor | None = None,
        build_session: SessionBuilder | None = None,
        build_peer: PeerBuilder | None = None,
    ) -> None:
        self.config = config
        self.portraits = portraits
        self._executor = render_executor
        self._prepare_executor = prepare_executor or render_executor
        self._build_session = build_session or self._real_session
        self._build_peer = build_peer or self._real_peer
        self._sessions: dict[str, ManagedSession] = {}
        self._slots_used = 0  # live sessions + those being built or being closed
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutting_down = False
        self._prepared = PreparedPortraits()
        self._gates = GatePool(config.max_sessions)
        self._leases: dict[AvatarSession, GateLease] = {}
        self.gates_ready: Future[None] | None = None
        if build_session is None:  # warm the real sessions' speech gates now, off the event loop
            self.gates_ready = self._prepare_executor.submit(self._gates.fill)
            self.gates_ready.add_done_callback(_log_failure)

    @property
    def count(self) -> int:
        """Sessions that hold a slot (live, starting or still releasing)."""
        return self._slots_used

    def get(self, session_id: str) -> ManagedSession:
        """The live session with this id.

        Raises:
            UnknownSessionError: none has it (ended, or never existed).
        """
        managed = self._sessions.get(session_id)
        if managed is None or managed._closing is not None:
            raise UnknownSessionError(session_id)
        return managed

    def sessions(self) -> list[ManagedSession]:
        """The live sessions, oldest first."""
        return [m for m in self._sessions.values() if m._closing is None]

    async def create_session(self, portrait_id: str | None = None) -> ManagedSession:
        """Start a session without a viewer.

        Raises:
            TooManySessionsError: every slot is taken.
            UnknownPortraitError: no portrait has that id.
            PortraitError: the portrait cannot be animated.
        """
        return await self._create(portrait_id, None)

    async def create_call(
        self, sdp: str, sdp_type: str, portrait_id: str | None = None
    ) -> tuple[ManagedSession, str, str]:
        """Start a session for a WebRTC offer; returns it with the answer's SDP and type.

        Raises:
            TooManySessionsError, UnknownPortraitError, PortraitError: as :meth:`create_session`.
            SignalingError: the offer is malformed (an :class:`~model.errors.InputError`).
        """
        answer: list[Any] = []
        managed = await self._create(portrait_id, (sdp, sdp_type, answer))
        return managed, answer[0].sdp, answer[0].type

    async def _create(self, portrait_id: str | None, offer: tuple[str, str, list[Any]] | None) -> ManagedSession:
        if self._shutting_down or self._slots_used >= self.config.max_sessions:
            raise TooManySessionsError(self.config.max_sessions, self.config.retry_after_s)
        portrait = self.portraits.get(portrait_id)
        self._slots_used += 1
        session: AvatarSession | None = None
        managed: ManagedSession | None = None
        try:
            session = await self._build_session(portrait)
            managed = ManagedSession(id=secrets.token_urlsafe(16), portrait_id=portrait.id, session=session)
            self._sessions[managed.id] = managed
            session.add_listener(managed._dispatch)
            failed_id = managed.id  # a session whose producer failed is frozen: release it

            def close_if_failed(event: SessionEvent) -> None:
                if isinstance(event, SessionFailed):
                    self._close_soon(failed_id, "the avatar session failed")

            session.add_listener(close_if_failed)
            await session.start()
            if offer is None:
                managed._sinks = [asyncio.create_task(_drain(session.next_video), name=f"video-sink-{managed.id}"),
                                  asyncio.create_task(_drain(session.next_audio), name=f"audio-sink-{managed.id}")]
            else:
                sdp, sdp_type, answer = offer
                session_id = managed.id
                managed.peer = self._build_peer(session, lambda: self._peer_closed(session_id))
                answer.append(await managed.peer.answer(sdp, sdp_type))
            if self._shutting_down:  # shutdown began while this one was starting
                raise TooManySessionsError(self.config.max_sessions, self.config.retry_after_s)
        except BaseException:
            # Release what was built without letting a failure here replace the error the caller must see
            # (the peer's on_closed may already have released the session: then there is nothing to do).
            try:
                if managed is not None:
                    with contextlib.suppress(UnknownSessionError):
                        await self.close_session(managed.id)
                else:
                    try:
                        if session is not None:
                            await session.aclose()
                            await self._return_gate(session)
                    finally:
                        self._slots_used -= 1
            except Exception:
                log.exception("a session that failed to start was not released cleanly")
            raise
        log.info("session %s started (portrait %s, %s)", managed.id, portrait.id,
                 "WebRTC" if managed.peer else "no viewer")
        return managed

    def _peer_closed(self, session_id: str) -> None:
        """The peer's ``on_closed``: the client hung up or vanished. Called on the event loop."""
        self._close_soon(session_id, "its WebRTC connection ended")

    def _close_soon(self, session_id: str, why: str) -> None:
        """Release a session from a callback (the peer ended, or the session's producer failed)."""
        managed = self._sessions.get(session_id)
        if managed is None or managed._closing is not None:
            return
        log.info("session %s: %s", session_id, why)
        task = asyncio.get_running_loop().create_task(self._close_quietly(session_id), name=f"close-{session_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_quietly(self, session_id: str) -> None:
        with contextlib.suppress(UnknownSessionError):  # released meanwhile by another path
            await self.close_session(session_id)

    async def close_session(self, session_id: str) -> None:
        """Release a session: peer, session, speech tasks; then its slot. Idempotent.

        Raises:
            UnknownSessionError: no session ever had that id (or it is long gone).
        """
        managed = self._sessions.get(session_id)
        if managed is None:
            raise UnknownSessionError(session_id)
        if managed._closing is None:
            managed._closing = asyncio.get_running_loop().create_task(
                self._release(managed), name=f"release-{session_id}"
            )
        # shield: a client that gives up on its DELETE must not leave a session half released.
        await asyncio.shield(managed._closing)

    async def _release(self, managed: ManagedSession) -> None:
        # Each step runs whatever the one before it did: a peer that fails to close must not keep the
        # session (its producer, its frames) alive, nor the slot taken.
        try:
            try:
                await managed._cancel_speech()
                if managed.peer is not None:
                    await managed.peer.close()
            except Exception:
                log.exception("session %s: closing its WebRTC peer failed", managed.id)
            finally:
                for sink in managed._sinks:
                    sink.cancel()
                await asyncio.gather(*managed._sinks, return_exceptions=True)
                await managed.session.aclose()
                await self._return_gate(managed.session)
        except Exception:
            log.exception("session %s: closing the avatar session failed", managed.id)
        finally:
            self._sessions.pop(managed.id, None)
            self._slots_used -= 1
            managed._listeners.clear()
            managed.closed.set()
            log.info("session %s closed after %.1f s", managed.id, time.monotonic() - managed.created_at)

    async def aclose(self) -> None:
        """Server shutdown: refuse new sessions and close every one (and their pending close tasks)."""
        self._shutting_down = True
        ids = list(self._sessions)
        results = await asyncio.gather(*(self.close_session(i) for i in ids), return_exceptions=True)
        for session_id, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("session %s did not close cleanly: %r", session_id, result)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _real_session(self, portrait: PortraitInfo) -> AvatarSession:
        def build() -> tuple[AvatarSession, GateLease]:
            # ~0.2 s, none of it on the event loop, where it would make the other sessions' frames late:
            # the renderer (its framed portrait kept from an earlier session on the same portrait), a
            # warm speech gate from the pool, and the session's own warm-up of the generator and gate
            # (its asyncio primitives bind to the loop when first awaited, so building it here is safe).
            prepared, renderer = self._prepared.renderer(portrait, self.config.size)
            lease = self._gates.lend()
            try:
                session = AvatarSession(renderer, make_generator(self.config.motion), prepared.framed.rest,
                                        config=SessionConfig(fps=self.config.fps), executor=self._executor,
                                        speech_gate=lease)  # type: ignore[arg-type]  # a SpeechGate to it
            except BaseException:
                self._gates.give_back(lease)
                raise
            return session, lease

        session, lease = await asyncio.get_running_loop().run_in_executor(self._prepare_executor, build)
        self._leases[session] = lease
        return session

    async def _return_gate(self, session: AvatarSession) -> None:
        lease = self._leases.pop(session, None)
        if lease is not None:  # on a thread: revoking waits for a gate step still running on a render thread
            await asyncio.to_thread(self._gates.give_back, lease)

    def _real_peer(self, session: AvatarSession, on_closed: Callable[[], None]) -> AvatarPeer:
        from emote.server.webrtc import AvatarPeer

        return AvatarPeer(session, policy=self.config.ice_policy(), on_closed=on_closed)


def session_summary(managed: ManagedSession) -> dict[str, Any]:
    """JSON-ready facts about a session, for ``GET /sessions/{id}/stats``."""
    return {
        "session_id": managed.id,
        "portrait_id": managed.portrait_id,
        "age_s": round(time.monotonic() - managed.created_at, 3),
        "viewer": managed.peer is not None,
        "agent_connected": managed.agent_connected,
    }


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("warming the speech gates failed (sessions will load their own): %r", future.exception())


async def _drain(pull: Callable[[], Awaitable[object]]) -> None:
    """Stand in for a viewer: pull and drop a track's output, so the media clock runs and events fire."""
    with contextlib.suppress(SessionClosed):
        while True:
            await pull()

"""An in-process aiortc client peer: the caller's side of a call, for the end-to-end tests and the benchmark.

:class:`RtcClient` plays the browser: it offers a receive-only video transceiver and a send-receive audio
transceiver whose outgoing track (:class:`PcmSource`) plays numpy samples or a WAV at real-time pace (and
silence in between), gathers loopback candidates only (the same :class:`server.ice.IceGuard` the server
uses), and records every frame it receives: video as RGB arrays with their arrival time, audio as mono
int16. Signalling is a callable ``answer_fn(sdp, type) -> (sdp, type)`` (plain or async), so one client
talks to an ``AvatarPeer`` directly or to the server over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from emote.model.media.audio_io import pcm16
from emote.server.ice import IceGuard, IcePolicy, rtc_configuration

SAMPLE_RATE = 48000
CHUNK_SAMPLES = 960  # 20 ms, Opus's usual packet
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)

#: Signalling: takes the offer (sdp, type), returns the answer (sdp, type), directly or awaitably.
AnswerFn = Callable[[str, str], Awaitable[tuple[str, str]] | tuple[str, str]]


class PcmSource(MediaStreamTrack):
    """An outgoing audio track: queued samples at real-time pace, 20 ms per frame, silence when idle."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending: deque[np.ndarray] = deque()  # int16 mono 48 kHz pieces, played in order
        self._offset = 0  # samples already played from _pending[0]
        self._index = 0
        self._start_s: float | None = None
        self.played_s = 0.0  # seconds of queued (non-silent) audio sent so far
        # [first, last] time.monotonic() at which each played piece was sent, in play() order.
        self.spans: list[list[float]] = []

    def play(self, samples: np.ndarray, sample_rate: int) -> None:
        """Queue mono ``samples`` (float in [-1, 1] or int16) at ``sample_rate`` behind what is queued."""
        samples = np.asarray(samples)
        audio = samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16 else samples.astype(np.float32)
        if sample_rate != SAMPLE_RATE:
            n_out = int(round(len(audio) * SAMPLE_RATE / sample_rate))
            audio = np.interp(np.arange(n_out) * (sample_rate / SAMPLE_RATE), np.arange(len(audio)), audio)
        if len(audio):
            self._pending.append(pcm16(audio))

    def play_wav(self, path: str | Path) -> None:
        """Queue a sound file (any format PyAV reads), as the pipeline's 16 kHz mono."""
        from emote.model.media.audio_io import load_audio_16k

        self.play(load_audio_16k(path), 16000)

    @property
    def pending_s(self) -> float:
        """Seconds of queued audio not yet sent."""
        return (sum(len(p) for p in self._pending) - self._offset) / SAMPLE_RATE

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start_s is None:
            self._start_s = loop.time()
        delay = self._start_s + self._index * CHUNK_SAMPLES / SAMPLE_RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self._take(CHUNK_SAMPLES)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._index * CHUNK_SAMPLES
        frame.time_base = _TIME_BASE
        self._index += 1
        return frame

    def _take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        filled = 0
        now = time.monotonic()
        while filled < n and self._pending:
            head = self._pending[0]
            if self._offset == 0:
                self.spans.append([now, now])
            take = min(n - filled, len(head) - self._offset)
            out[filled : filled + take] = head[self._offset : self._offset + take]
            filled += take
            self._offset += take
            self.spans[-1][1] = now + take / SAMPLE_RATE
            if self._offset == len(head):
                self._pending.popleft()
                self._offset = 0
        self.played_s += filled / SAMPLE_RATE
        return out


@dataclass(frozen=True)
class ReceivedVideo:
    """One decoded video frame as it reached the client."""

    pts: int  # in 1/90000 s
    arrival_s: float  # time.monotonic() when recv() returned it
    image: np.ndarray  # (H, W, 3) uint8 RGB


@dataclass(frozen=True)
class ReceivedAudio:
    """One decoded audio frame as it reached the client (Opus decodes to 48 kHz, 20 ms)."""

    pts: int  # in 1/sample_rate s
    arrival_s: float
    samples: np.ndarray  # (n,) int16 mono (stereo is averaged)
    sample_rate: int


class RtcClient:
    """The calling side of one WebRTC call, recording what it receives.

    Args:
        policy: the ICE allow-list (loopback by default).
        send_audio: offer a send-receive audio transceiver carrying :attr:`microphone`; otherwise
            receive-only audio.
        max_video_frames: how many received video frames to keep (the oldest go first); counts and
            timings in :attr:`video_count` cover all of them.
    """

    def __init__(
        self, *, policy: IcePolicy | None = None, send_audio: bool = True, max_video_frames: int = 500
    ) -> None:
        self.policy = policy or IcePolicy()
        self.pc = RTCPeerConnection(rtc_configuration())
        self.guard = IceGuard(self.policy)
        self.microphone = PcmSource()
        self.send_audio = send_audio
        self.video: deque[ReceivedVideo] = deque(maxlen=max_video_frames)
        self.audio: deque[ReceivedAudio] = deque(maxlen=50 * 600)  # ten minutes of 20 ms frames
        self.video_count = 0
        self.offer_sdp = ""
        self.answer_sdp = ""
        self.started_s: float | None = None  # time.monotonic() when connect() began
        self.connected_s: float | None = None  # seconds from connect() to "connected"
        self.first_video_s: float | None = None  # seconds from connect() to the first decoded frame
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def connect(self, answer_fn: AnswerFn, *, timeout_s: float = 10.0) -> float:
        """Offer, hand the offer to ``answer_fn``, apply its answer, and wait until connected.

        Returns:
            Seconds from the start of the offer until the connection was established.
        """
        self.started_s = time.monotonic()
        self.pc.addTransceiver("video", direction="recvonly")
        if self.send_audio:
            self.pc.addTransceiver(self.microphone, direction="sendrecv")
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.guard.attach(self.pc)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer_sdp = self.policy.filter_local_sdp(self.pc.localDescription.sdp)
        reply = answer_fn(self.offer_sdp, "offer")
        sdp, kind = await reply if inspect.isawaitable(reply) else reply
        self.answer_sdp = self.policy.filter_remote_sdp(sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer_sdp, type=kind))
        await self._wait(lambda: self.pc.connectionState in ("connected", "failed", "closed"), timeout_s)
        if self.pc.connectionState != "connected":
            raise ConnectionError(f"the call did not connect: state {self.pc.connectionState}")
        assert self.connected_s is not None
        return self.connected_s

    async def wait_video(self, count: int, *, timeout_s: float = 10.0) -> None:
        """Wait until ``count`` video frames have been received in all."""
        await self._wait(lambda: self.video_count >= count, timeout_s)

    async def wait_closed(self, *, timeout_s: float = 10.0) -> None:
        """Wait until the connection is closed or failed (e.g. the server hung up)."""
        await self._wait(lambda: self.pc.connectionState in ("closed", "failed"), timeout_s)

    def images(self) -> np.ndarray:
        """The kept video frames stacked: (n, H, W, 3) uint8."""
        return np.stack([frame.image for frame in self.video])

    def received_audio(self) -> np.ndarray:
        """All received audio concatenated: (n,) int16 mono."""
        if not self.audio:
            return np.zeros(0, np.int16)
        return np.concatenate([frame.samples for frame in self.audio])

    async def close(self) -> None:
        """Hang up the ordinary way (DTLS close, RTCP BYE) and stop recording."""
        await self.pc.close()
        await self._stop_tasks()

    async def vanish(self) -> None:
        """Disappear without a word: close the client's sockets first, so nothing more reaches the server."""
        from emote.server.ice import ice_connections

        for connection in ice_connections(self.pc):
            # aioice keeps its sockets private; closing them is what a killed browser tab amounts to.
            for protocol in list(connection._protocols):
                protocol.transport.close()
        await self.close()

    async def _wait(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected" and self.connected_s is None and self.started_s is not None:
            self.connected_s = time.monotonic() - self.started_s
        self._tasks.append(asyncio.create_task(self._notify()))

    def _on_track(self, track: MediaStreamTrack) -> None:
        record = self._record_video if track.kind == "video" else self._record_audio
        self._tasks.append(asyncio.create_task(record(track)))

    async def _record_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                arrival_s = time.monotonic()
                if self.first_video_s is None and self.started_s is not None:
                    self.first_video_s = arrival_s - self.started_s
                self.video.append(ReceivedVideo(pts=int(frame.pts or 0), arrival_s=arrival_s,
                                                image=self._keep_image(frame)))
                self.video_count += 1
                await self._notify()

    def _keep_image(self, frame: av.VideoFrame) -> np.ndarray:
        """What is kept of a received frame (here all of it, RGB; subclasses keep less)."""
        return frame.to_ndarray(format="rgb24")

    async def _record_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                data = frame.to_ndarray()
                channels = frame.layout.nb_channels
                if frame.format.is_planar:
                    mono = data.astype(np.float32).mean(axis=0)
                else:
                    mono = data.reshape(-1, channels).astype(np.float32).mean(axis=1)
                samples = np.round(mono).astype(np.int16)
                self.audio.append(ReceivedAudio(int(frame.pts or 0), time.monotonic(), samples, frame.sample_rate))

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

"""Plays rendered frames out on the media clock, as video and re-timed audio.

The producer (:mod:`streaming.session`) appends :class:`FrameEntry` objects:
one rendered image plus the 48 kHz audio of the same frame period, so lips and
sound cannot drift apart. The two WebRTC tracks pull from here on one clock:
video frame *n* is due at ``start + n / fps`` and audio chunk *k* (20 ms) at
``start + k * 0.02``; whichever track reaches a frame period first takes the
next entry for it, and the other track finds the same entry by index.

The cadence never stalls. When nothing is ready at a deadline the frame is
*late*: the last image repeats with silence, and the queued entries play one
period later. When a puller falls two or more periods behind (a stalled event
loop), it skips to the present instead of bursting. When late frames have
pushed the queue past ``catch_up_frames`` (the session sets it from its
window and margin), entries without avatar speech (idle or live-microphone
frames, whose sound is not sent back) are dropped until the queue is short
again, so live latency does not creep up; entries carrying speech are never
dropped.

Overflow policy: the queue holds at most ``max_frames`` entries (0.5 s by
default); the producer waits for space (:meth:`Playout.wait_for_space`).
:meth:`Playout.clear` drops everything queued (an interruption).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emote.streaming.clock import Clock

AUDIO_CHUNK_S = 0.02


class SessionClosed(Exception):
    """The session was closed; its tracks should end."""


@dataclass(frozen=True)
class TickInfo:
    """Where one 20 ms tick of the session timeline came from.

    Attributes:
        seq: the tick's position on the session timeline.
        source: ``"speech"`` (TTS or agent audio the avatar says), ``"mic"``
            (live caller audio, mouthed but not sent back) or ``"idle"``.
        segment: the speech segment id, for ``"speech"`` ticks.
        position_s: seconds of the segment played once this tick has played.
        arrival: clock time at which the tick's audio arrived (idle: was made).
        live: the pipeline was waiting for this audio when it arrived (live microphone audio,
            or speech streamed no faster than it plays); only live ticks measure latency, since
            speech pushed ahead of time waits its turn by design.
    """

    seq: int
    source: str
    segment: int | None
    position_s: float
    arrival: float
    live: bool = True


@dataclass(frozen=True)
class FrameEntry:
    """One frame period ready to play.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        audio: (S,) int16 mono at 48 kHz for this frame period.
        ticks: the timeline ticks whose audio this frame shows.
        late: True for a filler made because nothing was ready.
    """

    image: np.ndarray
    audio: np.ndarray
    ticks: tuple[TickInfo, ...]
    late: bool = False

    @property
    def has_speech(self) -> bool:
        return any(t.source == "speech" for t in self.ticks)

    @property
    def arrival(self) -> float | None:
        """When this frame's live audio arrived: the earliest over its ticks of each tick's newest
        packet (the audio the tick first shows; see :func:`streaming.session_inputs.take_samples`)."""
        times = [t.arrival for t in self.ticks if t.source != "idle" and t.live]
        return min(times) if times else None


@dataclass(frozen=True)
class VideoOut:
    """A video frame for the track: ``image`` is (H, W, 3) uint8 RGB, shown at ``index / fps``."""

    index: int
    image: np.ndarray
    late: bool


@dataclass(frozen=True)
class AudioOut:
    """20 ms of audio for the track: ``samples`` is (960,) int16 mono at 48 kHz, played at ``index * 0.02`` s."""

    index: int
    samples: np.ndarray


class Playout:
    """The bounded queue of rendered frames and its two paced readers.

    Args:
        fps: video frame rate.
        clock: the media clock.
        initial_image: shown until the first entry is ready.
        sample_rate: output audio rate (48 kHz, what WebRTC carries).
        max_frames: queue bound.
        catch_up_frames: queue length above which entries without speech are dropped.
        startup_delay_s: the first frame is due this long after the first pull,
            so the producer can fill the queue before the clock starts.
        on_play: called with each entry as it starts playing (events, stats).
    """

    def __init__(
        self,
        *,
        fps: float,
        clock: Clock,
        initial_image: np.ndarray,
        sample_rate: int = 48000,
        max_frames: int = 12,
        catch_up_frames: int = 3,
        startup_delay_s: float = 0.08,
        on_play: Callable[[FrameEntry, int], None] | None = None,
    ) -> None:
        self.fps = fps
        self.period = 1.0 / fps
        self.clock = clock
        self.sample_rate = sample_rate
        self.max_frames = max_frames
        self.catch_up_frames = catch_up_frames
        self.startup_delay_s = startup_delay_s
        self._on_play = on_play
        self.entries: deque[FrameEntry] = deque()
        self.start_time: float | None = None
        self.started = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._last_image = initial_image
        self._assigned = -1  # highest frame index given an entry
        self._played: dict[int, FrameEntry] = {}
        self._video_next = 0
        self._audio_next = 0
        self.closed = False
        self.late_frames = 0
        self.dropped_frames = 0
        self.skipped_periods = 0

    def frame_sample(self, index: int) -> int:
        """First 48 kHz sample of frame ``index`` on the playout timeline."""
        return int(round(index * self.sample_rate / self.fps))

    # -- producer side -------------------------------------------------------------------------
    def push(self, entry: FrameEntry) -> None:
        """Queue an entry (the producer first awaits :meth:`wait_for_space`)."""
        self.entries.append(entry)
        if len(self.entries) >= self.max_frames:
            self._space.clear()

    async def wait_for_space(self) -> None:
        """Return once the queue has room for another entry."""
        while len(self.entries) >= self.max_frames:
            self._space.clear()
            await self._space.wait()

    def next_due(self) -> float | None:
        """Clock time at which an entry appended now would start playing (None before the clock starts)."""
        if self.start_time is None:
            return None
        return self.start_time + (self._assigned + 1 + len(self.entries)) * self.period

    def clear(self) -> list[FrameEntry]:
        """Drop every queued entry (an interruption); returns them."""
        dropped = list(self.entries)
        self.entries.clear()
        self._space.set()
        return dropped

    def close(self) -> None:
        self.closed = True
        self.entries.clear()
        self._space.set()
        self.started.set()

    # -- track side ----------------------------------------------------------------------------
    def _ensure_started(self) -> float:
        if self.closed:
            raise SessionClosed("the avatar session is closed")
        if self.start_time is None:
            self.start_time = self.clock.now() + self.startup_delay_s
            self.started.set()
        return self.start_time

    def _entry(self, index: int) -> FrameEntry:
        """The entry playing at frame ``index``, taking queued entries in order as time reaches them."""
        while self._assigned < index:
            while len(self.entries) > self.catch_up_frames and not self.entries[0].has_speech:
                self.entries.popleft()
                self.dropped_frames += 1
            if self.entries:
                entry = self.entries.popleft()
                self._space.set()
            else:
                silence = np.zeros(self.frame_sample(self._assigned + 2) - self.frame_sample(self._assigned + 1),
                                   np.int16)
                entry = FrameEntry(image=self._last_image, audio=silence, ticks=(), late=True)
                self.late_frames += 1
            self._assigned += 1
            self._last_image = entry.image
            self._played[self._assigned] = entry
            self._played.pop(self._assigned - 8, None)
            if self._on_play is not None:
                self._on_play(entry, self._assigned)
        return self._played.get(index) or FrameEntry(
            image=self._last_image, audio=np.zeros(0, np.int16), ticks=(), late=True
        )

    async def _wait_turn(self, index: int, period: float) -> int:
        start = self._ensure_started()
        await self.clock.sleep_until(start + index * period)
        if self.closed:
            raise SessionClosed("the avatar session is closed")
        behind = int((self.clock.now() - start) / period) - index
        if behind >= 2:
            self.skipped_periods += behind
            index += behind
        return index

    async def next_video(self) -> VideoOut:
        """The next video frame, at its deadline."""
        index = await self._wait_turn(self._video_next, self.period)
        entry = self._entry(index)
        self._video_next = index + 1
        return VideoOut(index=index, image=entry.image, late=entry.late)

    async def next_audio(self) -> AudioOut:
        """The next 20 ms of audio, at its deadline."""
        chunk = int(round(AUDIO_CHUNK_S * self.sample_rate))
        index = await self._wait_turn(self._audio_next, AUDIO_CHUNK_S)
        self._audio_next = index + 1
        lo, hi = index * chunk, (index + 1) * chunk
        out = np.zeros(chunk, np.int16)
        frame = int(lo * self.fps // self.sample_rate)
        while self.frame_sample(frame) < hi:
            f_lo, f_hi = self.frame_sample(frame), self.frame_sample(frame + 1)
            audio = self._entry(frame).audio
            a, b = max(lo, f_lo), min(hi, f_hi)
            piece = audio[a - f_lo : b - f_lo]
            out[a - lo : a - lo + len(piece)] = piece
            frame += 1
        return AudioOut(index=index, samples=out)

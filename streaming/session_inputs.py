"""The input side of a live session: speech and microphone queues cut into 20 ms ticks.

:class:`InputQueues` holds what the avatar has been given but not yet turned into motion:

- speech it says (TTS or agent push), in segments (one per utterance: a segment opens at the first
  push after ``end_of_speech`` or ``clear``), up to ``max_speech_s`` seconds; ``push_speech`` then
  awaits (back-pressure on the TTS or agent connection); a tick that is due before its speech has
  all arrived is padded with silence;
- live microphone audio, at most ``max_mic_ms``, older audio dropped (live audio is only useful now:
  when a late packet made the producer fill in silence, the burst that follows would otherwise play
  that much later); microphone audio arriving while the avatar speaks is discarded. When a whole
  second of microphone frames was ready more than a tick earlier than needed, 20 ms of incoming
  audio is skipped (like a receiver's adaptive jitter buffer), so live latency returns to its minimum.

:meth:`InputQueues.take_tick` gives the producer the next 20 ms of the 48 kHz timeline from the
first source that has it: speech, else microphone, else (when forced) silence. The segments are
this module's alone: it opens, counts, plays and finishes them, and tells the session what happened
as :class:`PlaybackStarted` / :class:`PlaybackFinished` events (:meth:`InputQueues.played`,
:meth:`~InputQueues.end_of_speech`, :meth:`~InputQueues.clear`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import numpy as np

from emote.streaming.clock import Clock
from emote.streaming.playout import SessionClosed, TickInfo
from emote.streaming.resample import StreamResampler, to_float32

RATE = 48000
TICK = 960  # samples per 20 ms tick at 48 kHz
MIC_SLACK_FRAMES = 25  # microphone frames over which the latency adaptation looks at the slack


class SpeechCleared(Exception):
    """:meth:`AvatarSession.push_speech` was waiting for room when :meth:`AvatarSession.clear` was
    called: that speech belongs to the interrupted turn and was dropped."""


@dataclass(frozen=True)
class PlaybackStarted:
    """The first frame of a speech segment is playing."""

    segment_id: int


@dataclass(frozen=True)
class PlaybackFinished:
    """A speech segment stopped playing: at its end, or ``interrupted`` by a clear."""

    segment_id: int
    position_s: float
    interrupted: bool


SegmentEvent = PlaybackStarted | PlaybackFinished


@dataclass
class Segment:
    """One utterance the avatar says, and how far it has got (changed only by :class:`InputQueues`)."""

    id: int
    pending: int = 0  # samples queued, not yet taken into ticks
    taken: int = 0  # samples taken into ticks
    ended: bool = False
    started: bool = False
    finished: bool = False
    last_seq: int = -1
    played_seq: int = -1
    played_s: float = 0.0
    resampler: StreamResampler | None = None


@dataclass
class QueuedAudio:
    """A block of 48 kHz audio waiting to become ticks.

    Attributes:
        segment: the utterance it belongs to; None for microphone audio.
        samples: (N,) float32 at 48 kHz; what is left of the block (its front is taken first).
        arrival: when it arrived, on the media clock.
    """

    segment: Segment | None
    samples: np.ndarray
    arrival: float


def take_samples(fifo: deque[QueuedAudio], out: np.ndarray, segment: Segment | None) -> tuple[int, float | None]:
    """Fill ``out`` from the front of a FIFO, stopping at a block of another segment (a segment's end);
    returns how many samples were taken and the arrival time of the newest block they came from (the
    audio a tick first shows: its latency counts from there, not from the tail of an older block the
    tick starts with)."""
    filled = 0
    newest = None
    while filled < len(out) and fifo and fifo[0].segment is segment:
        block = fifo[0]
        n = min(len(out) - filled, len(block.samples))
        out[filled : filled + n] = block.samples[:n]
        filled += n
        if n:
            newest = block.arrival
        if n == len(block.samples):
            fifo.popleft()
        else:
            block.samples = block.samples[n:]
    return filled, newest


class InputQueues:
    """Speech and microphone audio waiting to become ticks (see the module docstring).

    Args:
        clock: the media clock (arrival times are read from it).
        max_speech_s: queued speech before :meth:`push_speech` waits.
        max_mic_ms: microphone audio held at most.
    """

    def __init__(self, clock: Clock, *, max_speech_s: float, max_mic_ms: float) -> None:
        self.clock = clock
        self.max_speech_samples = max_speech_s * RATE
        self.max_mic_samples = int(max_mic_ms * RATE / 1000)
        self.speech: deque[QueuedAudio] = deque()
        self.speech_samples = 0
        self.segments: dict[int, Segment] = {}
        self.open: Segment | None = None
        self._next_segment = 1
        self.mic: deque[QueuedAudio] = deque()
        self.mic_samples = 0
        self._mic_in: StreamResampler | None = None
        self._mic_debt = 0  # samples of arriving microphone audio to skip (latency adaptation)
        self._mic_slack: list[float] = []  # how early recent microphone frames were ready
        self.seq = 0  # ticks taken so far
        self.waiting = False  # the producer found no audio and waited for some
        self.clears = 0  # how many times clear() was called (speech waiting across one is dropped)
        self.closed = False
        self.arrived = asyncio.Event()  # set whenever input arrives (or the queues are cleared/closed)
        self.drained = asyncio.Event()  # set whenever speech leaves the queue

    # -- microphone ----------------------------------------------------------------------------
    def push_microphone(self, samples: np.ndarray, sample_rate: int) -> None:
        """Live caller audio (mono, int16 or float); never blocks, drops the oldest beyond the bound."""
        if self.closed:
            return
        if self._mic_in is None or self._mic_in.in_rate != sample_rate:
            self._mic_in = StreamResampler(sample_rate, RATE)
        block = self._mic_in.process(samples)
        if self._mic_debt:  # the timeline runs late (see adapt_mic_latency): skip some caller audio
            skip = min(self._mic_debt, len(block))
            block, self._mic_debt = block[skip:], self._mic_debt - skip
        self.mic.append(QueuedAudio(None, block, self.clock.now()))
        self.mic_samples += len(block)
        excess = self.mic_samples - self.max_mic_samples
        if excess > 0:  # live audio is only useful now: drop the oldest
            self._pop_mic(excess)
        self.arrived.set()

    def adapt_mic_latency(self, slack_s: float) -> None:
        """Note how early (``slack_s``) a microphone frame was ready; skip 20 ms of caller audio when
        every one of the last :data:`MIC_SLACK_FRAMES` was ready a tick early."""
        self._mic_slack.append(slack_s)
        if len(self._mic_slack) >= MIC_SLACK_FRAMES:
            if min(self._mic_slack) > TICK / RATE:
                self._mic_debt += TICK
            self._mic_slack.clear()

    def _pop_mic(self, n: int) -> tuple[np.ndarray, float | None]:
        out = np.zeros(n, np.float32)
        taken, newest = take_samples(self.mic, out, None)
        self.mic_samples -= taken
        return out, newest

    # -- speech --------------------------------------------------------------------------------
    async def push_speech(self, samples: np.ndarray, sample_rate: int) -> int:
        """Queue speech (see :meth:`AvatarSession.push_speech`); returns its segment's id.

        Raises:
            SpeechCleared: :meth:`clear` was called while this call waited for room.
        """
        x = to_float32(samples)
        epoch = self.clears
        while not self.closed and self.speech_samples >= self.max_speech_samples:
            self.drained.clear()
            await self.drained.wait()
            if self.clears != epoch:
                raise SpeechCleared("clear() was called while this speech waited to be queued")
        if self.closed:
            raise SessionClosed("the avatar session is closed")
        seg = self.open
        if seg is None:
            seg = self.open = Segment(self._next_segment)
            self.segments[seg.id] = seg
            self._next_segment += 1
        if seg.resampler is None or seg.resampler.in_rate != sample_rate:
            if seg.resampler is not None:
                self._queue_speech(seg, seg.resampler.flush())
            seg.resampler = StreamResampler(sample_rate, RATE)
        self._queue_speech(seg, seg.resampler.process(x))
        return seg.id

    def end_of_speech(self) -> list[SegmentEvent]:
        """Close the open segment (its resampler's tail is queued); returns the events that follows at
        once (a segment that has already played out, or was empty, finishes now)."""
        seg, self.open = self.open, None
        if seg is None:
            return []
        if seg.resampler is not None:
            self._queue_speech(seg, seg.resampler.flush())
        seg.ended = True
        self.arrived.set()
        return self._finish_if_done(seg)

    def played(self, ticks: tuple[TickInfo, ...]) -> list[SegmentEvent]:
        """A frame showing ``ticks`` is playing: the playback events of their segments."""
        events: list[SegmentEvent] = []
        for tick in ticks:
            seg = self.segments.get(tick.segment) if tick.segment is not None else None
            if seg is None or seg.finished:
                continue
            if not seg.started:
                seg.started = True
                events.append(PlaybackStarted(seg.id))
            seg.played_seq = max(seg.played_seq, tick.seq)
            seg.played_s = max(seg.played_s, tick.position_s)
            events += self._finish_if_done(seg)
        return events

    def _finish_if_done(self, seg: Segment) -> list[SegmentEvent]:
        if not (seg.ended and not seg.finished and seg.pending == 0 and seg.played_seq >= seg.last_seq):
            return []
        events: list[SegmentEvent] = []
        if not seg.started:  # an empty segment
            seg.started = True
            events.append(PlaybackStarted(seg.id))
        return events + [self._finish(seg, interrupted=False)]

    def _finish(self, seg: Segment, *, interrupted: bool) -> PlaybackFinished:
        seg.finished = True
        self.segments.pop(seg.id, None)
        return PlaybackFinished(seg.id, round(seg.played_s, 3), interrupted)

    def _queue_speech(self, seg: Segment, block: np.ndarray) -> None:
        if len(block):
            self.speech.append(QueuedAudio(seg, block, self.clock.now()))
            self.speech_samples += len(block)
            seg.pending += len(block)
            self.arrived.set()

    # -- both ----------------------------------------------------------------------------------
    def clear(self) -> list[SegmentEvent]:
        """Drop all queued speech and microphone audio; every unfinished segment finishes, interrupted."""
        self.open = None
        self.clears += 1
        events: list[SegmentEvent] = [self._finish(seg, interrupted=True) for seg in list(self.segments.values())
                                      if not seg.finished]
        self.segments.clear()
        self.speech.clear()
        self.speech_samples = 0
        self.mic.clear()
        self.mic_samples = 0
        self.drained.set()
        self.arrived.set()
        return events

    def close(self) -> None:
        self.closed = True
        self.speech.clear()
        self.speech_samples = 0
        self.mic.clear()
        self.mic_samples = 0
        self.arrived.set()
        self.drained.set()

    def take_tick(self, *, force: bool) -> tuple[np.ndarray, TickInfo] | None:
        """The next 20 ms of the timeline from the first source that has it (``force``: silence if none)."""
        seq = self.seq
        if self.speech:
            seg = self.speech[0].segment
            assert seg is not None
            if seg.pending >= TICK or seg.ended or force:
                audio = np.zeros(TICK, np.float32)
                filled, newest = take_samples(self.speech, audio, seg)
                arrival = self.clock.now() if newest is None else newest
                seg.pending -= filled
                seg.taken += filled
                self.speech_samples -= filled
                seg.last_seq = seq
                self.drained.set()
                if self.mic_samples:  # the caller's audio while the avatar speaks is not used
                    self._pop_mic(min(TICK, self.mic_samples))
                self.seq += 1
                live, self.waiting = self.waiting, False
                return audio, TickInfo(seq, "speech", seg.id, seg.taken / RATE, arrival, live)
            return None  # the rest of this tick's speech is on its way: wait for it (or the deadline)
        if self.mic_samples >= TICK:
            audio, newest = self._pop_mic(TICK)
            self.seq += 1
            return audio, TickInfo(seq, "mic", None, 0.0, self.clock.now() if newest is None else newest)
        if force:
            self.seq += 1
            self.waiting = False
            return np.zeros(TICK, np.float32), TickInfo(seq, "idle", None, 0.0, self.clock.now())
        return None

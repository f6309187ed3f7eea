"""One live avatar: audio in from three sources, paced frames and speech out.

An :class:`AvatarSession` owns the live pipeline of one call::

    push_speech (TTS, agent) ─┐
    push_microphone ──────────┼─► 20 ms ticks ─► 16 kHz ─► AudioWindower ─► MotionGenerator ─► Renderer
    (nothing: idle filler) ───┘   (48 kHz timeline)  (speech gate: mic only)                      │
                                                                                                   ▼
    tracks ◄── Playout (video + the ticks' 48 kHz audio, on one clock) ◄── FrameEntry queue ◄─────┘

The session timeline advances in 20 ms ticks. Each tick takes its audio from
the first source that has some: speech the avatar says (TTS or agent push),
else live microphone audio, else silence once the next frame would otherwise
be late. Speech ticks keep their audio, which plays back in the same frame
period as the lips it drove; microphone ticks only move the lips (the caller
is not echoed) and pass the silero-vad speech gate first; idle ticks give the
generator's idle motion (blinks, gaze, head drift, lips at rest).

Queues and their overflow policies:

- speech: up to ``max_speech_s`` seconds wait to be played; :meth:`push_speech`
  then awaits (back-pressure on the TTS or agent connection);
- microphone: at most ``max_mic_ms`` are held; older audio is dropped (live
  audio is only useful now: when a late packet made the producer fill in
  silence, the burst that follows would otherwise play that much later), and
  microphone audio arriving while the avatar speaks is discarded. Filled-in
  silence leaves the caller's audio playing later; when a whole second of
  microphone frames was ready more than a tick earlier than needed, 20 ms of
  incoming audio is skipped (like a receiver's adaptive jitter buffer), so
  live latency returns to its minimum without dropping rendered frames;
- frames: at most ``max_video_s`` seconds are rendered ahead (the producer
  waits); see :mod:`streaming.playout` for late frames and catching up.

:meth:`clear` (an interruption) drops queued speech, microphone audio and
rendered frames at once, silences the speech already handed to the motion
generator as lookahead, and reports every unfinished segment as interrupted.
Rendering and the model run in an executor, one step at a time per session,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.motion import MotionGenerator
from streaming.clock import Clock, MonotonicClock
from streaming.playout import AudioOut, FrameEntry, Playout, SessionClosed, TickInfo, VideoOut
from streaming.resample import StreamResampler, to_float32, to_int16
from streaming.session_stats import LatencyStats, SessionStats
from streaming.speech_gate import SpeechGate
from streaming.windower import AudioWindower

__all__ = [
    "AudioOut", "AvatarSession", "PlaybackFinished", "PlaybackStarted", "SessionClosed", "SessionConfig",
    "SessionEvent", "SessionFailed", "SessionStats", "SpeechCleared", "VideoOut",
]  # fmt: skip

logger = logging.getLogger(__name__)

RATE = 48000
TICK = 960  # samples per 20 ms tick at 48 kHz
MODEL_RATE = 16000
MIC_SLACK_FRAMES = 25  # microphone frames over which the latency adaptation looks at the slack


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    """How a live session trades latency against robustness.

    Attributes:
        fps: video frame rate.
        seed: random seed of the idle motion (blinks, gaze, head drift).
        window_frames: frames per motion window (1: lowest latency).
        margin_ms: silence is filled in this long before a frame is due, leaving
            time to render it. Rendering takes ~5 ms, but on a machine kept ~90 %
            busy (two calls and other load) waiting for a core takes longer: there
            50 ms gave 2-3 % late frames where 30 ms gave 9 %, for ~15 ms more
            median microphone latency (p95 unchanged).
        max_video_s: rendered frames held ahead of playback at most.
        catch_up_frames: queue length above which frames without speech are dropped.
        max_speech_s: queued speech before :meth:`AvatarSession.push_speech` waits.
        max_mic_ms: microphone audio held at most (older is dropped).
        startup_delay_ms: the first frame is due this long after the first pull.
    """

    fps: float = 25.0
    seed: int = 0
    window_frames: int = 1
    margin_ms: float = 50.0
    max_video_s: float = 0.5
    catch_up_frames: int = 2
    max_speech_s: float = 20.0
    max_mic_ms: float = 60.0
    startup_delay_ms: float = 80.0

    def __post_init__(self) -> None:
        checks = {
            "fps": 1.0 <= self.fps <= 60.0, "window_frames": 1 <= self.window_frames <= 50,
            "margin_ms": 0.0 <= self.margin_ms <= 500.0, "max_video_s": 0.1 <= self.max_video_s <= 10.0,
            "catch_up_frames": self.catch_up_frames >= 1, "max_speech_s": 1.0 <= self.max_speech_s <= 3600.0,
            "max_mic_ms": 20.0 <= self.max_mic_ms <= 5000.0, "startup_delay_ms": 0.0 <= self.startup_delay_ms,
        }  # fmt: skip
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SessionConfig.{name}={getattr(self, name)!r} is out of range")


@dataclass(frozen=True)
class PlaybackStarted:
    """The first frame of a speech segment is playing."""

    segment_id: int


@dataclass(frozen=True)
class PlaybackFinished:
    """A speech segment stopped playing: at its end, or ``interrupted`` by :meth:`AvatarSession.clear`."""

    segment_id: int
    position_s: float
    interrupted: bool


@dataclass(frozen=True)
class SessionFailed:
    """The producer stopped on an unexpected error; the tracks have ended (``error`` describes it)."""

    error: str


SessionEvent = PlaybackStarted | PlaybackFinished | SessionFailed


class SpeechCleared(Exception):
    """:meth:`AvatarSession.push_speech` was waiting for room when :meth:`AvatarSession.clear` was
    called: that speech belongs to the interrupted turn and was dropped."""


@dataclass
class _Segment:
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


def _take_samples(fifo: deque[list[Any]], out: np.ndarray, tag: object) -> int:
    """Fill ``out`` from the front of a FIFO of ``[tag, samples, arrival]`` blocks, stopping at a block
    with another tag (a speech segment's end); returns how many samples were taken."""
    filled = 0
    while filled < len(out) and fifo and fifo[0][0] is tag:
        block = fifo[0][1]
        n = min(len(out) - filled, len(block))
        out[filled : filled + n] = block[:n]
        filled += n
        if n == len(block):
            fifo.popleft()
        else:
            fifo[0][1] = block[n:]
    return filled


class AvatarSession:
    """The live pipeline of one avatar (see the module docstring).

    Args:
        renderer: has ``render(pose, coeffs) -> (H, W, 3) uint8`` and ``size``.
        generator: the motion generator.
        rest: (52,) the portrait's own expression coefficients.
        config: latency and queue settings.
        clock: the media clock (tests inject a virtual one).
        executor: where the model and renderer run (the loop's default executor if omitted).
        speech_gate: gate microphone audio with silero-vad (a :class:`SpeechGate`,
            ``True`` to load one, ``False`` for none).
    """

    def __init__(
        self,
        renderer: Any,
        generator: MotionGenerator,
        rest: np.ndarray,
        *,
        config: SessionConfig | None = None,
        clock: Clock | None = None,
        executor: Executor | None = None,
        speech_gate: SpeechGate | bool = True,
    ) -> None:
        self.config = cfg = config or SessionConfig()
        self.renderer = renderer
        self.generator = generator
        self.clock = clock or MonotonicClock()
        self.executor = executor
        self._gate = SpeechGate() if speech_gate is True else (speech_gate or None)
        self._state = generator.initial_state(np.asarray(rest, np.float32), cfg.seed)
        self._windower = AudioWindower(fps=cfg.fps, window_frames=cfg.window_frames,
                                       context_ms=generator.context_ms, lookahead_ms=generator.lookahead_ms,
                                       sample_rate=MODEL_RATE)
        self._down = StreamResampler(RATE, MODEL_RATE)
        rest_image = self._warm_up()
        self.playout = Playout(fps=cfg.fps, clock=self.clock, initial_image=rest_image, sample_rate=RATE,
                               max_frames=max(2, round(cfg.max_video_s * cfg.fps)),
                               catch_up_frames=cfg.catch_up_frames, startup_delay_s=cfg.startup_delay_ms / 1000,
                               on_play=self._on_play)
        self._speech: deque[list[Any]] = deque()  # [segment, float32 samples at 48 kHz, arrival time]
        self._speech_samples = 0
        self._segments: dict[int, _Segment] = {}
        self._open: _Segment | None = None
        self._next_segment = 1
        self._mic: deque[list[Any]] = deque()  # [None, float32 samples at 48 kHz, arrival time]
        self._mic_samples = 0
        self._mic_in: StreamResampler | None = None
        self._mic_debt = 0  # samples of arriving microphone audio to skip (latency adaptation)
        self._mic_slack: list[float] = []  # how early recent microphone frames were ready
        self._timeline: deque[tuple[np.ndarray, TickInfo]] = deque()  # ticks not yet in a frame
        self._timeline_start = 0  # timeline sample of _timeline[0]
        self._seq = 0
        self._frames_made = 0
        self._zero_pending = False
        self._waiting = False  # the producer found no audio and waited for some
        self._clears = 0  # how many times clear() was called (speech waiting across one is dropped)
        self.error: BaseException | None = None  # what stopped the producer, if it failed
        self._input = asyncio.Event()
        self._drained = asyncio.Event()
        self._listeners: list[Callable[[SessionEvent], None]] = []
        self._latency = LatencyStats()
        self._step_s = 0.0
        self._steps = 0
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def _warm_up(self) -> np.ndarray:
        """Run the generator and renderer once on silence, so the first live window does not pay for
        loading compiled kernels and miss its deadline; returns that idle frame, shown until the first
        real one is ready (the generator's state is immutable: nothing carries over)."""
        warm = AudioWindower(fps=self.config.fps, window_frames=1, context_ms=self.generator.context_ms,
                             lookahead_ms=self.generator.lookahead_ms, sample_rate=MODEL_RATE)
        window = warm.push(np.zeros(MODEL_RATE // 5, np.float32))[0]
        chunk, _ = self.generator.generate(window, self._state)
        if self._gate is not None:
            self._gate.warm_up()
        return np.array(self.renderer.render(chunk.pose[0], chunk.coeffs[0]), copy=True)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the video."""
        return tuple(self.renderer.size)  # type: ignore[return-value]

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start producing frames (the media clock starts at the first pull)."""
        if self._task is None and not self.closed:
            self._task = asyncio.get_running_loop().create_task(self._produce(), name="emote-producer")
            self._task.add_done_callback(self._producer_done)

    def _producer_done(self, task: asyncio.Task[None]) -> None:
        """A producer that failed ends the session's tracks and tells the listeners (a frozen avatar
        would otherwise look alive)."""
        if task.cancelled() or task.exception() is None:
            return
        self.error = task.exception()
        logger.error("avatar session failed: %r", self.error, exc_info=self.error)
        self.playout.close()
        self._emit(SessionFailed(repr(self.error)))

    async def aclose(self) -> None:
        """Stop the producer and end both tracks; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.playout.close()
        self._input.set()
        self._drained.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # our caller is being cancelled too: let it through
        self._speech.clear()
        self._mic.clear()
        self._timeline.clear()

    def add_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        """Call ``listener`` (on the event loop) with every :class:`PlaybackStarted` / :class:`PlaybackFinished`."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # -- inputs --------------------------------------------------------------------------------
    def push_microphone(self, samples: np.ndarray, sample_rate: int) -> None:
        """Live caller audio (mono, int16 or float); never blocks, drops the oldest beyond ``max_mic_ms``."""
        if self.closed:
            return
        if self._mic_in is None or self._mic_in.in_rate != sample_rate:
            self._mic_in = StreamResampler(sample_rate, RATE)
        block = self._mic_in.process(samples)
        if self._mic_debt:  # the timeline runs late (see _adapt_mic_latency): skip some caller audio
            skip = min(self._mic_debt, len(block))
            block, self._mic_debt = block[skip:], self._mic_debt - skip
        self._mic.append([None, block, self.clock.now()])
        self._mic_samples += len(block)
        excess = self._mic_samples - int(self.config.max_mic_ms * RATE / 1000)
        if excess > 0:  # live audio is only useful now: drop the oldest
            self._pop_mic(excess)
        self._input.set()

    async def push_speech(self, samples: np.ndarray, sample_rate: int) -> int:
        """Queue speech for the avatar to say; awaits while ``max_speech_s`` are already queued.

        Args:
            samples: (N,) mono int16 or float audio.
            sample_rate: its rate (8 to 192 kHz).

        Returns:
            The id of the segment it belongs to (a segment opens at the first push
            after :meth:`end_of_speech` or :meth:`clear`).

        Raises:
            SessionClosed: the session was closed.
            SpeechCleared: :meth:`clear` was called while this call waited for room; the
                samples were dropped with the rest of the interrupted speech.
        """
        x = to_float32(samples)
        epoch = self._clears
        while not self.closed and self._speech_samples >= self.config.max_speech_s * RATE:
            self._drained.clear()
            await self._drained.wait()
            if self._clears != epoch:
                raise SpeechCleared("clear() was called while this speech waited to be queued")
        if self.closed:
            raise SessionClosed("the avatar session is closed")
        seg = self._open
        if seg is None:
            seg = self._open = _Segment(self._next_segment)
            self._segments[seg.id] = seg
            self._next_segment += 1
        if seg.resampler is None or seg.resampler.in_rate != sample_rate:
            if seg.resampler is not None:
                self._queue_speech(seg, seg.resampler.flush())
            seg.resampler = StreamResampler(sample_rate, RATE)
        self._queue_speech(seg, seg.resampler.process(x))
        return seg.id

    def end_of_speech(self) -> None:
        """Close the open segment; :class:`PlaybackFinished` follows once it has played."""
        seg, self._open = self._open, None
        if seg is None:
            return
        if seg.resampler is not None:
            self._queue_speech(seg, seg.resampler.flush())
        seg.ended = True
        self._maybe_finish(seg)
        self._input.set()

    def clear(self) -> None:
        """Interrupt: drop queued speech, microphone audio and frames now (see the module docstring)."""
        self._open = None
        self._clears += 1
        for seg in list(self._segments.values()):
            self._finish(seg, interrupted=True)
        self._segments.clear()
        self._speech.clear()
        self._speech_samples = 0
        self._mic.clear()
        self._mic_samples = 0
        self.playout.clear()
        for i, (audio, tick) in enumerate(self._timeline):
            if tick.source == "speech":
                audio[:] = 0.0
                self._timeline[i] = (audio, TickInfo(tick.seq, "idle", None, 0.0, tick.arrival))
        self._zero_pending = True
        self._drained.set()
        self._input.set()

    def _queue_speech(self, seg: _Segment, block: np.ndarray) -> None:
        if len(block):
            self._speech.append([seg, block, self.clock.now()])
            self._speech_samples += len(block)
            seg.pending += len(block)
            self._input.set()

    # -- outputs -------------------------------------------------------------------------------
    async def next_video(self) -> VideoOut:
        """The next video frame, at its deadline on the media clock."""
        return await self.playout.next_video()

    async def next_audio(self) -> AudioOut:
        """The next 20 ms of the avatar's audio, at its deadline."""
        return await self.playout.next_audio()

    def stats(self) -> SessionStats:
        """Counters and latency so far."""
        p = self.playout
        return SessionStats(
            frames=p._assigned + 1, late_frames=p.late_frames, dropped_frames=p.dropped_frames,
            skipped_periods=p.skipped_periods, queued_frames=len(p.entries),
            queued_speech_s=self._speech_samples / RATE, step_ms_mean=1000 * self._step_s / max(self._steps, 1),
            latency_ms_p50=self._latency.percentile(50), latency_ms_p95=self._latency.percentile(95),
            latency_samples=len(self._latency),
        )  # fmt: skip

    # -- the producer --------------------------------------------------------------------------
    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        await self.playout.started.wait()
        while not self.closed:
            await self.playout.wait_for_space()
            tick = self._take_tick(force=False)
            if tick is None:
                due = self.playout.next_due()
                assert due is not None  # the clock has started
                deadline = due - self.config.margin_ms / 1000.0
                if self.clock.now() < deadline:
                    self._waiting = True
                    await self._wait_input(deadline)
                    continue
                tick = self._take_tick(force=True)
            audio, info = tick
            zero, self._zero_pending = self._zero_pending, False
            # Only speech is played back: the caller's microphone is not echoed.
            self._timeline.append((audio if info.source == "speech" else np.zeros_like(audio), info))
            images = await loop.run_in_executor(self.executor, self._advance, audio, info.source == "mic", zero)
            if images and info.source == "mic":
                self._adapt_mic_latency()
            for image in images:
                if not self.closed:
                    self.playout.push(self._frame_entry(image))

    async def _wait_input(self, deadline: float) -> None:
        self._input.clear()
        waiters = {asyncio.ensure_future(self._input.wait()), asyncio.ensure_future(self.clock.sleep_until(deadline))}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def _take_tick(self, *, force: bool) -> tuple[np.ndarray, TickInfo] | None:
        """The next 20 ms of the timeline from the first source that has it (``force``: silence if none)."""
        now = self.clock.now()
        seq = self._seq
        if self._speech:
            seg: _Segment = self._speech[0][0]
            if seg.pending >= TICK or seg.ended or force:
                audio = np.zeros(TICK, np.float32)
                arrival = self._speech[0][2]
                filled = _take_samples(self._speech, audio, seg)
                seg.pending -= filled
                seg.taken += filled
                self._speech_samples -= filled
                seg.last_seq = seq
                self._drained.set()
                self._discard_mic(TICK)
                self._seq += 1
                live, self._waiting = self._waiting, False
                return audio, TickInfo(seq, "speech", seg.id, seg.taken / RATE, arrival, live)
            return None  # the rest of this tick's speech is on its way: wait for it (or the deadline)
        if self._mic_samples >= TICK:
            arrival = self._mic[0][2]
            audio = self._pop_mic(TICK)
            self._seq += 1
            return audio, TickInfo(seq, "mic", None, 0.0, arrival)
        if force:
            self._seq += 1
            self._waiting = False
            return np.zeros(TICK, np.float32), TickInfo(seq, "idle", None, 0.0, now)
        return None

    def _adapt_mic_latency(self) -> None:
        """Skip 20 ms of caller audio when every recent microphone frame was ready a tick early."""
        due = self.playout.next_due()
        if due is None:
            return
        self._mic_slack.append(due - self.config.margin_ms / 1000.0 - self.clock.now())
        if len(self._mic_slack) >= MIC_SLACK_FRAMES:
            if min(self._mic_slack) > TICK / RATE:
                self._mic_debt += TICK
            self._mic_slack.clear()

    def _pop_mic(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        self._mic_samples -= _take_samples(self._mic, out, None)
        return out

    def _discard_mic(self, n: int) -> None:
        if self._mic_samples:
            self._pop_mic(min(n, self._mic_samples))

    def _advance(self, audio48: np.ndarray, is_mic: bool, zero_pending: bool) -> list[np.ndarray]:
        """One tick through the model and renderer (runs in the executor)."""
        t = time.perf_counter()
        if zero_pending:
            self._windower.silence_pending()
        x16 = self._down.process(audio48)
        if self._gate is not None and is_mic:
            x16 = self._gate.process(x16)
        images = []
        for window in self._windower.push(x16):
            chunk, self._state = self.generator.generate(window, self._state)
            for i in range(len(chunk)):
                images.append(np.array(self.renderer.render(chunk.pose[i], chunk.coeffs[i]), copy=True))
        self._step_s += time.perf_counter() - t
        self._steps += 1
        return images

    def _frame_entry(self, image: np.ndarray) -> FrameEntry:
        """Pair a rendered frame with its frame period of the timeline's audio."""
        f = self._frames_made
        self._frames_made += 1
        lo = int(round(f * RATE / self.config.fps))
        hi = int(round((f + 1) * RATE / self.config.fps))
        audio = np.zeros(hi - lo, np.float32)
        ticks = []
        pos = self._timeline_start
        for block, info in self._timeline:
            a, b = max(lo, pos), min(hi, pos + len(block))
            if a < b:
                audio[a - lo : b - lo] = block[a - pos : b - pos]
                ticks.append(info)
            pos += len(block)
        while self._timeline and self._timeline_start + len(self._timeline[0][0]) <= hi:
            self._timeline_start += len(self._timeline.popleft()[0])
        return FrameEntry(image=image, audio=to_int16(audio), ticks=tuple(ticks))

    # -- playback events -----------------------------------------------------------------------
    def _on_play(self, entry: FrameEntry, index: int) -> None:
        if not entry.late and (arrival := entry.arrival) is not None:
            self._latency.add(1000.0 * (self.clock.now() - arrival))
        for tick in entry.ticks:
            seg = self._segments.get(tick.segment) if tick.segment is not None else None
            if seg is None or seg.finished:
                continue
            if not seg.started:
                seg.started = True
                self._emit(PlaybackStarted(seg.id))
            seg.played_seq = max(seg.played_seq, tick.seq)
            seg.played_s = max(seg.played_s, tick.position_s)
            self._maybe_finish(seg)

    def _maybe_finish(self, seg: _Segment) -> None:
        if seg.ended and not seg.finished and seg.pending == 0 and seg.played_seq >= seg.last_seq:
            if not seg.started:  # an empty segment
                seg.started = True
                self._emit(PlaybackStarted(seg.id))
            self._finish(seg, interrupted=False)

    def _finish(self, seg: _Segment, *, interrupted: bool) -> None:
        if seg.finished:
            return
        seg.finished = True
        self._segments.pop(seg.id, None)
        self._emit(PlaybackFinished(seg.id, round(seg.played_s, 3), interrupted))

    def _emit(self, event: SessionEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

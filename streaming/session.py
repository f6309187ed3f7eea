"""One live avatar: audio in from three sources, paced frames and speech out.

An :class:`AvatarSession` owns the live pipeline of one call::

    push_speech (TTS, agent) ─┐
    push_microphone ──────────┼─► 20 ms ticks ─► 16 kHz ─► Animator (windows → motion → frames)
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

Queues and their overflow policies (the input side lives in
:mod:`streaming.session_inputs`):

- speech: up to ``max_speech_s`` seconds wait to be played; :meth:`push_speech`
  then awaits (back-pressure on the TTS or agent connection);
- microphone: at most ``max_mic_ms`` are held, older audio dropped, and 20 ms
  skipped now and then when it runs late (see :mod:`streaming.session_inputs`);
  microphone audio arriving while the avatar speaks is discarded;
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
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from emote.model.media.audio_io import pcm16
from emote.model.motion.interface import MotionGenerator
from emote.model.render.interface import FrameRenderer
from emote.streaming.animator import Animator
from emote.streaming.clock import Clock, MonotonicClock
from emote.streaming.playout import AudioOut, FrameEntry, Playout, SessionClosed, TickInfo, VideoOut
from emote.streaming.resample import StreamResampler
from emote.streaming.session_inputs import (
    RATE,
    TICK,
    InputQueues,
    PlaybackFinished,
    PlaybackStarted,
    SpeechCleared,
)
from emote.streaming.session_stats import LatencyStats, SessionStats
from emote.streaming.speech_gate import SpeechGate

__all__ = [
    "AudioOut", "AvatarSession", "PlaybackFinished", "PlaybackStarted", "SessionClosed", "SessionConfig",
    "SessionEvent", "SessionFailed", "SessionStats", "SpeechCleared", "VideoOut",
]  # fmt: skip

logger = logging.getLogger(__name__)

MODEL_RATE = 16000


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    """How a live session trades latency against robustness.

    Attributes:
        fps: video frame rate.
        seed: random seed of the idle motion (blinks, gaze, head drift).
        margin_ms: silence is filled in this long before a frame is due, leaving
            time to render it. Rendering takes ~5 ms, but on a machine kept ~90 %
            busy (two calls and other load) waiting for a core takes longer: there
            50 ms gave 2-3 % late frames where 30 ms gave 9 %, for ~15 ms more
            median microphone latency (p95 unchanged).
        max_video_s: rendered frames held ahead of playback at most.
        catch_up_frames: frames queued beyond the steady level (see :func:`catch_up_threshold`)
            above which frames without speech are dropped.
        max_speech_s: queued speech before :meth:`AvatarSession.push_speech` waits.
        max_mic_ms: microphone audio held at most (older is dropped).
        startup_delay_ms: the first frame is due this long after the first pull.
    """

    fps: float = 25.0
    seed: int = 0
    margin_ms: float = 50.0
    max_video_s: float = 0.5
    catch_up_frames: int = 0
    max_speech_s: float = 20.0
    max_mic_ms: float = 60.0
    startup_delay_ms: float = 80.0

    def __post_init__(self) -> None:
        checks = {
            "fps": 1.0 <= self.fps <= 60.0,
            "margin_ms": 0.0 <= self.margin_ms <= 500.0, "max_video_s": 0.1 <= self.max_video_s <= 10.0,
            "catch_up_frames": self.catch_up_frames >= 0, "max_speech_s": 1.0 <= self.max_speech_s <= 3600.0,
            "max_mic_ms": 20.0 <= self.max_mic_ms <= 5000.0, "startup_delay_ms": 0.0 <= self.startup_delay_ms,
        }  # fmt: skip
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SessionConfig.{name}={getattr(self, name)!r} is out of range")


def catch_up_threshold(config: SessionConfig, window_frames: int) -> int:
    """Queue length above which the playout drops frames without speech (:mod:`streaming.playout`).

    Frames arrive in bursts of a window (``window_frames``), made up to ``margin_ms`` before the first
    is due and up to a tick earlier when its audio arrives early, so a queue that keeps pace holds up to
    that many frames right after a push; only what late frames pile up beyond it is dropped. (A fixed
    length of 2 dropped 16 % of a microphone call's frames with 2-frame windows and half of them with
    3-frame ones, in steady state, as visible skips in the motion; measured 2026-12-07.)
    """
    ahead = int(np.ceil((config.margin_ms / 1000.0 + TICK / RATE) * config.fps - 1e-9))
    return int(window_frames) + ahead + config.catch_up_frames


@dataclass(frozen=True)
class SessionFailed:
    """The producer stopped on an unexpected error; the tracks have ended (``error`` describes it)."""

    error: str


SessionEvent = PlaybackStarted | PlaybackFinished | SessionFailed


class AvatarSession:
    """The live pipeline of one avatar (see the module docstring).

    Args:
        renderer: this session's frame renderer (``render(pose, coeffs)`` and ``size``).
        generator: the motion generator; its windows are cut as it declares (as offline).
        rest: (52,) the portrait's own expression coefficients.
        config: latency and queue settings.
        clock: the media clock (tests inject a virtual one).
        executor: where the model and renderer run (the loop's default executor if omitted).
        speech_gate: gate microphone audio with silero-vad (a :class:`SpeechGate`,
            ``True`` to load one, ``False`` for none).
    """

    def __init__(
        self,
        renderer: FrameRenderer,
        generator: MotionGenerator[Any],
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
        self._animator = Animator(generator, renderer, rest, fps=cfg.fps, seed=cfg.seed)
        self._down = StreamResampler(RATE, MODEL_RATE)
        rest_image = self._warm_up()
        self.playout = Playout(fps=cfg.fps, clock=self.clock, initial_image=rest_image, sample_rate=RATE,
                               max_frames=max(2, round(cfg.max_video_s * cfg.fps)),
                               catch_up_frames=catch_up_threshold(cfg, generator.window_frames),
                               startup_delay_s=cfg.startup_delay_ms / 1000,
                               on_play=self._on_play)
        self.inputs = InputQueues(self.clock, max_speech_s=cfg.max_speech_s, max_mic_ms=cfg.max_mic_ms)
        self._timeline: deque[tuple[np.ndarray, TickInfo]] = deque()  # ticks not yet in a frame
        self._timeline_start = 0  # timeline sample of _timeline[0]
        self._frames_made = 0
        self._zero_pending = False
        self.error: BaseException | None = None  # what stopped the producer, if it failed
        self._listeners: list[Callable[[SessionEvent], None]] = []
        self._latency = LatencyStats()
        self._step_s = 0.0
        self._steps = 0
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def _warm_up(self) -> np.ndarray:
        """Run the generator and renderer once on silence, so the first live window does not pay for
        loading compiled kernels and miss its deadline; returns that idle frame, shown until the first
        real one is ready (a throwaway animator from the same start: the session's own is untouched)."""
        cfg = self.config
        warm = Animator(self.generator, self.renderer, self._animator.motion.rest, fps=cfg.fps, seed=cfg.seed)
        silence = np.zeros(MODEL_RATE // 5, np.float32)
        image = None
        for frame in warm.push(silence):
            image = np.array(frame, copy=True)
            break
        if image is None:  # a generator with windows longer than 200 ms: end the stream to get a frame
            image = np.array(next(iter(warm.finish())), copy=True)
        if self._gate is not None:
            self._gate.warm_up()
        return image

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the video."""
        width, height = self.renderer.size
        return int(width), int(height)

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
        self.inputs.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # our caller is being cancelled too: let it through
        self._timeline.clear()

    def add_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        """Call ``listener`` (on the event loop) with every :class:`PlaybackStarted` / :class:`PlaybackFinished`."""
        self._listeners.append(listener)

    # -- inputs --------------------------------------------------------------------------------
    def push_microphone(self, samples: np.ndarray, sample_rate: int) -> None:
        """Live caller audio (mono, int16 or float); never blocks, drops the oldest beyond ``max_mic_ms``."""
        self.inputs.push_microphone(samples, sample_rate)  # ignored once closed

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
        return await self.inputs.push_speech(samples, sample_rate)

    def end_of_speech(self) -> None:
        """Close the open segment; :class:`PlaybackFinished` follows once it has played."""
        for event in self.inputs.end_of_speech():
            self._emit(event)

    def clear(self) -> None:
        """Interrupt: drop queued speech, microphone audio and frames now (see the module docstring)."""
        for event in self.inputs.clear():
            self._emit(event)
        self.playout.clear()
        for i, (audio, tick) in enumerate(self._timeline):
            if tick.source == "speech":
                audio[:] = 0.0
                self._timeline[i] = (audio, TickInfo(tick.seq, "idle", None, 0.0, tick.arrival))
        self._zero_pending = True

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
            queued_speech_s=self.inputs.speech_samples / RATE, step_ms_mean=1000 * self._step_s / max(self._steps, 1),
            latency_ms_p50=self._latency.percentile(50), latency_ms_p95=self._latency.percentile(95),
            latency_samples=len(self._latency),
        )  # fmt: skip

    # -- the producer --------------------------------------------------------------------------
    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        await self.playout.started.wait()
        while not self.closed:
            await self.playout.wait_for_space()
            tick = self.inputs.take_tick(force=False)
            if tick is None:
                due = self.playout.next_due()
                assert due is not None  # the clock has started
                deadline = due - self.config.margin_ms / 1000.0
                if self.clock.now() < deadline:
                    self.inputs.waiting = True
                    await self._wait_input(deadline)
                    continue
                tick = self.inputs.take_tick(force=True)
                assert tick is not None  # forced: silence when there is nothing else
            audio, info = tick
            zero, self._zero_pending = self._zero_pending, False
            # Only speech is played back: the caller's microphone is not echoed.
            self._timeline.append((audio if info.source == "speech" else np.zeros_like(audio), info))
            images = await loop.run_in_executor(self.executor, self._advance, audio, info.source == "mic", zero)
            if images and info.source == "mic" and (due := self.playout.next_due()) is not None:
                self.inputs.adapt_mic_latency(due - self.config.margin_ms / 1000.0 - self.clock.now())
            for image in images:
                if not self.closed:
                    self.playout.push(self._frame_entry(image))

    async def _wait_input(self, deadline: float) -> None:
        self.inputs.arrived.clear()
        waiters = {asyncio.ensure_future(self.inputs.arrived.wait()),
                   asyncio.ensure_future(self.clock.sleep_until(deadline))}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def _advance(self, audio48: np.ndarray, is_mic: bool, zero_pending: bool) -> list[np.ndarray]:
        """One tick through the model and renderer (runs in the executor)."""
        t = time.perf_counter()
        if zero_pending:
            self._animator.silence()
        x16 = self._down.process(audio48)
        if self._gate is not None and is_mic:
            x16 = self._gate.process(x16)
        images = [np.array(frame, copy=True) for frame in self._animator.push(x16)]
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
        return FrameEntry(image=image, audio=pcm16(audio), ticks=tuple(ticks))

    # -- playback events -----------------------------------------------------------------------
    def _on_play(self, entry: FrameEntry, index: int) -> None:
        if not entry.late and (arrival := entry.arrival) is not None:
            self._latency.add(1000.0 * (self.clock.now() - arrival))
        for event in self.inputs.played(entry.ticks):
            self._emit(event)

    def _emit(self, event: SessionEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

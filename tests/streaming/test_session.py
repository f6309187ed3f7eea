"""AvatarSession and Playout on virtual time: cadence, speech in sync, interruption, sources, limits."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import pytest

from emote.model.motion.baseline.generator import BaselineGenerator
from emote.model.motion.still import StillGenerator
from emote.streaming.clock import VirtualClock
from emote.streaming.offline import MERGE_FRAMES
from emote.streaming.resample import StreamResampler
from emote.streaming.session import (
    AvatarSession,
    PlaybackFinished,
    PlaybackStarted,
    SessionClosed,
    SessionConfig,
    SessionEvent,
)  # fmt: skip
from tests._fixtures import run_generator
from tests._session_fakes import JAW, Driver, IndexRenderer, InlineExecutor, render_count

FPS = 25.0
REST = np.zeros(52, np.float32)


def bursts(seconds: float, rate: int = 16000, hz: float = 2.5, seed: int = 0) -> np.ndarray:
    """Voiced syllable-like bursts (a 180 Hz buzz with formants, on for half of each 1/hz cycle)."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    buzz = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate((180, 360, 540, 720), 1))
    gate = (np.sin(2 * np.pi * hz * t - 0.3) > 0).astype(np.float32)
    return (0.3 * buzz * gate).astype(np.float32)


def envelope(x: np.ndarray, hop: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = len(x) // hop
    return np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(1))


def make_session(clock: VirtualClock, executor: Executor | None = None, **config: Any) -> AvatarSession:
    return AvatarSession(IndexRenderer(), BaselineGenerator(), REST, config=SessionConfig(**config), clock=clock,
                         executor=executor or InlineExecutor(), speech_gate=False)


@pytest.mark.asyncio
async def test_idle_frames_come_at_their_deadlines_in_order_with_silence() -> None:
    clock = VirtualClock()
    async with Driver(make_session(clock), clock) as d:
        await d.run(2.0)
        stats = d.session.stats()
    got = d.received
    assert [v.index for v in got.video] == list(range(len(got.video)))
    assert 47 <= len(got.video) <= 49  # 2 s at 25 fps after an 80 ms start-up delay
    start = got.video_times[0]
    assert np.allclose(np.array(got.video_times) - start, np.arange(len(got.video)) / FPS, atol=1e-9)
    assert stats.late_frames == 0 and not any(v.late for v in got.video)
    counts = [render_count(v.image) for v in got.video]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # each frame rendered once, in order
    assert not got.audio_samples.any()
    assert len(got.audio) == pytest.approx(2 * len(got.video), abs=2)
    assert got.jaw.max() < 0.05  # lips at rest


@pytest.mark.asyncio
async def test_speech_plays_back_in_sync_with_the_lips_and_reports_its_segment() -> None:
    clock = VirtualClock()
    speech = bursts(1.6)
    events: list[SessionEvent] = []
    async with Driver(make_session(clock), clock) as d:
        d.session.add_listener(events.append)
        await d.run(0.4)
        segment = await d.session.push_speech(speech, 16000)
        d.session.end_of_speech()
        await d.run(2.6)
    got = d.received
    assert events == [PlaybackStarted(segment), PlaybackFinished(segment, 1.6, False)]
    out = got.audio_samples.astype(np.float64) / 32768
    # The speech comes back whole: the same envelope, at 48 kHz.
    ref = StreamResampler(16000, 48000).process(speech)
    env_out, env_ref = envelope(out, 480), envelope(ref, 480)
    lag = int(np.argmax(np.correlate(env_out, env_ref, "valid")))
    aligned = env_out[lag : lag + len(env_ref)]
    assert np.corrcoef(aligned, env_ref)[0, 1] > 0.99
    assert abs(aligned.sum() / env_ref.sum() - 1) < 0.02
    # Lips move with that audio in the same frame periods (the mouth leads by a frame or two at most).
    frame_env = envelope(out, 1920)[: len(got.video)]
    jaw = got.jaw[: len(frame_env)]
    lags = range(-3, 4)
    r = [np.corrcoef(np.roll(jaw, -k)[5:-5], frame_env[5:-5])[0, 1] for k in lags]
    best = list(lags)[int(np.argmax(r))]
    assert max(r) > 0.6 and -2 <= best <= 0, (r, best)
    assert jaw[-10:].max() < 0.05  # shut again after the speech


@pytest.mark.asyncio
async def test_clear_silences_within_one_frame_and_reports_interrupted() -> None:
    clock = VirtualClock()
    events: list[SessionEvent] = []
    async with Driver(make_session(clock), clock) as d:
        d.session.add_listener(events.append)
        await d.run(0.2)
        segment = await d.session.push_speech(bursts(4.0, hz=4.0), 16000)
        await d.run(1.0)
        n_audio = len(d.received.audio)
        assert np.abs(d.received.audio_samples[-4800:]).max() > 1000  # speaking
        d.session.clear()
        await d.run(1.0)
        stats = d.session.stats()
    after = np.concatenate([a.samples for a in d.received.audio[n_audio + 2 :]])
    assert not after.any()  # silent from the second 20 ms chunk after clear() on (one frame period)
    assert events[0] == PlaybackStarted(segment)
    finished = events[1]
    assert isinstance(finished, PlaybackFinished) and finished.interrupted and finished.segment_id == segment
    assert 0.7 < finished.position_s < 1.1
    assert len(events) == 2
    assert stats.queued_speech_s == 0
    assert d.received.jaw[-10:].max() < 0.05  # lips came to rest


@pytest.mark.asyncio
async def test_segments_in_a_row_each_report_and_empty_segment_finishes() -> None:
    clock = VirtualClock()
    events: list[SessionEvent] = []
    async with Driver(make_session(clock), clock) as d:
        d.session.add_listener(events.append)
        first = await d.session.push_speech(bursts(0.5), 16000)
        d.session.end_of_speech()
        second = await d.session.push_speech(bursts(0.3, rate=24000), 24000)
        d.session.end_of_speech()
        await d.run(1.5)
    assert first != second
    assert events == [PlaybackStarted(first), PlaybackFinished(first, 0.5, False),
                      PlaybackStarted(second), PlaybackFinished(second, 0.3, False)]


@pytest.mark.asyncio
async def test_a_starved_agent_gets_silence_and_the_cadence_holds() -> None:
    clock = VirtualClock()
    speech = bursts(1.0)
    async with Driver(make_session(clock), clock) as d:
        await d.run(0.2)
        await d.session.push_speech(speech[:8000], 16000)
        await d.run(1.0)  # the agent is 0.5 s late with the rest
        await d.session.push_speech(speech[8000:], 16000)
        d.session.end_of_speech()
        await d.run(1.0)
        stats = d.session.stats()
    assert stats.late_frames == 0
    out = d.received.audio_samples.astype(np.float64) / 32768
    ref = StreamResampler(16000, 48000).process(speech)
    assert (out**2).sum() == pytest.approx((ref.astype(np.float64) ** 2).sum(), rel=0.03)  # all of it, once
    loud = np.flatnonzero(envelope(out, 480) > 0.01)  # 10 ms steps
    gaps = np.diff(loud)
    assert gaps.max() * 0.01 > 0.45  # the agent's 0.5 s delay became silence (burst pauses are 0.2 s)


@pytest.mark.asyncio
async def test_push_speech_applies_back_pressure() -> None:
    clock = VirtualClock()
    async with Driver(make_session(clock, max_speech_s=1.0, max_video_s=0.2), clock) as d:
        block = bursts(0.5)
        pushes = asyncio.create_task(_push_blocks(d.session, block, 6))
        await d.run(0.1)
        assert not pushes.done()
        assert d.session.stats().queued_speech_s <= 1.5
        await d.run(3.5)
        assert pushes.done()
        await pushes


async def _push_blocks(session: AvatarSession, block: np.ndarray, n: int) -> None:
    for _ in range(n):
        await session.push_speech(block, 16000)


@pytest.mark.asyncio
async def test_microphone_moves_the_lips_but_is_not_echoed_and_its_buffer_is_bounded() -> None:
    clock = VirtualClock()
    mic = StreamResampler(16000, 48000).process(bursts(2.0))
    mic_int16 = (mic * 32767).astype(np.int16)
    async with Driver(make_session(clock, max_mic_ms=100.0), clock) as d:
        await d.run(0.2)
        for i in range(0, len(mic_int16), 960):  # 20 ms packets in real time, like a WebRTC track
            d.session.push_microphone(mic_int16[i : i + 960], 48000)
            await d.run(0.02)
        await d.run(0.5)
        d.session.push_microphone(np.zeros(48000 * 5, np.int16), 48000)  # a 5 s burst at once
        held = d.session.inputs.mic_samples
        stats = d.session.stats()
    assert not d.received.audio_samples.any()
    assert d.received.jaw.max() > 0.2
    assert held <= 0.1 * 48000 + 960
    assert stats.latency_ms_p95 is not None and stats.latency_ms_p95 < 250


class HeldExecutor(Executor):
    """Runs work only when the test releases it (a renderer that cannot keep up)."""

    def __init__(self) -> None:
        self.held: list[tuple[Future[Any], Any, tuple[Any, ...]]] = []
        self.holding = True

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.held.append((future, fn, args))
        if not self.holding:
            self.release_all()
        return future

    def release_all(self) -> None:
        self.holding = False
        while self.held:
            future, fn, args = self.held.pop(0)
            future.set_result(fn(*args))


@pytest.mark.asyncio
async def test_the_cadence_never_stalls_when_rendering_falls_behind() -> None:
    clock = VirtualClock()
    executor = HeldExecutor()
    async with Driver(make_session(clock, executor=executor), clock) as d:
        await d.run(0.5)
        frames_before = len(d.received.video)
        assert frames_before >= 10  # nothing was rendered, yet frames came on time
        assert all(v.late for v in d.received.video)
        executor.release_all()  # the renderer catches up and keeps up from now on
        await d.run(1.6)
        stats = d.session.stats()
    assert not any(v.late for v in d.received.video[-20:])
    assert stats.late_frames >= frames_before
    assert d.session.playout.entries.maxlen is None and len(d.session.playout.entries) <= 4


@pytest.mark.asyncio
async def test_close_ends_the_tracks_and_releases_everything() -> None:
    clock = VirtualClock()
    session = make_session(clock)
    d = Driver(session, clock)
    async with d:
        await d.run(0.3)
        await session.push_speech(bursts(1.0), 16000)
        await d.run(0.2)
    assert session.closed and session._task is not None and session._task.done()
    with pytest.raises(SessionClosed):
        await session.next_video()
    with pytest.raises(SessionClosed):
        await session.push_speech(bursts(0.1), 16000)
    assert not session._timeline and not session.inputs.speech and not session.playout.entries
    await session.aclose()  # idempotent
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not leftover


@pytest.mark.asyncio
async def test_memory_stays_bounded_over_a_long_live_stream() -> None:
    clock = VirtualClock()
    mic = (StreamResampler(16000, 48000).process(bursts(1.0)) * 32767).astype(np.int16)
    async with Driver(make_session(clock), clock) as d:
        for second in range(30):
            for i in range(0, len(mic), 960):
                d.session.push_microphone(mic[i : i + 960], 48000)
                await d.run(0.02, step=0.01)
            if second % 10 == 9:
                assert len(d.session._timeline) <= 12
                assert len(d.session.playout.entries) <= d.session.playout.max_frames
                assert len(d.session.playout._played) <= 9
        stats = d.session.stats()
    assert stats.frames == pytest.approx(30 * 25, abs=3)
    assert stats.late_frames == 0


@pytest.mark.asyncio
async def test_streaming_motion_matches_offline_motion_for_the_same_audio() -> None:
    speech = bursts(3.0, hz=3.0, seed=3)
    # Offline: the windows the file renderer uses.
    offline_jaw = run_generator(BaselineGenerator(), speech, rest=REST, fps=FPS, merge_frames=MERGE_FRAMES,
                                chunk=len(speech)).coeff("jawOpen")
    # Streaming: one-frame windows behind a 48 kHz timeline; the speech is queued before the clock starts.
    clock = VirtualClock()
    session = make_session(clock)
    await session.push_speech(speech, 16000)
    session.end_of_speech()
    async with Driver(session, clock) as d:
        await d.run(3.5)
    renderer = session.renderer
    streamed_jaw = np.array([c[JAW] for c in renderer.coeffs[1:]])  # [0] is the warm-up image
    n = len(offline_jaw) - 3
    assert len(streamed_jaw) >= n
    assert np.corrcoef(streamed_jaw[:n], offline_jaw[:n])[0, 1] > 0.99
    assert np.abs(streamed_jaw[:n] - offline_jaw[:n]).max() < 0.05


@pytest.mark.asyncio
async def test_the_speech_gate_keeps_lips_still_in_microphone_noise_and_lets_speech_through() -> None:
    from emote.streaming.speech_gate import SpeechGate
    from tests._fixtures import silence, speech_16k

    rng = np.random.default_rng(1)
    speech = speech_16k("Hello there. I am listening to you now.")
    noise = 0.03 * rng.standard_normal(16000 * 2).astype(np.float32)  # a fan, loud enough to move ungated lips
    signal = np.concatenate([noise, speech + 0.03 * rng.standard_normal(len(speech)).astype(np.float32), silence(0.5)])
    mic = (StreamResampler(16000, 48000).process(signal) * 32767).astype(np.int16)
    jaws = {}
    for gated in (True, False):
        clock = VirtualClock()
        session = AvatarSession(IndexRenderer(), BaselineGenerator(), REST, clock=clock, executor=InlineExecutor(),
                                speech_gate=SpeechGate() if gated else False)
        async with Driver(session, clock) as d:
            for i in range(0, len(mic), 960):
                d.session.push_microphone(mic[i : i + 960], 48000)
                await d.run(0.02, step=0.01)
        jaws[gated] = d.received.jaw
    noise_frames = slice(10, 45)  # the 2 s of noise, after start-up and before the lookahead reaches speech
    speech_frames = slice(60, 60 + int(len(speech) / 16000 * 25) - 10)
    assert jaws[True][noise_frames].max() < 0.02  # gated: at rest in the noise
    assert jaws[False][noise_frames].max() > 0.04  # ungated, the same noise moves them
    assert jaws[True][speech_frames].max() > 0.2  # speech gets through


@pytest.mark.asyncio
async def test_latency_counts_live_audio_only() -> None:
    speech = bursts(2.0)
    results = {}
    for mode in ("bulk", "streamed"):
        clock = VirtualClock()
        async with Driver(make_session(clock), clock) as d:
            await d.run(0.3)
            if mode == "bulk":
                await d.session.push_speech(speech, 16000)
                await d.run(2.5)
            else:  # 100 ms chunks as a streaming TTS produces them, in real time
                for i in range(0, len(speech), 1600):
                    await d.session.push_speech(speech[i : i + 1600], 16000)
                    await d.run(0.1)
                await d.run(0.5)
            results[mode] = d.session.stats()
    assert results["bulk"].latency_samples <= 2  # queued speech is not latency
    streamed = results["streamed"]
    assert streamed.latency_samples >= 15  # one per 100 ms chunk
    assert streamed.latency_ms_p95 is not None and 100 < streamed.latency_ms_p95 < 250


@pytest.mark.asyncio
async def test_a_jittery_microphone_keeps_latency_bounded() -> None:
    clock = VirtualClock()
    mic = (StreamResampler(16000, 48000).process(bursts(4.0)) * 32767).astype(np.int16)
    packets = [mic[i : i + 960] for i in range(0, len(mic), 960)]
    async with Driver(make_session(clock), clock) as d:
        await d.run(0.2)
        for k, packet in enumerate(packets):
            if k % 50 == 40:  # every second the network holds 5 packets back for 100 ms, then bursts them
                await d.run(0.1)
            if k % 50 not in range(40, 45):
                await d.run(0.02)
            d.session.push_microphone(packet, 48000)
        await d.run(0.3)
        stats = d.session.stats()
    assert stats.late_frames == 0
    assert stats.latency_ms_p95 is not None and stats.latency_ms_p95 < 250
    assert stats.dropped_frames <= 2 * 4  # at most a frame or two per hiccup, not a growing backlog


@pytest.mark.asyncio
async def test_speech_waiting_for_room_is_dropped_by_clear() -> None:
    from emote.streaming.session import SpeechCleared

    clock = VirtualClock()
    events: list[SessionEvent] = []
    async with Driver(make_session(clock, max_speech_s=1.0), clock) as d:
        d.session.add_listener(events.append)
        await d.session.push_speech(bursts(3.0), 16000)  # fills the queue beyond max_speech_s
        waiting = asyncio.create_task(d.session.push_speech(bursts(1.0, seed=5), 16000))
        await d.run(0.1)
        assert not waiting.done()
        d.session.clear()
        await d.run(0.02)
        with pytest.raises(SpeechCleared):
            await waiting
        await d.run(1.5)
    assert [type(e) for e in events] == [PlaybackStarted, PlaybackFinished]  # nothing after the clear
    assert not d.received.audio_samples[-48000:].any()


class BrokenRenderer(IndexRenderer):
    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after

    def render(self, pose: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
        if self.calls >= self.fail_after:
            raise RuntimeError("renderer broke")
        return super().render(pose, coeffs)


@pytest.mark.asyncio
async def test_a_failing_producer_ends_the_tracks_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    from emote.streaming.session import SessionFailed

    clock = VirtualClock()
    session = AvatarSession(BrokenRenderer(fail_after=10), BaselineGenerator(), REST, clock=clock,
                            executor=InlineExecutor(), speech_gate=False)
    events: list[SessionEvent] = []
    session.add_listener(events.append)
    async with Driver(session, clock) as d:
        await d.run(1.0)
        assert isinstance(session.error, RuntimeError)
        assert [type(e) for e in events] == [SessionFailed] and "renderer broke" in events[0].error
        with pytest.raises(SessionClosed):
            await session.next_video()
        assert 5 <= len(d.received.video) <= 12  # the video stopped instead of freezing on
    assert "avatar session failed" in caplog.text


@pytest.mark.asyncio
async def test_aclose_lets_its_callers_cancellation_through() -> None:
    clock = VirtualClock()
    session = make_session(clock)
    await session.start()
    closing = asyncio.create_task(session.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert session.closed


@pytest.mark.asyncio
async def test_a_ticks_latency_counts_from_the_newest_audio_it_shows() -> None:
    """A tick that starts with the tail of an older packet shows the next packet first: its arrival."""
    from emote.streaming.session_inputs import InputQueues

    clock = VirtualClock()
    q = InputQueues(clock, max_speech_s=20.0, max_mic_ms=200.0)
    q.push_microphone(np.full(1000, 1000, np.int16), 48000)  # 20.8 ms: a tick and a 40-sample tail
    await clock.advance(0.02)
    q.push_microphone(np.full(1000, 1000, np.int16), 48000)
    first, second = q.take_tick(force=False), q.take_tick(force=False)
    assert first is not None and second is not None
    assert first[1].arrival == pytest.approx(0.0) and second[1].arrival == pytest.approx(0.02)


class StillBlocks(StillGenerator):
    """The still generator cut into windows of several frames with a frame of lookahead, as a learned
    model that makes frames in blocks is (the playout sees its frames arrive in bursts)."""

    lookahead_ms = 40.0

    def __init__(self, window_frames: int) -> None:
        self.window_frames = window_frames


@pytest.mark.asyncio
@pytest.mark.parametrize("window_frames", [1, 2, 3, 4])
async def test_a_steady_microphone_call_plays_every_frame_whatever_the_window(window_frames: int) -> None:
    clock = VirtualClock()
    mic = (StreamResampler(16000, 48000).process(bursts(4.0)) * 32767).astype(np.int16)
    session = AvatarSession(IndexRenderer(), StillBlocks(window_frames), REST, clock=clock,
                            executor=InlineExecutor(), speech_gate=False)
    async with Driver(session, clock) as d:
        for i in range(0, len(mic), 960):
            d.session.push_microphone(mic[i : i + 960], 48000)
            await d.run(0.02)
        stats = d.session.stats()
    # Frames come in bursts of a window; a queue that keeps pace is not a backlog to drop from.
    assert (stats.dropped_frames, stats.late_frames) == (0, 0)
    counts = [render_count(v.image) for v in d.received.video]
    made = counts[counts.index(1) :]  # from the first frame the call made (0 is the warm-up idle frame)
    assert np.all(np.diff(made) <= 1) and np.all(np.diff(made) >= 0)

"""AudioWindower: frame-aligned windows with context and lookahead, bounded memory, clean end of stream.

The source signal is a ramp (sample ``i`` has the value ``i + 1``, exact in float32), so every window
sample names the absolute stream position it was copied from: a known answer for each value, and zero
means "outside the stream".
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from emote.model.motion.interface import AudioWindow, frame_start_sample
from emote.streaming.windower import AudioWindower
from tests._fixtures import chunked

SR = 16000
FPS_VALUES = [25.0, 30.0, 29.97]


def ramp(n: int) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.float32)


def stream(windower: AudioWindower, samples: np.ndarray, sizes: int | list[int]) -> list[AudioWindow]:
    """Push ``samples`` in pieces, check nothing complete is held back, then finish."""
    windows: list[AudioWindow] = []
    pushed = 0
    for piece in chunked(samples, sizes):
        windows += windower.push(piece)
        pushed += len(piece)
        # Released as soon as the lookahead is there: the next full window must still be incomplete.
        nxt = frame_start_sample(windower.next_frame + windower.window_frames, windower.fps, SR)
        assert nxt + windower.lookahead > pushed
    return windows + windower.finish()


@pytest.mark.parametrize("fps", FPS_VALUES)
@pytest.mark.parametrize("window_frames", [1, 7, 25])
@pytest.mark.parametrize(
    ("n_samples", "sizes"),
    [
        (9_777, 1),  # one sample at a time (short stream: 10k pushes)
        (61_013, 533),
        (61_013, [17, 4000, 1, 640, 1601]),
        (61_013, 61_013),  # everything at once
        (150, 150),  # under half a frame at every rate: rounds to 0 frames, no windows at all
        (400, 400),  # over half a frame: rounds to 1 frame, released by finish()
    ],
)
def test_windows_tile_the_frame_sequence(
    fps: float, window_frames: int, n_samples: int, sizes: int | list[int]
) -> None:
    windower = AudioWindower(fps=fps, window_frames=window_frames, context_ms=20.0, lookahead_ms=85.0)
    windows = stream(windower, ramp(n_samples), sizes)

    expected_frames = int(round(n_samples * fps / SR))
    assert sum(w.n_frames for w in windows) == expected_frames
    ends = 0
    for w in windows:  # consecutive: each window starts where the previous one ended
        assert w.start_frame == ends
        ends += w.n_frames
    # Every window drives 1..window_frames frames, except that the stream may end with an empty final window.
    assert all(1 <= w.n_frames <= window_frames for w in windows[:-1])
    assert 0 <= windows[-1].n_frames <= window_frames and windows[-1].final
    assert all(w.n_frames == window_frames for w in windows[:-1])  # only the last one may be short
    assert all(w.fps == fps and w.sample_rate == SR for w in windows)
    if windows:
        assert [w.final for w in windows] == [False] * (len(windows) - 1) + [True]


@pytest.mark.parametrize("fps", FPS_VALUES)
@pytest.mark.parametrize(
    ("context_ms", "lookahead_ms", "window_frames"),
    [
        (20.0, 85.0, 25),  # what the baseline generator asks for
        (13.3, 7.7, 3),  # fractional milliseconds: rounded up to whole samples
        (0.0, 0.0, 1),
        (250.0, 1500.0, 7),  # lookahead longer than the whole stream: everything comes from finish()
    ],
)
def test_window_samples_are_the_stream_at_absolute_positions(
    fps: float, context_ms: float, lookahead_ms: float, window_frames: int
) -> None:
    n = 17_011
    windower = AudioWindower(fps=fps, window_frames=window_frames, context_ms=context_ms, lookahead_ms=lookahead_ms)
    windows = stream(windower, ramp(n), [1000, 37, 2222])
    context = math.ceil(context_ms * SR / 1000)
    lookahead = math.ceil(lookahead_ms * SR / 1000)

    assert windows
    for w in windows:
        need_lo = frame_start_sample(w.start_frame, fps, SR) - context
        need_hi = frame_start_sample(w.start_frame + w.n_frames, fps, SR) + lookahead
        assert w.first_sample <= need_lo
        assert w.first_sample + len(w.samples) >= need_hi
        assert w.samples.dtype == np.float32
        pos = w.first_sample + np.arange(len(w.samples))
        inside = (pos >= 0) & (pos < n)
        # The ramp's value at position p is p + 1: each sample must come from its own absolute position.
        np.testing.assert_array_equal(w.samples[inside], (pos[inside] + 1).astype(np.float32))
        assert not np.any(w.samples[~inside]), "samples before the start or after the end must be zeros"
    assert windows[0].first_sample < 0 or context == 0
    assert windows[-1].first_sample + len(windows[-1].samples) > n  # the end is padded with silence


def test_memory_stays_bounded_over_ten_minutes() -> None:
    fps, window_frames, context_ms, lookahead_ms = 29.97, 25, 20.0, 85.0
    windower = AudioWindower(fps=fps, window_frames=window_frames, context_ms=context_ms, lookahead_ms=lookahead_ms)
    # Between pushes the buffer holds at most context + one window + lookahead (+ rounding): it is trimmed
    # after every cut, so the bound does not grow with the stream or the chunk size.
    bound = (
        math.ceil(context_ms * SR / 1000)
        + math.ceil(lookahead_ms * SR / 1000)
        + math.ceil(window_frames * SR / fps)
        + 2
    )
    block = np.random.default_rng(0).uniform(-0.5, 0.5, 16_000 * 5).astype(np.float32)
    sizes = [160, 321, 1000, 7, 2048]
    total, frames, largest = 0, 0, 0
    k = 0
    while total < 10 * 60 * SR:
        size = sizes[k % len(sizes)]
        start = total % len(block)
        piece = block[start : start + size]
        for w in windower.push(piece):
            frames += w.n_frames
        total += len(piece)
        largest = max(largest, len(windower._buf))
        assert largest <= bound, f"buffer holds {largest} samples after {total / SR:.1f} s"
        k += 1
    frames += sum(w.n_frames for w in windower.finish())
    assert frames == round(total * fps / SR)
    # A buffer that is never trimmed would reach 9.6 M samples; one that is trimmed only lazily would
    # exceed the bound above, which is about 1.2 windows of audio.
    assert largest > bound // 2  # the bound is tight enough to mean something


def test_push_after_finish_raises_and_finish_is_idempotent() -> None:
    windower = AudioWindower(fps=25.0, window_frames=5, context_ms=20.0, lookahead_ms=85.0)
    windower.push(np.zeros(1000, np.float32))
    assert windower.finish()
    assert windower.finish() == []
    with pytest.raises(RuntimeError, match="after finish"):
        windower.push(np.zeros(10, np.float32))


def test_empty_stream_gives_one_empty_final_window() -> None:
    windower = AudioWindower(fps=25.0, window_frames=5, context_ms=20.0, lookahead_ms=85.0)
    assert windower.push(np.zeros(0, np.float32)) == []
    (last,) = windower.finish()
    assert last.final and last.n_frames == 0 and last.start_frame == 0


@pytest.mark.parametrize(("fps", "window_frames"), [(0.0, 5), (-25.0, 5), (25.0, 0)])
def test_invalid_arguments_raise(fps: float, window_frames: int) -> None:
    with pytest.raises(ValueError, match="fps"):
        AudioWindower(fps=fps, window_frames=window_frames, context_ms=0.0, lookahead_ms=0.0)


def test_last_window_is_final_even_without_lookahead() -> None:
    windower = AudioWindower(fps=25.0, window_frames=25, context_ms=0.0, lookahead_ms=0.0)
    windows = windower.push(ramp(SR)) + windower.finish()  # exactly 25 frames
    assert sum(w.n_frames for w in windows) == 25
    assert windows[-1].final


@pytest.mark.parametrize("fps", FPS_VALUES)
@pytest.mark.parametrize("sizes", [20_011, [320, 17, 4000]])
@pytest.mark.parametrize("context_ms", [20.0, 0.0])
def test_silence_pending_zeroes_the_audio_from_the_next_frame_on(
    fps: float, sizes: int | list[int], context_ms: float
) -> None:
    # An interruption: speech already pushed as lookahead for frames not yet released must not reach them.
    n1, n2 = 20_011, 9_000
    windower = AudioWindower(fps=fps, window_frames=5, context_ms=context_ms, lookahead_ms=85.0)
    source = ramp(n1 + n2)
    before = [w for piece in chunked(source[:n1], sizes) for w in windower.push(piece)]
    first_pending = windower.next_frame
    cut = frame_start_sample(first_pending, fps, SR)  # the first sample of the first frame not yet released
    assert before and 0 < cut < n1  # some windows released, and audio is pending beyond them
    released = [w.samples.copy() for w in before]

    windower.silence_pending()
    after = [w for piece in chunked(source[n1:], sizes) for w in windower.push(piece)] + windower.finish()

    for w, samples in zip(before, released, strict=True):  # what was released is not touched
        np.testing.assert_array_equal(w.samples, samples)
    assert after[0].start_frame == first_pending
    context = math.ceil(context_ms * SR / 1000)
    assert after[0].first_sample == cut - context
    for w in after:
        pos = w.first_sample + np.arange(len(w.samples))
        # Context before the cut: the original audio. From the cut to the end of what was pushed: exact zeros.
        # Audio pushed after silence_pending(): itself again. Outside the stream: zeros.
        kept = (pos >= 0) & ((pos < cut) | ((pos >= n1) & (pos < n1 + n2)))
        expected = np.where(kept, pos + 1, 0).astype(np.float32)
        np.testing.assert_array_equal(w.samples, expected)
    covered = np.concatenate([w.first_sample + np.arange(len(w.samples)) for w in after])
    assert np.any((covered >= cut) & (covered < n1)), "the silenced stretch is in the windows that follow"
    if context:
        assert np.any((covered >= cut - context) & (covered < cut)), "and so is the context kept before it"


def test_silence_pending_with_nothing_pending_changes_nothing() -> None:
    def windows(silence_first: bool) -> list[AudioWindow]:
        windower = AudioWindower(fps=25.0, window_frames=5, context_ms=20.0, lookahead_ms=85.0)
        if silence_first:
            windower.silence_pending()  # an interruption before any audio: nothing to silence
        out = windower.push(ramp(8_000))
        return out + windower.push(ramp(10_000)[8_000:]) + windower.finish()

    plain, silenced = windows(False), windows(True)
    assert len(plain) == len(silenced)
    for a, b in zip(plain, silenced, strict=True):
        assert (a.start_frame, a.n_frames, a.first_sample) == (b.start_frame, b.n_frames, b.first_sample)
        np.testing.assert_array_equal(a.samples, b.samples)


def test_silence_pending_twice_and_right_after_a_release() -> None:
    windower = AudioWindower(fps=25.0, window_frames=5, context_ms=20.0, lookahead_ms=85.0)
    # 5 frames = 3200 samples, + 1360 lookahead: pushing 4560 releases exactly one window.
    (first,) = windower.push(ramp(4_560))
    assert first.n_frames == 5 and windower.next_frame == 5
    windower.silence_pending()
    windower.silence_pending()  # a second interruption is harmless
    rest = windower.finish()
    pos = rest[0].first_sample + np.arange(len(rest[0].samples))
    np.testing.assert_array_equal(rest[0].samples, np.where((pos >= 0) & (pos < 3_200), pos + 1, 0))
    assert sum(w.n_frames for w in [first, *rest]) == round(4_560 * 25 / SR)

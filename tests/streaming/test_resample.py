"""streaming.resample: block-wise conversion is one continuous conversion (no clicks, no drift, right pitch).

A resampler that restarted its filter at every block would still give the right number of samples give or
take, so the tests compare against a one-shot conversion of the whole signal and look for discontinuities at
block edges in the second difference of a pure tone, where a glitch of a fraction of a percent stands out.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from emote.streaming.resample import MAX_RATE, MIN_RATE, StreamResampler, to_float32
from tests._fixtures import chunked

RATE_PAIRS = [(22050, 48000), (48000, 16000), (44100, 48000), (16000, 48000), (24000, 16000), (8000, 192000)]


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def convert(samples: np.ndarray, in_rate: int, out_rate: int, sizes: int | list[int]) -> np.ndarray:
    """The whole stream through one resampler, in blocks, flushed at the end."""
    resampler = StreamResampler(in_rate, out_rate)
    out = [resampler.process(block) for block in chunked(samples, sizes)]
    out.append(resampler.flush())
    for block in out:
        assert block.dtype == np.float32 and block.ndim == 1
    return np.concatenate(out)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    window = np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(samples * window))
    k = int(np.argmax(spectrum))
    # Parabolic interpolation between bins: sub-bin accuracy, so a few-Hz pitch shift is visible.
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + offset) * rate / len(samples)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
@pytest.mark.parametrize("sizes", [441, [1, 37, 960, 5000, 13]])
def test_blocks_convert_like_the_whole_signal(in_rate: int, out_rate: int, sizes: int | list[int]) -> None:
    rng = np.random.default_rng(1)
    signal = (0.3 * rng.standard_normal(in_rate)).astype(np.float32)  # 1 s of broadband noise
    whole = convert(signal, in_rate, out_rate, len(signal))
    blocks = convert(signal, in_rate, out_rate, sizes)
    assert len(blocks) == len(whole)
    np.testing.assert_allclose(blocks, whole, atol=1e-5)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_no_clicks_at_block_edges(in_rate: int, out_rate: int) -> None:
    amplitude, freq = 0.5, 440.0
    out = convert(tone(freq, in_rate, 1.0, amplitude), in_rate, out_rate, 441)
    core = out[out_rate // 50 : -out_rate // 50]  # away from the start and end of the stream
    # A sine's second difference is bounded by A * (2 pi f / rate)^2; a gap, a repeated or a dropped sample at
    # a block edge makes it jump by orders of magnitude.
    bound = amplitude * (2 * np.pi * freq / out_rate) ** 2
    d2 = np.abs(np.diff(core, 2))
    assert d2.max() < 1.5 * bound, f"second difference {d2.max():.4g} vs {bound:.4g} for a clean tone"
    assert np.abs(core).max() == pytest.approx(amplitude, rel=0.02)  # neither lost nor gained level


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS + [(192000, 8000), (11025, 16000)])
@pytest.mark.parametrize("n", [4_000, 22_050, 100_003])
@pytest.mark.parametrize("block", [320, 4096])
def test_length_after_flush_matches_the_rate_ratio(in_rate: int, out_rate: int, n: int, block: int) -> None:
    rng = np.random.default_rng(n)
    out = convert((0.1 * rng.standard_normal(n)).astype(np.float32), in_rate, out_rate, block)
    assert abs(len(out) - n * out_rate / in_rate) <= 2


def test_flush_releases_the_tail_and_restarts_the_stream() -> None:
    signal = tone(440.0, 22050, 0.5)
    resampler = StreamResampler(22050, 48000)
    body = resampler.process(signal)
    tail = resampler.flush()
    assert 0 < len(tail) < 200  # the filter delay, not a second copy of the block
    assert abs(len(body) + len(tail) - len(signal) * 48000 / 22050) <= 2
    # After flush the same resampler converts a new stream from scratch, exactly like a fresh one.
    again = np.concatenate([resampler.process(signal), resampler.flush()])
    np.testing.assert_array_equal(again, np.concatenate([body, tail]))


@pytest.mark.parametrize(("in_rate", "out_rate"), [(22050, 48000), (48000, 16000), (16000, 48000)])
def test_pitch_is_preserved(in_rate: int, out_rate: int) -> None:
    out = convert(tone(440.0, in_rate, 1.0), in_rate, out_rate, 441)
    steady = out[out_rate // 10 : -out_rate // 10]
    # Within 1 Hz; a stream taken at the wrong rate would move the tone to 440 * out / in (hundreds of Hz away).
    assert peak_hz(steady, out_rate) == pytest.approx(440.0, abs=1.0)


def test_same_rate_passes_through_as_a_copy() -> None:
    resampler = StreamResampler(48000, 48000)
    block = tone(440.0, 48000, 0.02)
    out = resampler.process(block)
    np.testing.assert_array_equal(out, block)
    out[:] = 0.0
    assert block.any()  # the caller's block is untouched
    assert len(resampler.flush()) == 0


def test_empty_block_gives_empty_output() -> None:
    resampler = StreamResampler(22050, 48000)
    out = resampler.process(np.zeros(0, np.float32))
    assert out.dtype == np.float32 and out.shape == (0,)


def test_int16_input_is_scaled_to_float() -> None:
    pcm = (tone(440.0, 22050, 0.5) * 32767).round().astype(np.int16)
    from_int = convert(pcm, 22050, 48000, 441)
    from_float = convert(pcm.astype(np.float32) / 32768.0, 22050, 48000, 441)
    np.testing.assert_allclose(from_int, from_float, atol=1e-6)
    assert 0.45 < np.abs(from_int).max() < 0.55  # in [-1, 1], not in int16 units

    np.testing.assert_array_equal(
        to_float32(np.array([-32768, 0, 16384, 32767], np.int16)),
        np.array([-1.0, 0.0, 0.5, 32767 / 32768], np.float32),
    )
    doubles = np.array([0.25, -0.5])
    assert to_float32(doubles).dtype == np.float32


@pytest.mark.parametrize(("in_rate", "out_rate", "name"), [
    (MIN_RATE - 1, 48000, "in_rate"),
    (0, 48000, "in_rate"),
    (-16000, 48000, "in_rate"),
    (48000, MAX_RATE + 1, "out_rate"),
    (16000, 100, "out_rate"),
])  # fmt: skip
def test_unsupported_rates_raise_naming_the_argument(in_rate: int, out_rate: int, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}=-?\d+: sample rates from {MIN_RATE} to {MAX_RATE} Hz"):
        StreamResampler(in_rate, out_rate)


def test_supported_range_edges_are_accepted() -> None:
    assert StreamResampler(MIN_RATE, MAX_RATE).out_rate == MAX_RATE
    assert StreamResampler(MAX_RATE, MIN_RATE).in_rate == MAX_RATE


@pytest.mark.parametrize("shape", [(2, 480), (480, 2), ()])
def test_not_mono_raises_with_the_shape(shape: tuple[int, ...]) -> None:
    resampler = StreamResampler(48000, 16000)
    with pytest.raises(ValueError, match=re.escape(f"one channel, a 1-D array; got shape {shape}")):
        resampler.process(np.zeros(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64])
def test_unreadable_sample_type_raises_naming_it(dtype: type) -> None:
    with pytest.raises(ValueError, match=f"int16 or float, got {np.dtype(dtype)}"):
        StreamResampler(48000, 16000).process(np.zeros(480, dtype))


@pytest.mark.parametrize("rate", [16000, 22050, 24000])
def test_speech_through_the_48k_timeline_reaches_the_model_as_a_direct_conversion_would(rate: int) -> None:
    """Speech pushed at ``rate`` is converted to the session's 48 kHz timeline (what is played back), and
    the model hears that timeline at 16 kHz: two conversions where one could do. Measured here, below
    6 kHz it is the same signal as a direct conversion (> 95 dB apart; 16 kHz agent speech loses some of
    the band just below its Nyquist frequency in the round trip: 77 dB up to 7 kHz, 43 dB over the full
    band; the model's features live far below that) at the same CPU
    (either way two resamplers run, since playback needs 48 kHz), so the session keeps one continuous
    48 -> 16 kHz stream for every source: switching between per-source streams would click."""
    rng = np.random.default_rng(rate)
    n = rate * 2
    x = (np.sin(2 * np.pi * 180 * np.arange(n) / rate) * 0.3 + rng.normal(0, 0.05, n)).astype(np.float32)
    x = np.convolve(x, np.ones(5) / 5, mode="same").astype(np.float32)  # speech-like: little energy near Nyquist

    def convert(chain: list[tuple[int, int]]) -> np.ndarray:
        stages = [StreamResampler(a, b) for a, b in chain]
        out = []
        for i in range(0, n, rate // 50):  # 20 ms blocks, as they arrive live
            y = x[i : i + rate // 50]
            for stage in stages:
                y = stage.process(y)
            out.append(y)
        return np.concatenate(out)

    via_timeline = convert([(rate, 48000), (48000, 16000)])
    direct = convert([(rate, 16000)])
    m = min(len(via_timeline), len(direct)) - 200
    a, b = direct[200:m], via_timeline[200:m]
    spectrum_a, spectrum_b = np.fft.rfft(a), np.fft.rfft(b)
    band = np.fft.rfftfreq(len(a), 1 / 16000) < 6000  # where speech features live
    error = np.sum(np.abs(spectrum_a[band] - spectrum_b[band]) ** 2)
    snr_db = 10 * np.log10(np.sum(np.abs(spectrum_a[band]) ** 2) / error)
    assert snr_db > 90.0, snr_db

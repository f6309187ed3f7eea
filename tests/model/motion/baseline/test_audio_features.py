"""Acoustic features on synthetic signals with known answers: tones, pulse trains, noise, silence, vowels.

Every signal is generated here; each expected value follows from how the signal was made (the period of a
pulse train, the RMS of a sine, the flat spectrum of white noise, the resonances of a formant filter).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from emote.model.motion.baseline.audio_features import (
    HALF_WIN,
    HOP,
    SAMPLE_RATE,
    WIN,
    HopFeatures,
    hop_features,
    hop_frames,
)

SR = SAMPLE_RATE
FIRST_HOP, N_HOPS = 3, 150  # hops 3..152 lie wholly inside a 2 s signal that starts at sample 0


def pulse_train(f0: float, seconds: float = 2.0, amplitude: float = 0.5) -> np.ndarray:
    """Unit impulses every ``SR / f0`` samples (rounded to whole samples)."""
    x = np.zeros(int(seconds * SR), np.float64)
    x[np.round(np.arange(0, len(x) - 0.5, SR / f0)).astype(int)] = amplitude
    return x


def harmonic_tone(f0: float, seconds: float = 2.0) -> np.ndarray:
    """Sum of all harmonics of ``f0`` below 3.5 kHz with 1/k amplitudes (a band-limited sawtooth)."""
    t = np.arange(int(seconds * SR)) / SR
    k = np.arange(1, int(3500 // f0) + 1)
    return (0.1 * np.sin(2 * np.pi * f0 * t[:, None] * k + 0.3 * k) / k).sum(axis=1).astype(np.float32)


def resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """Two-pole resonance at ``freq`` Hz with ``bandwidth`` Hz (a formant)."""
    r = np.exp(-np.pi * bandwidth / SR)
    theta = 2 * np.pi * freq / SR
    return lfilter([1.0 - r], [1.0, -2.0 * r * np.cos(theta), r * r], x)


def vowel(f0: float, f1: float, f2: float) -> np.ndarray:
    """A glottal pulse train through three formant resonances (F3 fixed at 2.6 kHz), peak 0.5."""
    x = pulse_train(f0, amplitude=1.0)
    for freq, bw in ((f1, 80.0), (f2, 100.0), (2600.0, 150.0)):
        x = resonator(x, freq, bw)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def features(x: np.ndarray) -> HopFeatures:
    return hop_features(np.asarray(x, np.float32), 0, FIRST_HOP, N_HOPS)


@pytest.mark.parametrize("f0", [100.0, 200.0])
def test_pulse_train_is_voiced_at_its_pitch(f0: float) -> None:
    f = features(pulse_train(f0))
    assert f.voicing.min() > 0.9
    np.testing.assert_allclose(f.pitch_hz, f0, rtol=0.02)


def test_harmonic_tones_read_their_own_pitch() -> None:
    wrong = {}
    for f0 in range(100, 305, 10):
        f = features(harmonic_tone(float(f0)))
        assert f.voicing.min() > 0.9  # periodic: this part holds
        off = np.abs(f.pitch_hz / f0 - 1.0) > 0.03
        if off.mean() > 0.05:
            wrong[f0] = float(np.median(f.pitch_hz[off]))
    assert not wrong, f"pitch wrong on > 5% of hops for f0 -> typical reading: {wrong}"


def test_white_noise_is_unvoiced_with_half_its_energy_above_3500_hz() -> None:
    f = features(np.random.default_rng(1).standard_normal(2 * SR) * 0.1)
    # Below the 0.45 pitch threshold everywhere (a periodic signal scores > 0.9 above).
    assert f.voicing.max() < 0.4
    assert np.median(f.voicing) < 0.25
    assert not np.any(f.pitch_hz)
    # A flat spectrum puts (8000 - 3500) / 8000 of the power above 3.5 kHz and its centroid at 4 kHz.
    assert np.median(f.high_ratio) == pytest.approx(4500 / 8000, abs=0.03)
    assert f.high_ratio.min() > 0.35
    assert np.median(f.centroid_hz) == pytest.approx(4000.0, abs=200.0)


def test_sine_level_centroid_and_no_hiss() -> None:
    t = np.arange(2 * SR) / SR
    f = features(0.5 * np.sin(2 * np.pi * 1000.0 * t))
    # RMS of a sine of amplitude A is A / sqrt(2); a 25 ms frame holds 25 whole periods of 1 kHz.
    np.testing.assert_allclose(f.level_db, 20 * np.log10(0.5 / np.sqrt(2)), atol=0.05)
    np.testing.assert_allclose(f.centroid_hz, 1000.0, atol=5.0)
    assert f.high_ratio.max() < 1e-3


def test_silence_has_very_low_level_and_no_voicing_or_formants() -> None:
    f = features(np.zeros(2 * SR))
    assert f.level_db.max() < -100.0
    assert not np.any(f.voicing > 0.1)
    assert not np.any(f.pitch_hz)
    assert not np.any(f.f1_hz) and not np.any(f.f2_hz)
    quiet = features(np.random.default_rng(2).standard_normal(2 * SR) * 0.001)  # -60 dBFS noise
    np.testing.assert_allclose(quiet.level_db, -60.0, atol=1.5)


@pytest.mark.parametrize("f0", [100.0, 120.0])
@pytest.mark.parametrize(("f1", "f2"), [(700.0, 1200.0), (650.0, 1700.0), (500.0, 900.0)])
def test_vowel_formants_are_found(f0: float, f1: float, f2: float) -> None:
    f = features(vowel(f0, f1, f2))
    assert f.voicing.min() > 0.9
    # LPC on a 25 ms window reads F1 a few percent high (the harmonics it sits between pull it);
    # 12 % is ~85 Hz at 700 Hz, a fifth of the 350..800 Hz span the mouth maps to jaw opening, while
    # reporting the wrong resonance (F2 as F1, F3 as F2) would be off by more than 50 %.
    np.testing.assert_allclose(f.f1_hz, f1, rtol=0.12)
    np.testing.assert_allclose(f.f2_hz, f2, rtol=0.05)


def test_close_front_vowel_has_low_f1_and_high_f2() -> None:
    f = features(vowel(110.0, 300.0, 2300.0))
    # Low F1 sits among the first harmonics and reads high (~360-390 Hz): only its order matters here.
    assert np.all(f.f1_hz < 450.0)
    np.testing.assert_allclose(f.f2_hz, 2300.0, rtol=0.05)


def test_hop_frames_cut_the_absolute_grid() -> None:
    first_sample = -300
    buf = np.arange(5000, dtype=np.float32) + first_sample  # buf value = stream position
    frames = hop_frames(buf, first_sample, 1, 20)
    assert frames.shape == (20, WIN)
    expected = (np.arange(1, 21)[:, None] * HOP - HALF_WIN) + np.arange(WIN)[None, :]
    np.testing.assert_array_equal(frames, expected.astype(np.float32))
    assert hop_frames(buf, first_sample, 0, 0).shape == (0, WIN)


@pytest.mark.parametrize(
    ("first_sample", "n", "first_hop", "n_hops"),
    [
        (0, 4000, 0, 1),  # hop 0 needs samples -200 .. 199
        (0, 4000, 1, 3),  # hop 1 needs sample -40
        (-200, 4000, 0, 24),  # the last hop (23) needs up to 3879 + 200 > 3800
        (1000, 4000, 5, 1),  # a buffer that starts after the hop
    ],
)
def test_hop_frames_raise_when_the_buffer_does_not_cover_the_hops(
    first_sample: int, n: int, first_hop: int, n_hops: int
) -> None:
    with pytest.raises(ValueError, match="outside the buffer"):
        hop_frames(np.zeros(n, np.float32), first_sample, first_hop, n_hops)


def test_hop_frames_accept_a_buffer_that_just_covers_the_hops() -> None:
    # Hops 2..11 need samples 2 * 160 - 200 = 120 up to 11 * 160 + 200 = 1960 (exclusive).
    frames = hop_frames(np.zeros(1960 - 120, np.float32), 120, 2, 10)
    assert frames.shape == (10, WIN)


def test_features_do_not_depend_on_how_hops_are_batched() -> None:
    """The generator measures hops window by window; any batching must give bit-identical numbers."""
    rng = np.random.default_rng(3)
    x = (vowel(130.0, 600.0, 1500.0)[:SR] + 0.05 * rng.standard_normal(SR)).astype(np.float32)
    x[6000:9000] *= 0.01  # a quiet stretch
    whole = hop_features(x, 0, 2, 90)
    parts, hop = [], 2
    for n in (1, 7, 30, 2, 50):
        parts.append(hop_features(x[hop * HOP - HALF_WIN :], hop * HOP - HALF_WIN, hop, n))
        hop += n
    for name in ("level_db", "voicing", "pitch_hz", "high_ratio", "centroid_hz", "f1_hz", "f2_hz"):
        np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in parts]), getattr(whole, name), name)

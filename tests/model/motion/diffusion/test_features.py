"""The motion model's audio features: on an absolute grid, the same however the stream is cut."""

from __future__ import annotations

import numpy as np
import pytest

from emote.model.motion.diffusion.features import (
    FRAME_DIM,
    HOP_DIM,
    MARGIN_SAMPLES,
    N_MELS,
    clip_features,
    frame_features,
    hop_features,
    mel_matrix,
)


@pytest.fixture(scope="module")
def mel() -> np.ndarray:
    return mel_matrix()


def tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * hz * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)


def test_shapes_and_filterbank(mel: np.ndarray) -> None:
    assert mel.shape == (257, N_MELS) and (mel >= 0).all() and (mel.sum(axis=0) > 0).all()
    feats = clip_features(tone(1.0), 25, mel)
    assert feats.shape == (25, FRAME_DIM) and FRAME_DIM == 4 * HOP_DIM
    assert np.isfinite(feats).all()


def test_a_frame_reads_the_same_features_from_any_buffer_that_holds_it(mel: np.ndarray) -> None:
    x = tone(2.0)
    whole = clip_features(x, 50, mel)
    for first_frame in (3, 17, 31):
        lo = first_frame * 640 - MARGIN_SAMPLES - 123  # a buffer starting anywhere before the frame's audio
        hi = (first_frame + 5) * 640 + MARGIN_SAMPLES + 7
        part = frame_features(x[lo:hi], lo, first_frame, 5, mel)
        np.testing.assert_allclose(part, whole[first_frame : first_frame + 5], rtol=1e-5, atol=1e-5)


def test_loudness_pitch_and_voicing_show(mel: np.ndarray) -> None:
    quiet = clip_features(np.zeros(16000, np.float32), 25, mel)
    loud = clip_features((0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)).astype(np.float32), 25, mel)
    energy, voicing, pitch = (slice(N_MELS + i, None, HOP_DIM) for i in range(3))
    assert loud[5:20, energy].mean() > quiet[5:20, energy].mean() + 10  # log energy
    assert loud[5:20, voicing].mean() > 0.9 and quiet[5:20, voicing].max() < 0.5
    np.testing.assert_allclose(np.exp(loud[5:20, pitch]) * 100, 200, rtol=0.03)  # log(f0 / 100 Hz)


def test_digital_silence_sounds_like_a_quiet_room(mel: np.ndarray) -> None:
    zeros = hop_features(np.zeros(16000, np.float32), 0, 10, 50, mel, "mel+formants")
    hiss = (np.random.default_rng(5).standard_normal(16000) * 1e-4).astype(np.float32)  # -80 dBFS white noise
    room = hop_features(hiss, 0, 10, 50, mel, "mel+formants")
    bands = slice(0, 40)
    assert np.all(np.isfinite(zeros))
    assert np.abs(zeros[:, bands].mean(axis=0) - room[:, bands].mean(axis=0)).max() < 1.0  # nats; log(2) apart
    assert zeros[:, bands].mean() > np.log(1e-8) + 1.0  # not the floor of log(0)
    # The hiss belongs to the stream sample: the same hops from another buffer read the same features.
    again = hop_features(np.zeros(8000, np.float32), 800, 10, 40, mel, "mel+formants")
    np.testing.assert_array_equal(again, zeros[:40])

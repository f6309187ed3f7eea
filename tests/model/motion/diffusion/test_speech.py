"""Whisper's encoder as the motion model's ears: its filterbank, and features that a live stream computes
exactly as training did, from the audio of their own block and the seconds before it, never after."""

from __future__ import annotations

import numpy as np
import pytest

from emote.model.motion.diffusion.features import DITHER_TRACK
from emote.model.motion.diffusion.speech import (
    CONTEXT_FRAMES,
    SPEECH_DIM,
    block_mel,
    clip_speech,
    encode,
    frames_speech,
    whisper_filters,
)

pytest.importorskip("ctranslate2")
FRAME = 640


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced bursts with moving formants and noisy gaps: enough structure for the encoder to respond to."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 12))
    gate = np.sin(2 * np.pi * 3.1 * t) > -0.2
    return (0.2 * voiced * gate + 0.02 * rng.standard_normal(len(t)) * ~gate).astype(np.float32)


def test_the_filterbank_is_whispers() -> None:
    from transformers.audio_utils import mel_filter_bank

    expected = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                               sampling_rate=16000, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(whisper_filters(), expected, atol=1e-7)


@pytest.mark.parametrize("block", [2, 3])
def test_live_buffers_give_the_training_features(block: int) -> None:
    x = speech_like(5.0)
    whole = clip_speech(x, 125, block, DITHER_TRACK, 1.0)
    assert whole.shape == (125, SPEECH_DIM) and np.isfinite(whole).all()
    for first in (0, 7, 31, 100):  # at the stream start, mid-block, past the context
        n = 6
        lo = max(0, ((first // block) * block - CONTEXT_FRAMES) * FRAME - 400)
        end = -(-(first + n) // block) * block  # the end of the last frame's block (a live window ends there)
        hi = end * FRAME + 200  # the blocks' audio and half an analysis window, nothing more
        got = frames_speech(x[lo:hi], lo, first, n, block, DITHER_TRACK, 1.0)
        np.testing.assert_allclose(got, whole[first : first + n], atol=1e-5)


def test_a_buffer_that_ends_inside_a_block_encodes_what_it_holds() -> None:
    """At other frame rates a window may end inside a block: its frames then come from an encoding of the
    audio up to the last whole frame the buffer holds, never reading past it."""
    x = speech_like(4.0)
    whole = clip_speech(x, 100, 3, DITHER_TRACK, 1.0)
    for tail in (40, 600):  # block 19 (frames 57-59) reads to sample 640 * 60 + 40: held
        got = frames_speech(x[: 60 * FRAME + tail], 0, 55, 4, 3, DITHER_TRACK, 1.0)
        np.testing.assert_allclose(got, whole[55:59], atol=1e-5)
    got = frames_speech(x[: 60 * FRAME - 50], 0, 55, 4, 3, DITHER_TRACK, 1.0)  # block 19 is not
    np.testing.assert_allclose(got[:2], whole[55:57], atol=1e-5)  # block 18: whole
    held = encode(block_mel(x, 0, 59, DITHER_TRACK, 1.0)[None])[0]  # the audio up to frame 59
    expected = held[-4:].reshape(2, 2, SPEECH_DIM).mean(axis=1)
    np.testing.assert_allclose(got[2:], expected, atol=1e-5)


def test_a_frame_hears_its_block_and_the_seconds_before_never_after() -> None:
    x = speech_like(6.0)
    y = x.copy()
    cut = 60 * FRAME + 40  # block 19 (frames 57-59) reads to half an analysis window past the last hop's centre
    y[cut:] = speech_like(6.0, seed=1)[cut:] * 3.0  # other audio after it
    y[: 5 * FRAME] = 0.0  # and more than CONTEXT_FRAMES before frame 57: silence
    a, b = clip_speech(x, 150, 3, DITHER_TRACK, 1.0), clip_speech(y, 150, 3, DITHER_TRACK, 1.0)
    np.testing.assert_allclose(a[57:60], b[57:60], atol=1e-5)  # block 19 = frames 57..59
    assert np.abs(a[60:63] - b[60:63]).mean() > 0.05  # the next block hears the change
    assert np.abs(a[3:6] - b[3:6]).mean() > 0.05


def test_voice_and_silence_read_differently() -> None:
    x = np.concatenate([speech_like(2.0), np.zeros(32000, np.float32)])
    f = clip_speech(x, 100, 3, DITHER_TRACK, 10 ** (-65 / 20) / 1e-4)
    talking, quiet = f[15:45], f[70:]
    assert np.linalg.norm(talking.mean(0) - quiet.mean(0)) > 5 * quiet.std(0).mean()


def test_the_context_is_the_feature_sets_and_reads_no_further() -> None:
    """``+speech`` hears the 2 s before a block's end, ``+speech1s`` the 1 s: audio changed between the two reaches
    only the first; the live path (frames_speech) uses the same context as training (clip_speech)."""
    from emote.model.motion.diffusion.features import frame_dim, speech_context

    assert speech_context("mel+formants+speech") == CONTEXT_FRAMES == 50
    assert speech_context("mel+formants+speech1s") == speech_context("mel+speech1s") == 25
    assert speech_context("mel+formants") == 0
    assert frame_dim("mel+formants+speech1s") == frame_dim("mel+formants+speech")
    with pytest.raises(ValueError, match=r"mel\+formants\+speech1s"):
        speech_context("mel+formants+speech3s")
    x = speech_like(5.0)
    y = x.copy()
    y[40 * FRAME : 55 * FRAME] = speech_like(1.0, seed=2)[: 15 * FRAME]  # 1.2-0.6 s before block 29 (frames 87-89)
    for context, changed in ((25, False), (50, True)):
        a = clip_speech(x, 100, 3, DITHER_TRACK, 1.0, context=context)
        b = clip_speech(y, 100, 3, DITHER_TRACK, 1.0, context=context)
        assert bool(np.abs(a[87:90] - b[87:90]).mean() > 0.05) is changed
        if not changed:
            np.testing.assert_allclose(a[87:90], b[87:90], atol=1e-5)
        lo = (87 - context) * FRAME - 400
        got = frames_speech(y[lo : 90 * FRAME + 200], lo, 87, 3, 3, DITHER_TRACK, 1.0, context)
        np.testing.assert_allclose(got, b[87:90], atol=1e-5)

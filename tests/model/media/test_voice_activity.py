"""Voice activity per video frame (model.media.voice_activity): generated speech with known silences."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from emote.model.errors import DependencyError
from emote.model.media import voice_activity as vad
from tests._fixtures import silence, speech_16k

FPS = 25.0
MARGIN_S = 0.15  # silero pads segments by 30 ms and ends a segment up to ~100 ms late


def test_frames_from_segments_marks_overlapping_frames() -> None:
    mask = vad.frames_from_segments(np.array([[0.1, 0.25], [0.9, 1.0]]), 12, 10.0)
    np.testing.assert_array_equal(np.flatnonzero(mask), [1, 2, 9])  # 0.2..0.3 overlaps; 1.0 only touches frame 10
    assert not vad.frames_from_segments(np.zeros((0, 2)), 5, FPS).any()


def test_missing_silero_raises_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # makes `import silero_vad` raise ImportError
    with pytest.raises(DependencyError, match="silero-vad.*make install"):
        vad.voice_activity(np.zeros(16000, np.float32), 25, FPS)


def test_speech_found_in_spoken_parts_and_not_in_silences() -> None:
    pytest.importorskip("silero_vad")
    import torch

    first = speech_16k("Good morning. My name is Emote, and I can talk about anything you like.")
    second = speech_16k("Open wide, say aah, and then close your mouth again.")
    parts = [silence(1.0), first, silence(1.0), second, silence(1.0)]
    audio = np.concatenate(parts)
    edges = np.cumsum([0] + [len(p) for p in parts]) / 16000  # part boundaries in seconds
    n_frames = int(len(audio) / 16000 * FPS)
    threads = torch.get_num_threads()
    activity = vad.voice_activity(audio, n_frames, FPS)
    assert torch.get_num_threads() == threads
    assert activity.frames.shape == (n_frames,) and activity.fps == FPS
    assert activity.segments.ndim == 2 and len(activity.segments) >= 2
    t = (np.arange(n_frames) + 0.5) / FPS
    rms = np.sqrt(np.mean(audio[: n_frames * 640].reshape(n_frames, 640) ** 2, axis=1))
    level = 20 * np.log10(np.maximum(rms, 1e-9))
    for i in (0, 2, 4):  # silences: no speech away from their edges
        inside = (t > edges[i] + MARGIN_S) & (t < edges[i + 1] - MARGIN_S)
        assert not activity.frames[inside].any(), f"speech found in silence {i // 2}"
    for i in (1, 3):  # spoken parts: every vowel is speech, and most frames are
        spoken = (t > edges[i]) & (t < edges[i + 1])
        loud = spoken & (level > level.max() - 15)  # vowels; not the fading ends of words before a comma
        assert activity.frames[loud].all()
        assert activity.frames[spoken].mean() > 0.85
    assert (activity.segments[:, 0] > edges[0] - MARGIN_S).all() and (activity.segments[:, 1] < edges[5]).all()


def test_silence_and_empty_audio_hold_no_speech() -> None:
    pytest.importorskip("silero_vad")
    assert len(vad.speech_segments(np.zeros(0, np.float32))) == 0
    activity = vad.voice_activity(silence(2.0), 50, FPS)
    assert activity.segments.shape == (0, 2) and not activity.frames.any()

"""Where a recording holds speech, per video frame, with the silero-vad model.

The evaluation asks what a face does while nobody speaks (a real mouth rests,
a generated one should too), so it needs the voice-free stretches of the
driving audio on the video's frame grid. This wraps silero-vad: the small
model shipped inside the ``silero-vad`` package (TorchScript, no download)
finds speech segments in 16 kHz mono audio, and a frame counts as speech
when its time interval overlaps a segment. The model is loaded by
:mod:`~emote.model.media.silero` (shared with the live speech gate).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from emote.model.media.silero import SAMPLE_RATE, load_silero_model, silero_module

_LOCK = threading.Lock()  # the model keeps recurrent state: one caller at a time


@dataclass(frozen=True)
class VoiceActivity:
    """Speech in a recording, as segments and on a video frame grid.

    Attributes:
        segments: (K, 2) float64 start and end of each speech segment, in seconds.
        frames: (T,) bool, True where the frame's interval ``[i / fps, (i + 1) / fps)``
            overlaps a segment.
        fps: the frame rate of ``frames``.
    """

    segments: np.ndarray
    frames: np.ndarray
    fps: float


@functools.lru_cache(maxsize=1)
def _model() -> Any:
    """The TorchScript model bundled in the silero-vad package (loaded once)."""
    return load_silero_model()


def speech_segments(
    samples_16k: np.ndarray,
    *,
    threshold: float = 0.5,
    min_speech_ms: int = 250,
    min_silence_ms: int = 100,
    pad_ms: int = 30,
) -> np.ndarray:
    """Speech segments of 16 kHz mono audio.

    Runs on one CPU thread (torch's thread count is restored afterwards).

    Args:
        samples_16k: (N,) mono samples at 16 kHz in [-1, 1].
        threshold: speech probability above which a 32 ms window is speech.
        min_speech_ms: shorter speech bursts are dropped.
        min_silence_ms: shorter pauses do not split a segment.
        pad_ms: each segment is widened by this much on both sides.

    Returns:
        (K, 2) float64 start and end times in seconds, in order and not overlapping.

    Raises:
        DependencyError: silero-vad or torch is not installed.
    """
    silero = silero_module()
    import torch

    audio = torch.from_numpy(np.ascontiguousarray(samples_16k, np.float32).ravel())
    if audio.numel() == 0:
        return np.zeros((0, 2))
    with _LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model = _model()
            with torch.inference_mode():
                found = silero.get_speech_timestamps(
                    audio,
                    model,
                    threshold=threshold,
                    sampling_rate=SAMPLE_RATE,
                    min_speech_duration_ms=min_speech_ms,
                    min_silence_duration_ms=min_silence_ms,
                    speech_pad_ms=pad_ms,
                )
        finally:
            torch.set_num_threads(threads)
    return np.array([[s["start"], s["end"]] for s in found], np.float64).reshape(-1, 2) / SAMPLE_RATE


def frames_from_segments(segments: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """Mark the video frames that overlap any segment.

    Args:
        segments: (K, 2) start and end times in seconds.
        n_frames: number of frames T.
        fps: frame rate; frame i covers ``[i / fps, (i + 1) / fps)`` seconds.

    Returns:
        (T,) bool, True where the frame's interval overlaps a segment (by more than an instant).
    """
    start = np.arange(n_frames) / fps
    end = start + 1.0 / fps
    mask = np.zeros(n_frames, bool)
    for s, e in np.asarray(segments, np.float64).reshape(-1, 2):
        mask |= (start < e) & (end > s)
    return mask


def voice_activity(samples_16k: np.ndarray, n_frames: int, fps: float, **options: Any) -> VoiceActivity:
    """Speech segments of a recording and the speech mask on its video's frames.

    Args:
        samples_16k: (N,) mono samples at 16 kHz in [-1, 1].
        n_frames: number of video frames T.
        fps: video frame rate.
        **options: passed to :func:`speech_segments` (threshold, min_speech_ms, ...).

    Raises:
        DependencyError: silero-vad or torch is not installed.
    """
    segments = speech_segments(samples_16k, **options)
    return VoiceActivity(segments=segments, frames=frames_from_segments(segments, n_frames, fps), fps=fps)

"""Helpers shared by the motion, audio-feature and renderer tests (plain functions, no pytest fixtures).

Everything here is generated: speech comes from espeak-ng (``server.tts``), converted to the pipeline's
16 kHz by ``model.media.audio_io``; portraits come from scikit-image's astronaut. Results are cached per
process because TTS and face analysis are the slow parts.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emote.model.motion.interface import MotionChunk, MotionGenerator
from emote.streaming.animator import MotionStream

SAMPLE_RATE = 16000


@functools.lru_cache(maxsize=16)
def speech_16k(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng, as 16 kHz mono float32 (skips the test when TTS is not installed).

    Cached: espeak-ng keeps pitch-flutter state between calls, so each text is synthesised once per
    process and every test sees the same samples.
    """
    from emote.server import tts

    if not tts.espeak_available():
        pytest.skip("espeak-ng (the tts extra) is not installed")
    from emote.model.media.audio_io import load_audio_16k, write_wav

    samples, rate = tts.synthesize(text)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        write_wav(path, samples, rate)
        out = load_audio_16k(path)
    out.setflags(write=False)
    return out


def silence(seconds: float) -> np.ndarray:
    """Digital silence at 16 kHz."""
    return np.zeros(int(round(seconds * SAMPLE_RATE)), np.float32)


def chunked(samples: np.ndarray, sizes: int | list[int]) -> list[np.ndarray]:
    """Cut ``samples`` into consecutive pieces; a list of sizes is cycled."""
    cycle = [sizes] if isinstance(sizes, int) else list(sizes)
    pieces, pos, k = [], 0, 0
    while pos < len(samples):
        n = cycle[k % len(cycle)]
        pieces.append(samples[pos : pos + n])
        pos += n
        k += 1
    return pieces


def run_generator(
    generator: MotionGenerator[Any],
    samples: np.ndarray,
    *,
    rest: np.ndarray,
    seed: int = 0,
    fps: float = 25.0,
    merge_frames: int | None = 25,
    chunk: int | list[int] = 1600,
) -> MotionChunk:
    """Stream ``samples`` through a :class:`MotionStream` exactly as the pipeline does.

    ``merge_frames`` as offline rendering (25) by default; ``None`` cuts the generator's own windows
    (as live sessions do).
    """
    stream = MotionStream(generator, rest, fps=fps, seed=seed, merge_frames=merge_frames)
    chunks = []
    for piece in chunked(samples, chunk):
        chunks += stream.push(piece)
    chunks += stream.finish()
    return MotionChunk.concat(chunks)


def frame_rms(samples: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """(n_frames,) RMS of the audio heard during each video frame (frame k spans [k/fps, (k+1)/fps))."""
    edges = np.round(np.arange(n_frames + 1) * SAMPLE_RATE / fps).astype(int)
    padded = np.concatenate([samples, np.zeros(max(0, edges[-1] - len(samples)), np.float32)])
    sq = np.concatenate([[0.0], np.cumsum(padded.astype(np.float64) ** 2)])
    return np.sqrt((sq[edges[1:]] - sq[edges[:-1]]) / np.diff(edges))

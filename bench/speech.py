"""Benchmark speech: a fixed minute of varied English from the offline TTS engine.

The benchmarks need realistic speech of a known length without shipping a
recording, so the text below (written for this purpose: statements,
questions, exclamations, numbers, a list, short and long sentences) is
spoken by espeak-ng through :func:`server.tts.synthesize`, paragraph by
paragraph at slightly different speaking rates, with pauses of different
lengths between paragraphs as a speaker takes breath. Paragraphs repeat
until the requested length is reached, and the result is cut to exactly
that length with a short fade, resampled to 44.1 kHz (the rate most user
recordings come in, so decoding and AAC re-encoding cost what they would
for a real file) and written as a 16-bit WAV with
:func:`model.media.audio_io.write_wav`. Nothing is cached: every run synthesises
afresh into the folder it is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from emote.model.media.audio_io import write_wav

#: The rate the benchmark WAV is written at (Hz).
WAV_RATE = 44100

#: (text, words per minute, pause after it in seconds).
PARAGRAPHS: tuple[tuple[str, int, float], ...] = (
    (
        "Good morning, and thank you for joining us. Today I would like to tell you a short story "
        "about a lighthouse keeper, her cat, and a very stubborn storm.",
        160, 0.9,
    ),
    (
        "The lighthouse stood on a rock, three miles from the nearest harbour. Every evening at "
        "seven, the keeper climbed one hundred and twelve steps, wound the clockwork, and lit the lamp. "
        "Did she ever get tired of it? Never. Well, almost never.",
        150, 1.2,
    ),
    (
        "One night in November, the wind rose to a howl! Waves crashed over the gallery, the windows "
        "rattled, and the cat hid under the stove. The keeper checked the oil, the wick, and the lens: "
        "everything was in order.",
        175, 0.6,
    ),
    (
        "At about two in the morning, she saw a small fishing boat, far out, struggling against the "
        "swell. She kept the light turning. Slowly, very slowly, the boat found its way around the reef "
        "and into the calm water of the bay.",
        155, 1.4,
    ),
    (
        "In the morning, the sea was flat and silver. The fisherman rowed over with a basket of fresh "
        "bread. Thank you, he said. You are welcome, she answered, and the cat, of course, ate the crust.",
        165, 1.0,
    ),
)


def _fade_out(samples: np.ndarray, rate: int, seconds: float = 0.02) -> np.ndarray:
    n = min(len(samples), int(seconds * rate))
    if n:
        samples[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return samples


def speech_samples(seconds: float) -> tuple[np.ndarray, int]:
    """Exactly ``seconds`` of spoken paragraphs (see the module docstring).

    Args:
        seconds: length of the speech (> 0).

    Returns:
        ``(samples, rate)``: float32 mono samples at the TTS engine's own rate.

    Raises:
        DependencyError: espeak-ng (the ``tts`` extra) is not installed.
    """
    from emote.server.tts import synthesize

    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    pieces: list[np.ndarray] = []
    rate = 0
    total = 0
    # A short breath of silence first, as in a real recording.
    lead_in = 0.3
    while True:
        for text, wpm, pause in PARAGRAPHS:
            said, rate = synthesize(text, words_per_minute=wpm)
            if not pieces:
                pieces.append(np.zeros(int(lead_in * rate), np.float32))
            pieces += [said.astype(np.float32), np.zeros(int(pause * rate), np.float32)]
            total = sum(len(p) for p in pieces)
            if total >= seconds * rate:
                samples = np.concatenate(pieces)[: int(round(seconds * rate))]
                return _fade_out(samples, rate), rate


def write_speech(path: str | Path, seconds: float) -> float:
    """Write ``seconds`` of speech as a 44.1 kHz 16-bit mono WAV; returns its duration in seconds."""
    samples, rate = speech_samples(seconds)
    if rate != WAV_RATE:
        g = np.gcd(rate, WAV_RATE)
        samples = resample_poly(samples, WAV_RATE // g, rate // g).astype(np.float32)
    write_wav(path, samples, WAV_RATE)
    return len(samples) / WAV_RATE

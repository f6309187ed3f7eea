"""What the learned motion model hears: log-mel, energy, voicing and pitch on an absolute 10 ms grid.

Hop ``k`` is centred on stream sample ``160 k`` (16 kHz) and analyses a 25 ms Hann window, the grid
of the analytic baseline (:mod:`~emote.model.motion.baseline.audio_features`), so a hop's features
depend only on the audio around it: offline and live give the same numbers however the stream was
cut. Per hop: :data:`N_MELS` log-mel bands (Slaney mel scale, 50 Hz to 8 kHz; the filterbank comes
from ``transformers``' audio utilities when a model is trained and travels with its weights, so
running a model needs neither ``transformers`` nor a download), log energy, voicing strength and
log pitch. Nothing is normalised per utterance: a frame never depends on audio far away (Whisper's
feature extractor scales by the loudest point of the whole input, which a live stream does not know).

A video frame at 25 fps spans 4 hops; the model sees the 4 hops of each frame side by side
(:func:`frame_features`, :data:`FRAME_DIM` numbers per frame). Frame ``f`` starts at sample
``640 f``; its hops are ``4 f .. 4 f + 3``, centred at ``640 f + 160 j`` (j = 0..3), so a frame's
features read from 200 samples before it starts to 40 samples after it ends.
"""

from __future__ import annotations

import numpy as np

from emote.model.motion.baseline import audio_features as baseline_features
from emote.model.motion.baseline.audio_features import (
    _FREQS,
    _HIGH,
    HALF_WIN,
    HOP,
    WIN,
    _lpc_formants,
    _periodicity,
    hop_frames,
)
from emote.model.motion.baseline.mouth_dynamics import N_CHANNELS, MouthFilter, mouth_targets
from emote.model.motion.diffusion.speech import CONTEXT_FRAMES, SPEECH_DIM, clip_speech

SAMPLE_RATE = 16000
FPS = 25.0
HOPS_PER_FRAME = 4
N_FFT = 512
N_MELS = 40
F_MIN, F_MAX = 50.0, 8000.0
HOP_DIM = N_MELS + 3
#: With the ``formants`` set: also log F1, log F2 (linear prediction, the baseline's), the share of energy
#: above 3.5 kHz (fricatives) and the log spectral centroid; explicit cues of jaw opening and lip shape
#: that 16 minutes of data would otherwise have to learn from the mel bands.
FORMANT_DIM = 4
FRAME_DIM = HOPS_PER_FRAME * HOP_DIM
#: With the ``mel+prior`` set: also what the analytic baseline makes of each hop (its 9 smoothed mouth
#: channels, its speech gate and its loudness relative to the recording's own range, from level trackers
#: that adapt over seconds, and log F1 and F2): an articulation prior that already follows real jaws at
#: r 0.22 on the validation people, which the model refines. It is causal and stateful (the trackers), so
#: a stream carries its state (:func:`prior_features`).
PRIOR_DIM = N_CHANNELS + 4
FEATURE_SETS = {"mel": HOP_DIM, "mel+formants": HOP_DIM + FORMANT_DIM, "mel+prior": HOP_DIM + PRIOR_DIM}
#: A set named ``<set>+speech`` is ``<set>`` with Whisper's encoder output appended to every frame
#: (:mod:`~.speech`: :data:`~.speech.SPEECH_DIM` numbers, computed per block of the generator's schedule from
#: the 2 s of audio that end with the block); ``<set>+speech1s`` the same from 1 s. The suffix names the
#: context in 25 fps frames here: a model hears its speech features only with the context it was trained on.
SPEECH_SUFFIXES = {"+speech": CONTEXT_FRAMES, "+speech1s": CONTEXT_FRAMES // 2}


def _speech_suffix(feature_set: str) -> str:
    return next((s for s in SPEECH_SUFFIXES if feature_set.endswith(s)), "")


def spectral_set(feature_set: str) -> str:
    """The per-hop part of a feature set (``mel+formants+speech`` -> ``mel+formants``)."""
    suffix = _speech_suffix(feature_set)
    base = feature_set[: len(feature_set) - len(suffix)]
    if base not in FEATURE_SETS:
        names = sorted(FEATURE_SETS) + [b + s for s in SPEECH_SUFFIXES for b in sorted(FEATURE_SETS)]
        raise ValueError(f"unknown audio feature set {feature_set!r}; one of {', '.join(names)}")
    return base


def has_speech(feature_set: str) -> bool:
    """Whether a feature set carries Whisper's encoder output (:mod:`~.speech`)."""
    return spectral_set(feature_set) != feature_set


def speech_context(feature_set: str) -> int:
    """25 fps frames of audio one encoding of a ``+speech`` set reads (0 for a set without speech)."""
    spectral_set(feature_set)  # a clear error for an unknown set
    return SPEECH_SUFFIXES.get(_speech_suffix(feature_set), 0)


def frame_dim(feature_set: str) -> int:
    """Numbers per 25 fps frame of a feature set (4 hops side by side, then the speech features if any)."""
    return HOPS_PER_FRAME * FEATURE_SETS[spectral_set(feature_set)] + (SPEECH_DIM if has_speech(feature_set) else 0)
#: Audio a frame's features need beyond its own 40 ms: half an analysis window on each side.
MARGIN_SAMPLES = HALF_WIN
_WINDOW = np.hanning(WIN).astype(np.float32)
#: A microphone never records digital zero: every hop hears a fixed quiet hiss at -80 dBFS, indexed by
#: the stream sample so any buffer gives the same features. Digital silence (a TTS pause, a muted track)
#: then sounds like the quiet rooms the training videos were recorded in instead of log(0): the first
#: model, never trained on it, opened the jaw to 0.14-0.25 in four seconds of zeros and kept it under
#: 0.05 with -80 dBFS noise. Recordings' quiet stretches sit above it, except where a video's audio was
#: gated to digital zero (7 of the 85 training and validation clips): those now read as a quiet room too.
DITHER_RMS = 1e-4
DITHER_TRACK = (np.random.default_rng(20261206).standard_normal(1 << 16) * DITHER_RMS).astype(np.float32)
_WIN_OFFSETS = np.arange(WIN) - HALF_WIN  # a hop's samples around its centre
assert SAMPLE_RATE / FPS == HOP * HOPS_PER_FRAME
assert len(_FREQS) == N_FFT // 2 + 1 and _FREQS[1] == SAMPLE_RATE / N_FFT  # the baseline's spectrum grid


#: The floor the live generator hears instead (:class:`~.generator.DiffusionGenerator`): comfort noise at -65
#: dBFS, a quiet room. At the -80 dBFS of the training dither the shipped model hears digital silence as the
#: few training clips whose audio was gated to zero, where people did not blink: 0 blinks in a minute of
#: zeros, where white noise at -70 to -55 dBFS gave 34-42 per minute and a calmer head (yaw std 1.2 ° vs 3.0).
COMFORT_NOISE_RMS = 10 ** (-65 / 20)
#: A frame whose hops are all quieter than this (log mean power; -60 dBFS) is silence: a TTS pause, a muted
#: or gated microphone (heard as the comfort noise), a quiet room (speech is louder than -50 dBFS).
SILENT_LOG_POWER = float(np.log(1e-6))


def silent_frames(features: np.ndarray, feature_set: str, below: float = SILENT_LOG_POWER) -> np.ndarray:
    """(...,) bool: which frames of raw (unnormalised) frame features (..., A) have every hop quieter than
    ``below`` (log mean power; default: silence)."""
    base = spectral_set(feature_set)
    hop_dim = FEATURE_SETS["mel" if base == "mel+prior" else base]
    energy = features[..., [h * hop_dim + N_MELS for h in range(HOPS_PER_FRAME)]]
    return np.asarray(energy.max(axis=-1) < below)


def mel_matrix() -> np.ndarray:
    """(N_FFT // 2 + 1, N_MELS) float32 Slaney mel filterbank (from ``transformers``; training only)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=N_MELS, min_frequency=F_MIN,
                           max_frequency=F_MAX, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return np.asarray(bank, np.float32)


def hop_features(samples: np.ndarray, first_sample: int, first_hop: int, n_hops: int, mel: np.ndarray,
                 feature_set: str = "mel", floor_rms: float = DITHER_RMS) -> np.ndarray:
    """(n_hops, dim) float32 features of hops ``first_hop ..``: log-mel, log energy, voicing, log pitch
    (and the formant cues of the ``mel+formants`` set).

    Args:
        samples: (N,) float32 16 kHz audio; ``samples[0]`` is stream sample ``first_sample``. Hops
            reaching before the stream start read zeros there (the caller pads).
        first_sample: stream index of ``samples[0]``.
        first_hop: the first hop (centred on sample ``160 * first_hop``).
        n_hops: how many.
        mel: the filterbank of the model (:func:`mel_matrix`).
        floor_rms: RMS of the fixed noise added to every hop (training: :data:`DITHER_RMS`).
    """
    if n_hops <= 0:
        return np.zeros((0, FEATURE_SETS[feature_set]), np.float32)
    frames = hop_frames(samples, first_sample, first_hop, n_hops).astype(np.float32)
    at = (first_hop + np.arange(n_hops))[:, None] * HOP + _WIN_OFFSETS  # the stream samples of each hop
    frames = frames + DITHER_TRACK[at % len(DITHER_TRACK)] * np.float32(floor_rms / DITHER_RMS)
    power = np.abs(np.fft.rfft(frames * _WINDOW, n=N_FFT, axis=1)) ** 2
    log_mel = np.log(power @ mel + 1e-8)
    energy = np.log(np.mean(frames * frames, axis=1) + 1e-8)
    voicing, pitch = _periodicity(frames)
    log_pitch = np.where(pitch > 0, np.log(np.maximum(pitch, 1.0) / 100.0), 0.0)
    columns = [log_mel, energy[:, None], voicing[:, None], log_pitch[:, None]]
    if feature_set == "mel+formants":
        total = power.sum(axis=1) + 1e-12
        high = power[:, _HIGH].sum(axis=1) / total
        centroid = (power * _FREQS).sum(axis=1) / total
        columns += [_log_formants(*_lpc_formants(frames)), high[:, None],
                    np.log(np.maximum(centroid, 1.0) / 1000.0)[:, None]]
    return np.concatenate(columns, axis=1).astype(np.float32)


def _log_formants(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    """(n, 2) log F1 / 500 Hz and log F2 / 1500 Hz, 0 where a hop has no formant (unvoiced, silent)."""
    return np.stack([np.where(f1 > 0, np.log(np.maximum(f1, 1.0) / 500.0), 0.0),
                     np.where(f2 > 0, np.log(np.maximum(f2, 1.0) / 1500.0), 0.0)], axis=1)


def frame_first_hop(frame: int) -> int:
    """The first of the :data:`HOPS_PER_FRAME` hops that describe video frame ``frame`` (at 25 fps)."""
    return HOPS_PER_FRAME * frame


def frame_features(samples: np.ndarray, first_sample: int, first_frame: int, n_frames: int,
                   mel: np.ndarray, feature_set: str = "mel", floor_rms: float = DITHER_RMS) -> np.ndarray:
    """(n_frames, frame_dim) features of 25 fps frames ``first_frame ..`` from a buffer of audio.

    The buffer must hold the frames' audio plus :data:`MARGIN_SAMPLES` on each side; samples outside
    the stream are zeros.
    """
    if feature_set == "mel+prior" or has_speech(feature_set):
        raise ValueError(f"the {feature_set} features depend on more than a frame's audio: compute the stateful "
                         "part (prior_features, speech.frames_speech) beside the spectral one")
    hops = hop_features(samples, first_sample, frame_first_hop(first_frame), HOPS_PER_FRAME * n_frames, mel,
                        feature_set, floor_rms)
    return hops.reshape(n_frames, frame_dim(feature_set))


def prior_features(samples: np.ndarray, first_sample: int, first_frame: int, n_frames: int,
                   state: MouthFilter) -> tuple[np.ndarray, MouthFilter]:
    """(n_frames, 4 * PRIOR_DIM) articulation prior of frames ``first_frame ..`` and the filter after them.

    The filter runs on every hop from ``state.next_hop`` (at most ``4 * first_frame``: hops in between are
    run first, from the same buffer) to the last hop of the last frame.
    """
    first_hop = frame_first_hop(first_frame)
    if state.next_hop > first_hop:
        raise ValueError(f"the articulation filter is at hop {state.next_hop}, past hop {first_hop}")
    n_hops = first_hop - state.next_hop + HOPS_PER_FRAME * n_frames
    feats = baseline_features.hop_features(samples, first_sample, state.next_hop, n_hops)
    mouth, per_hop, state = mouth_targets(feats, state)
    skip = first_hop - feats.first_hop
    columns = np.concatenate([mouth[skip:], per_hop["speech"][skip:, None], per_hop["level"][skip:, None],
                              _log_formants(feats.f1_hz[skip:], feats.f2_hz[skip:])], axis=1)
    return columns.astype(np.float32).reshape(n_frames, HOPS_PER_FRAME * PRIOR_DIM), state


def clip_features(audio: np.ndarray, n_frames: int, mel: np.ndarray, feature_set: str = "mel",
                  floor_rms: float = DITHER_RMS, block: int = 3) -> np.ndarray:
    """(n_frames, frame_dim) features of a whole clip whose frame 0 starts at sample 0 (training); the speech
    features (``+speech`` sets) in blocks of ``block`` frames from the start, as the generator makes them."""
    audio = np.asarray(audio)
    x = audio.astype(np.float32) / 32768.0 if np.issubdtype(audio.dtype, np.integer) else audio.astype(np.float32)
    padded = np.concatenate([np.zeros(MARGIN_SAMPLES + HOP, np.float32), x,
                             np.zeros(MARGIN_SAMPLES + HOP * HOPS_PER_FRAME * 2, np.float32)])
    base = spectral_set(feature_set)
    if base != "mel+prior":
        parts = [frame_features(padded, -(MARGIN_SAMPLES + HOP), 0, n_frames, mel, base, floor_rms)]
    else:
        parts = [frame_features(padded, -(MARGIN_SAMPLES + HOP), 0, n_frames, mel, "mel", floor_rms),
                 prior_features(padded, -(MARGIN_SAMPLES + HOP), 0, n_frames, MouthFilter.start())[0]]
    if has_speech(feature_set):
        parts.append(clip_speech(x, n_frames, block, DITHER_TRACK, floor_rms / DITHER_RMS,
                                 context=speech_context(feature_set)))
    return np.concatenate(parts, axis=1)

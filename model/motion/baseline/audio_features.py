"""Frame-level acoustic features of speech for the analytic motion generator.

Features are measured on a fixed grid of analysis hops (10 ms at 16 kHz,
hop ``k`` centred on stream sample ``k * HOP``), each from a 25 ms Hann
window. Because the grid is absolute, a hop's features depend only on the
audio around it, never on how the stream was cut into windows: offline and
streaming renders see identical numbers. Per hop: loudness (dB), periodicity
(voicing strength) and pitch, the share of energy above 3.5 kHz
(fricatives), spectral centroid, and the first two formants from linear
prediction (jaw opening and lip rounding/spreading follow F1 and F2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
WIN = 400  # 25 ms
HALF_WIN = WIN // 2
LPC_ORDER = 12
N_FFT = 512
_WINDOW = np.hanning(WIN).astype(np.float32)
_FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE).astype(np.float32)
_HIGH = _FREQS >= 3500.0
_MIN_LAG, _MAX_LAG = SAMPLE_RATE // 400, SAMPLE_RATE // 70  # pitch 70..400 Hz


@dataclass(frozen=True)
class HopFeatures:
    """Features for consecutive hops ``first_hop .. first_hop + n - 1``; each array is (n,)."""

    first_hop: int
    level_db: np.ndarray  # RMS level in dBFS
    voicing: np.ndarray  # normalised autocorrelation peak, 0 (noise) .. 1 (periodic)
    pitch_hz: np.ndarray  # F0 where voiced, else 0
    high_ratio: np.ndarray  # share of spectral energy above 3.5 kHz
    centroid_hz: np.ndarray  # spectral centroid
    f1_hz: np.ndarray  # first formant (0 where not found)
    f2_hz: np.ndarray  # second formant (0 where not found)

    def __len__(self) -> int:
        return int(self.level_db.shape[0])


def hop_frames(samples: np.ndarray, first_sample: int, first_hop: int, n_hops: int) -> np.ndarray:
    """(n_hops, WIN) analysis frames cut from a buffer on the absolute hop grid.

    Args:
        samples: (N,) float32 audio whose first element is stream sample ``first_sample``.
        first_sample: stream index of ``samples[0]``.
        first_hop: index of the first hop to cut.
        n_hops: number of hops.

    Raises:
        ValueError: the buffer does not hold every sample the hops need.
    """
    start = first_hop * HOP - HALF_WIN - first_sample
    stop = start + (n_hops - 1) * HOP + WIN
    if n_hops and (start < 0 or stop > len(samples)):
        raise ValueError(f"hops {first_hop}..{first_hop + n_hops - 1} need samples outside the buffer")
    idx = start + np.arange(n_hops)[:, None] * HOP + np.arange(WIN)[None, :]
    return samples[idx] if n_hops else np.zeros((0, WIN), np.float32)


def _lpc_formants(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 and F2 (Hz) per frame from the roots of a linear-prediction polynomial."""
    n = len(frames)
    emph = np.concatenate([frames[:, :1], frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1) * _WINDOW
    ac = np.stack([np.einsum("ij,ij->i", emph[:, : WIN - k], emph[:, k:]) for k in range(LPC_ORDER + 1)], axis=1)
    ac[:, 0] *= 1.0 + 1e-6
    ac[:, 0] += 1e-9
    # Levinson-Durbin recursion, vectorised over frames.
    a = np.zeros((n, LPC_ORDER + 1))
    a[:, 0] = 1.0
    err = ac[:, 0].astype(np.float64)
    for i in range(1, LPC_ORDER + 1):
        k = -(a[:, :i] * ac[:, i:0:-1]).sum(axis=1) / err
        a[:, 1 : i + 1] = a[:, 1 : i + 1] + k[:, None] * a[:, i - 1 :: -1][:, :i]
        err = err * (1.0 - k * k)
    # Roots of the polynomial = eigenvalues of its companion matrices.
    comp = np.zeros((n, LPC_ORDER, LPC_ORDER))
    comp[:, 0, :] = -a[:, 1:]
    comp[:, np.arange(1, LPC_ORDER), np.arange(LPC_ORDER - 1)] = 1.0
    roots = np.linalg.eigvals(comp) if n else np.zeros((0, LPC_ORDER), complex)
    freq = np.angle(roots) * SAMPLE_RATE / (2 * np.pi)
    bandwidth = -np.log(np.maximum(np.abs(roots), 1e-9)) * SAMPLE_RATE / np.pi
    ok = (roots.imag > 0) & (freq > 200) & (freq < 4000) & (bandwidth < 500)
    freq = np.where(ok, freq, np.inf)
    freq.sort(axis=1)
    f1 = np.where(np.isfinite(freq[:, 0]), freq[:, 0], 0.0)
    f2 = np.where(np.isfinite(freq[:, 1]), freq[:, 1], 0.0)
    return f1.astype(np.float32), f2.astype(np.float32)


def _periodicity(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voicing strength (0..1) and pitch (Hz) from the normalised autocorrelation."""
    centred = frames - frames.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(centred, n=2 * N_FFT, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, : _MAX_LAG + 1]
    energy = ac[:, :1] + 1e-9
    # Normalise by the overlap so long lags are not penalised.
    ac = ac / energy * (WIN / (WIN - np.arange(_MAX_LAG + 1)))
    search = ac[:, _MIN_LAG : _MAX_LAG + 1]
    peak = search.max(axis=1)
    # The period is the shortest lag whose peak nearly matches the best one: multiples of the
    # period peak just as high, and taking the largest would read octaves (or more) too low.
    local = np.zeros_like(search, dtype=bool)
    local[:, 1:-1] = (search[:, 1:-1] >= search[:, :-2]) & (search[:, 1:-1] >= search[:, 2:])
    candidate = local & (search >= 0.9 * peak[:, None])
    lag = np.where(candidate.any(axis=1), np.argmax(candidate, axis=1), np.argmax(search, axis=1)) + _MIN_LAG
    peak = np.clip(peak, 0.0, 1.0)
    pitch = np.where(peak > 0.45, SAMPLE_RATE / lag, 0.0)
    return peak.astype(np.float32), pitch.astype(np.float32)


def hop_features(samples: np.ndarray, first_sample: int, first_hop: int, n_hops: int) -> HopFeatures:
    """Features for hops ``first_hop .. first_hop + n_hops - 1``.

    Args:
        samples: (N,) float32 16 kHz mono audio; ``samples[0]`` is stream sample ``first_sample``.
        first_sample: stream index of the buffer's first sample.
        first_hop: first hop to measure.
        n_hops: how many hops.
    """
    frames = hop_frames(samples, first_sample, first_hop, n_hops).astype(np.float32)
    rms = np.sqrt(np.mean(frames**2, axis=1) + 1e-12)
    level_db = (20.0 * np.log10(rms + 1e-7)).astype(np.float32)
    power = np.abs(np.fft.rfft(frames * _WINDOW, n=N_FFT, axis=1)) ** 2
    total = power.sum(axis=1) + 1e-12
    high_ratio = (power[:, _HIGH].sum(axis=1) / total).astype(np.float32)
    centroid = ((power * _FREQS).sum(axis=1) / total).astype(np.float32)
    voicing, pitch = _periodicity(frames)
    f1, f2 = _lpc_formants(frames)
    return HopFeatures(first_hop, level_db, voicing, pitch, high_ratio, centroid, f1, f2)

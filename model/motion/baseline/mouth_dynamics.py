"""From acoustic features to smoothed mouth articulation, hop by hop.

The analytic generator's mouth: per 10 ms hop, a speech gate (loudness above
an adaptive noise floor, with voicing or fricative noise) and articulation
targets (jaw opening from loudness and F1, lip rounding from a low F2,
spreading from a high F2, a little lip lift for fricatives), then a
critically damped spring per channel that opens faster than it closes, so
neighbouring sounds blend (coarticulation) and the mouth never jumps. The
floor and peak trackers adapt to the recording's level, so a quiet
microphone and a loud TTS voice both use the full range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from emote.model.motion.baseline.audio_features import HopFeatures

#: Coefficients the mouth drives, as additions to the closed-mouth pose.
MOUTH_CHANNELS: tuple[str, ...] = (
    "jawOpen", "mouthFunnel", "mouthPucker", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "mouthSmileLeft", "mouthSmileRight",
)  # fmt: skip
N_CHANNELS = len(MOUTH_CHANNELS)
DT = 0.01  # hop period in seconds
OMEGA_OPEN = 1.0 / 0.028  # spring rate while a channel rises (rad/s)
OMEGA_CLOSE = 1.0 / 0.042  # ... and while it falls
SYLLABLE_RELEASE_DB = 0.3  # per hop: the syllable-peak follower falls 30 dB/s
SYLLABLE_DEPTH_DB = 8.0  # this far below the last syllable peak, the jaw is nearly shut


@dataclass(frozen=True)
class MouthFilter:
    """State carried between windows: next hop to process, level trackers, spring."""

    next_hop: int
    floor_db: float
    peak_db: float
    syllable_db: float
    value: np.ndarray  # (N_CHANNELS,)
    velocity: np.ndarray  # (N_CHANNELS,)

    @classmethod
    def start(cls) -> MouthFilter:
        zeros = np.zeros(N_CHANNELS, np.float64)
        return cls(next_hop=0, floor_db=-60.0, peak_db=-20.0, syllable_db=-90.0, value=zeros, velocity=zeros.copy())


@numba.njit(cache=True)
def _run(
    level_db: np.ndarray, voicing: np.ndarray, high_ratio: np.ndarray, f1: np.ndarray, f2: np.ndarray,
    state: np.ndarray, value: np.ndarray, velocity: np.ndarray,
    out: np.ndarray, speech_out: np.ndarray, loud_out: np.ndarray,
) -> None:  # fmt: skip
    floor, peak, syllable = state[0], state[1], state[2]
    target = np.empty(N_CHANNELS)
    for k in range(level_db.shape[0]):
        lv = max(level_db[k], -90.0)
        # Floor: follows dips at once and creeps up through noise (10 dB/s), slower through
        # voiced sound (4 dB/s), so a sustained sung vowel is not taken for the noise floor.
        creep = 0.1 if voicing[k] < 0.35 else 0.04
        floor = lv if lv < floor else floor + creep
        floor = max(min(floor, -25.0), -80.0)
        peak = max(lv, peak - 0.04, floor + 25.0)
        # Syllable peaks: jumps up, falls 30 dB/s. The mouth closes as the level drops below
        # the last syllable's peak (consonants), not only when the speaker falls silent.
        syllable = max(lv, syllable - SYLLABLE_RELEASE_DB)
        syllabic = min(max((lv - syllable + SYLLABLE_DEPTH_DB) / SYLLABLE_DEPTH_DB, 0.0), 1.0)
        loud = min(max((lv - floor - 8.0) / (peak - floor - 8.0), 0.0), 1.0)
        voiced = min(max((voicing[k] - 0.35) / 0.3, 0.0), 1.0)
        hiss = min(max((high_ratio[k] - 0.2) / 0.35, 0.0), 1.0) * (1.0 - voiced)
        gate = min(max((loud - 0.04) / 0.12, 0.0), 1.0) * max(voiced, hiss, 0.3 if loud > 0.35 else 0.0)
        openness = 0.75
        if voiced > 0.0 and f1[k] > 0.0:
            openness = 0.55 + 0.7 * min(max((f1[k] - 350.0) / 450.0, 0.0), 1.0)
        jaw = gate * (1.0 - hiss * 0.7) * (0.08 + 0.92 * loud**0.8) * openness * (0.2 + 0.8 * syllabic)
        rnd = gate * voiced * (min(max((1300.0 - f2[k]) / 500.0, 0.0), 1.0) if f2[k] > 0.0 else 0.0)
        spread = gate * voiced * (min(max((f2[k] - 1900.0) / 700.0, 0.0), 1.0) if f2[k] > 0.0 else 0.0)
        target[0] = 0.36 * jaw
        target[1] = 0.45 * rnd * min(1.0, loud * 2.5)
        target[2] = 0.35 * rnd
        target[3] = 0.22 * spread
        target[4] = 0.22 * spread
        target[5] = 0.12 * hiss * gate + 0.08 * jaw
        target[6] = 0.12 * hiss * gate + 0.08 * jaw
        target[7] = 0.06 * spread
        target[8] = 0.06 * spread
        for c in range(N_CHANNELS):
            omega = OMEGA_OPEN if target[c] > value[c] else OMEGA_CLOSE
            acc = omega * omega * (target[c] - value[c]) - 2.0 * omega * velocity[c]
            velocity[c] += acc * DT
            value[c] += velocity[c] * DT
            out[k, c] = max(value[c], 0.0)
        speech_out[k] = gate
        loud_out[k] = loud
    state[0], state[1], state[2] = floor, peak, syllable


def mouth_targets(feats: HopFeatures, state: MouthFilter) -> tuple[np.ndarray, dict[str, np.ndarray], MouthFilter]:
    """Run the mouth filter over consecutive hops.

    Args:
        feats: features of hops ``state.next_hop ..``.
        state: the filter state after the previous hop.

    Returns:
        (n, N_CHANNELS) smoothed coefficient additions per hop; per-hop
        ``speech`` (gate 0..1), ``level`` (normalised loudness 0..1) and
        ``pitch`` (Hz, 0 unvoiced); and the new state.
    """
    if len(feats) and feats.first_hop != state.next_hop:
        raise ValueError(f"features start at hop {feats.first_hop}, the filter expects {state.next_hop}")
    n = len(feats)
    levels = np.array([state.floor_db, state.peak_db, state.syllable_db])
    value, velocity = state.value.copy(), state.velocity.copy()
    out = np.zeros((n, N_CHANNELS))
    speech, loud = np.zeros(n), np.zeros(n)
    _run(feats.level_db.astype(np.float64), feats.voicing.astype(np.float64), feats.high_ratio.astype(np.float64),
         feats.f1_hz.astype(np.float64), feats.f2_hz.astype(np.float64), levels, value, velocity, out, speech, loud)
    new = MouthFilter(next_hop=state.next_hop + n, floor_db=float(levels[0]), peak_db=float(levels[1]),
                      syllable_db=float(levels[2]),
                      value=value, velocity=velocity)
    return out, {"speech": speech, "level": loud, "pitch": feats.pitch_hz}, new

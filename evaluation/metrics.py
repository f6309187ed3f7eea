"""Numbers that compare a generated talking video with a real one, from per-frame curves.

``emote eval`` renders a real talking video's first frame with that video's
audio, measures both videos the same way (:mod:`model.face.tracks`), and
reduces the measurements to the numbers here: lip sync as the correlation of
mouth-opening curves, the audio-to-mouth lag, mouth opening in voice-free
stretches, blinks per minute, head-pose spread and speed, and how much the
background flickers. Everything is plain numpy on curves sampled once per
video frame; NaN marks a frame without a face and is skipped, never guessed.
Sign convention for lags: a positive lag means the second curve happens
*later* than the first (e.g. the mouth moves after the sound).
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import numpy as np

from emote.model.face.blendshape_basis import BlendshapeBasis
from emote.model.motion.interface import COEFF_INDEX

SAMPLE_RATE = 16000


def _same_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"curves must have the same number of frames, got {a.size} and {b.size}")
    return a, b


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two per-frame curves, ignoring frames where either is NaN.

    Args:
        a: (T,) curve, any unit.
        b: (T,) curve, any unit.

    Returns:
        r in [-1, 1]; 0.0 when fewer than 3 frames are valid in both or either curve
        is constant over them (a frozen face correlates with nothing).
    """
    a, b = _same_length(a, b)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return 0.0
    a, b = a[ok], b[ok]
    flat = [np.ptp(x) <= 1e-9 * max(float(np.abs(x).max()), 1e-300) for x in (a, b)]  # up to float rounding
    if any(flat):
        return 0.0
    a0, b0 = a - a.mean(), b - b.mean()
    na, nb = np.sqrt((a0**2).sum()), np.sqrt((b0**2).sum())
    return float(np.clip((a0 @ b0) / (na * nb), -1.0, 1.0))


MOUTH_MOTION_FLOOR = 0.005  # eye-corner distances; MediaPipe drifts ~0.0006 (std) on a repeated frame


def lip_sync(real_mouth: np.ndarray, generated_mouth: np.ndarray, min_std: float = MOUTH_MOTION_FLOOR) -> float:
    """Lip-sync score: :func:`pearson` r of two (T,) mouth-opening curves (eye-corner distances).

    A mouth that moves less than the tracker's own noise does not move at all: when either
    curve's standard deviation is below ``min_std`` the score is 0.0, so a frozen face scores
    0 instead of whatever MediaPipe's slow drift on a still image happens to correlate with.
    """
    a, b = _same_length(real_mouth, generated_mouth)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() < min_std or b[ok].std() < min_std:
        return 0.0
    return pearson(a, b)


def audio_envelope(
    samples_16k: np.ndarray, n_frames: int, fps: float, *, db: bool = True, floor_db: float = 40.0
) -> np.ndarray:
    """Loudness of the audio during each video frame.

    Args:
        samples_16k: (N,) mono samples at 16 kHz in [-1, 1]; missing samples past the end count as silence.
        n_frames: number of video frames T.
        fps: video frame rate; frame i covers ``[i / fps, (i + 1) / fps)`` seconds.
        db: return the level in dBFS (the default: what :func:`audio_mouth_lag` was validated on);
            False gives linear RMS.
        floor_db: with ``db``, levels more than this far below the loudest frame are raised
            to that floor, so background noise and digital silence look alike.

    Returns:
        (T,) float64 RMS amplitude (full scale = 1), or its level in dBFS.
    """
    x = np.asarray(samples_16k, np.float64).ravel()
    bounds = np.round(np.arange(n_frames + 1) * (SAMPLE_RATE / fps)).astype(np.int64)  # frame i: [b[i], b[i+1])
    energy = np.concatenate([[0.0], np.cumsum(x**2)])
    idx = np.minimum(bounds, len(x))
    rms = np.sqrt(np.maximum(np.diff(energy[idx]), 0.0) / np.maximum(np.diff(bounds), 1))
    if not db:
        return rms
    level = 20.0 * np.log10(np.maximum(rms, 1e-10))
    return np.maximum(level, level.max() - floor_db) if level.size else level


def lagged_correlations(reference: np.ndarray, signal: np.ndarray, max_lag: int) -> np.ndarray:
    """Pearson r of ``signal`` against ``reference`` for every lag -max_lag..max_lag.

    At lag k, ``signal[t]`` is compared with ``reference[t - k]``, so a positive k means
    the signal happens k frames after the reference. Every lag is scored on the same
    frames ``t = max_lag .. T - max_lag - 1`` (long lags get no advantage from a
    shorter overlap); ``max_lag`` shrinks to ``(T - 3) // 2`` for short curves.

    Args:
        reference: (T,) curve, e.g. the audio envelope.
        signal: (T,) curve, e.g. mouth opening.
        max_lag: largest lag tried, in frames (>= 0).

    Returns:
        (2 * max_lag + 1,) r; entry ``k + max_lag`` is lag k (0.0 where the curves are too short).
    """
    ref, sig = _same_length(reference, signal)
    n = ref.size
    out = np.zeros(2 * max_lag + 1)
    m = max(0, min(max_lag, (n - 3) // 2))
    for k in range(-m, m + 1):
        out[k + max_lag] = pearson(ref[m - k : n - m - k], sig[m : n - m])
    return out


def _best_of(r: np.ndarray, max_lag: int) -> int:
    """The lag with the highest correlation in a :func:`lagged_correlations` result; ties go to the smallest |k|."""
    lags = np.arange(-max_lag, max_lag + 1)
    return int(min(lags[r >= r.max() - 1e-12], key=abs))


def best_lag(reference: np.ndarray, signal: np.ndarray, max_lag: int) -> int:
    """Lag in frames at which ``signal`` best follows ``reference`` (highest Pearson r).

    Positive: the signal lags behind the reference, ``signal[t] ≈ reference[t - k]``;
    a copy delayed by k frames (:func:`shift_frames`) gives k. Ties go to the smallest |k|.

    Args:
        reference: (T,) curve.
        signal: (T,) curve.
        max_lag: largest |k| tried, in frames.
    """
    return _best_of(lagged_correlations(reference, signal, max_lag), max_lag)


def frame_changes(curve: np.ndarray, width: int = 3) -> np.ndarray:
    """Frame-to-frame change of a curve after a ``width``-frame moving average.

    (T,) -> (T,); entry t is ``smooth[t] - smooth[t - 1]`` (entry 0 is NaN), in the
    curve's unit per frame. Timing lives in the changes: onsets and closures, not
    the slow drifts of level or head distance that dominate raw curves.
    """
    x = np.asarray(curve, np.float64).ravel()
    if width > 1 and x.size >= width:
        x = np.convolve(np.pad(x, (width // 2, (width - 1) // 2), mode="edge"), np.ones(width) / width, "valid")
    return np.concatenate([[np.nan], np.diff(x)]) if x.size else x


def audio_mouth_correlations(envelope: np.ndarray, mouth_opening: np.ndarray, max_lag: int = 8) -> np.ndarray:
    """(2 * max_lag + 1,) r between the :func:`frame_changes` of audio and mouth, for lags -max_lag..max_lag.

    The height of the peak says how much to trust :func:`audio_mouth_lag`: real speech
    reaches about 0.3..0.7; below about 0.2 the lag is a guess.
    """
    return lagged_correlations(frame_changes(envelope), frame_changes(mouth_opening), max_lag)


def audio_mouth_lag(envelope: np.ndarray, mouth_opening: np.ndarray, max_lag: int = 8) -> int:
    """Frames by which the mouth trails the sound (positive = mouth after sound, negative = before).

    :func:`best_lag` of the mouth's :func:`frame_changes` against the audio's: the lag at
    which the mouth opens and closes as the sound starts and stops. Real talking videos
    give 0..2 frames at 25 fps.

    Args:
        envelope: (T,) per-frame level in dB from :func:`audio_envelope` (linear RMS gives outliers).
        mouth_opening: (T,) per-frame mouth opening (e.g. ``FaceTracks.mouth_opening``).
        max_lag: largest |lag| tried, in frames.
    """
    return _best_of(audio_mouth_correlations(envelope, mouth_opening, max_lag), max_lag)


def shift_frames(curve: np.ndarray, k: int) -> np.ndarray:
    """Delay a per-frame curve by k frames (k < 0 advances it), repeating the edge value.

    ``shift_frames(x, k)[t] == x[t - k]`` wherever ``t - k`` is inside the curve.
    """
    x = np.asarray(curve)
    return x[np.clip(np.arange(len(x)) - k, 0, len(x) - 1)]


def blink_onsets(
    eye_opening: np.ndarray, fps: float, *, close: float = 0.55, reopen: float = 0.75, window_s: float = 3.0
) -> np.ndarray:
    """Frames at which the eyes close, each blink counted once.

    The eyes count as closed when their opening drops below ``close`` times the running
    median (a ``window_s`` window, so slow changes of head pose do not count), and as
    open again only once it climbs above ``reopen`` times the median (hysteresis).
    Frames without a face (NaN) change nothing.

    Args:
        eye_opening: (T,) lid gap per frame (e.g. ``FaceTracks.eye_opening``), any unit.
        fps: frame rate.
        close, reopen: thresholds as fractions of the running median (``reopen >= close``).
        window_s: length of the running median in seconds.

    Returns:
        (B,) int indices of the first closed frame of each blink.
    """
    x = np.asarray(eye_opening, np.float64).ravel()
    half = max(1, int(round(window_s * fps / 2)))
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, half, mode="edge") if x.size else x, 2 * half + 1)
    with warnings.catch_warnings():  # a window without a face has no median: NaN, and no state change
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        baseline = np.nanmedian(windows, axis=1)
    onsets, closed = [], False
    for t in range(x.size):
        if not (np.isfinite(x[t]) and np.isfinite(baseline[t])) or baseline[t] <= 0:
            continue
        if not closed and x[t] < close * baseline[t]:
            closed = True
            onsets.append(t)
        elif closed and x[t] > reopen * baseline[t]:
            closed = False
    return np.asarray(onsets, np.int64)


def blinks_per_minute(eye_opening: np.ndarray, fps: float) -> float:
    """Blink rate: :func:`blink_onsets` of a (T,) eye-opening curve per minute of video; frozen eyes give 0.0."""
    minutes = len(eye_opening) / fps / 60.0
    return float(len(blink_onsets(eye_opening, fps)) / minutes) if minutes > 0 else 0.0


#: The coefficients that carry expression rather than speech or blinks: brows, cheeks, eye squint and
#: widening, smile, frown, nose. (Speech moves the jaw and the rest of the mouth; blinks and gaze are
#: counted on their own.)
EXPRESSION_NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekSquintLeft", "cheekSquintRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight", "noseSneerLeft", "noseSneerRight",
)  # fmt: skip


def expression_change(coeffs: np.ndarray, fps: float, smooth_s: float = 0.5) -> float:
    """How much the expression changes over a video: the mean, over :data:`EXPRESSION_NAMES`, of the
    standard deviation over time of each measured coefficient after a ``smooth_s`` moving average.

    The average keeps changes of expression (a smile coming and going, brows raised for a phrase) and
    removes the tracker's frame-to-frame jitter, so a video that never moves scores near 0 (the still
    image measured 0.001 on a real talking video where that video scored 0.035) and real speakers far more.

    Args:
        coeffs: (T, 52) per-frame ARKit coefficients as measured (``FaceTracks.coeffs``); NaN rows (no
            face) are skipped.
        fps: frame rate.
        smooth_s: width of the moving average in seconds.
    """
    x = np.asarray(coeffs, np.float64)[:, [COEFF_INDEX[n] for n in EXPRESSION_NAMES]]
    x = x[np.isfinite(x).all(axis=1)]
    width = max(1, int(round(smooth_s * fps)))
    if len(x) < 2 * width:
        return float("nan")
    kernel = np.ones(width) / width
    smooth = np.stack([np.convolve(c, kernel, mode="valid") for c in x.T], axis=1)
    return float(smooth.std(axis=0).mean())


_basis = functools.lru_cache(maxsize=1)(BlendshapeBasis.load)


def head_pose_curves(landmarks_seq: np.ndarray) -> np.ndarray:
    """Head yaw, pitch and roll per frame from face landmarks.

    Each frame's rigid landmarks are fitted to the shipped canonical face
    (:meth:`BlendshapeBasis.align`); the angles are those of the motion representation
    (:mod:`emote.model.face.pose`: yaw > 0 turns the face to the viewer's right, pitch > 0
    tips the chin down, roll > 0 tilts it clockwise on screen).

    landmarks_seq: (T, 478, 3) pixel-space landmarks (``FaceTracks.landmarks``) -> (T, 3) float64
    yaw, pitch, roll in degrees, NaN rows where the frame has no face.
    """
    lm = np.asarray(landmarks_seq)
    out = np.full((len(lm), 3), np.nan)
    basis = _basis()
    for t, frame in enumerate(lm):
        if np.isfinite(frame).all():
            out[t] = basis.align(frame).angles()
    return out


class PoseStats(NamedTuple):
    """Head-motion summary; each field is (3,) yaw, pitch, roll (NaN when no face)."""

    spread_deg: np.ndarray  # standard deviation of each angle, degrees
    speed_deg_s: np.ndarray  # mean absolute frame-to-frame angular speed, degrees per second


def pose_spread_speed(angles: np.ndarray, fps: float) -> PoseStats:
    """How far and how fast the head moves.

    angles: (T, 3) yaw, pitch, roll in degrees (:func:`head_pose_curves`) -> :class:`PoseStats`: per-axis
    standard deviation (deg) over frames with a face, and per-axis mean |angle[t+1] - angle[t]| * fps
    (deg/s) over consecutive frame pairs that both have a face.
    """
    a = np.asarray(angles, np.float64).reshape(-1, 3)
    spread, speed = np.full(3, np.nan), np.full(3, np.nan)
    for axis in range(3):
        x = a[:, axis]
        ok = np.isfinite(x)
        if ok.any():
            spread[axis] = x[ok].std()
        d = np.diff(x)[np.isfinite(np.diff(x))]
        if d.size:
            speed[axis] = np.abs(d).mean() * fps
    return PoseStats(spread, speed)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of an (H, W) bool mask by a (2r+1)-pixel square."""
    out = mask
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        out = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis).any(axis=-1)
    return out


def silence_opening(mouth_opening: np.ndarray, speech_mask: np.ndarray, margin_frames: int = 5) -> float:
    """Mean mouth opening where nobody speaks, away from the edges of speech.

    Args:
        mouth_opening: (T,) per-frame opening (e.g. eye-corner distances).
        speech_mask: (T,) bool, True where the frame holds speech (:mod:`model.media.voice_activity`).
        margin_frames: frames on either side of any speech frame that do not count
            (mouths open before and close after the sound).

    Returns:
        The mean opening in the curve's unit over voice-free frames with a face; NaN if none.
    """
    x = np.asarray(mouth_opening, np.float64).ravel()
    speech = np.asarray(speech_mask, bool).ravel()
    if x.shape != speech.shape:
        raise ValueError(f"mouth_opening has {x.size} frames, speech_mask {speech.size}")
    near = _dilate(speech[None, :], max(margin_frames, 0))[0]
    ok = ~near & np.isfinite(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def background_stability(
    frames: np.ndarray | list[np.ndarray], matte: np.ndarray, *, threshold: float = 0.05, margin_px: int = 8
) -> float:
    """Mean absolute pixel change between consecutive frames, outside the person.

    The background is where ``matte < threshold``, shrunk by ``margin_px`` pixels away
    from the person (a moving head would otherwise count as flicker). Measured the
    same way for the real and the generated video.

    Args:
        frames: (T, H, W, C) or a list of (H, W, C) uint8 frames.
        matte: (H, W) person probability in [0, 1] (one matte for the whole video,
            e.g. from its first frame), or (T, H, W) one per frame (a frame pair
            then excludes the person of both frames).
        threshold: matte values below this count as background.
        margin_px: dilation of the person region, in pixels.

    Returns:
        Mean |frame[t+1] - frame[t]| in 8-bit intensity levels (0..255) over background
        pixels, channels and frame pairs; NaN with fewer than 2 frames or no background.
    """
    matte = np.asarray(matte, np.float32)
    person = matte >= threshold
    background = None if person.ndim == 3 else ~_dilate(person, margin_px)
    total, count = 0.0, 0
    for t in range(1, len(frames)):
        bg = background if background is not None else ~_dilate(person[t - 1] | person[t], margin_px)
        if not bg.any():
            continue
        diff = np.abs(np.asarray(frames[t], np.int16) - np.asarray(frames[t - 1], np.int16))
        total += float(diff[bg].sum())
        count += int(bg.sum()) * (diff.shape[2] if diff.ndim == 3 else 1)
    return total / count if count else float("nan")

"""Training windows: clips of the dataset as the denoiser sees them, augmented, in batches.

A window is ``carried + generated`` frames of one clip (:class:`~.denoiser.DenoiserConfig`), exactly
as the generator builds them live: the motion of every frame as its change from the portrait's own
frame (pose relative to the clip's typical frame, which a portrait shows; coefficients minus the
portrait's), normalised by the statistics of the training people; the frame's audio features, real
up to a boundary (the lookahead the generator will have) and the learned null audio after it.

What makes 16 minutes of ~50 people go further (every item is drawn anew for every window):

- audio copies of each clip made once (:data:`AUDIO_COPIES`): speed 0.9-1.1 (audio and motion
  resampled together), ±10 dB gain, noise at 10-40 dB SNR, room reverb (RT60 0.2-0.8 s), a tilt of
  the spectrum; copy 0 is the clip as recorded;
- the portrait frame drawn at random from the clip's frames with the mouth most closed (a photo
  rarely shows a mid-word mouth), so identity (the portrait's own smile, eyes) and expression are
  learned apart;
- mirroring: left and right coefficients swapped, yaw, roll and x negated;
- the lookahead boundary drawn over the window, so one model serves any lookahead;
- the stream start (carried frames = the portrait) 10 % of the time, noise on the carried frames half
  of the time (the live model continues from its own, imperfect, frames), the carried frames' mouth
  replaced by noise half of the time (the mouth must come from the audio, not from continuing the
  mouth it saw), and no audio at all 15 % of the time (classifier-free guidance);
- silence from a random frame on 10 % of the time, the mouth closing to the portrait's as it falls; with
  ``long_silence`` (run 13) 20 % of the time and from any frame, the carried ones too (whole windows of
  silence, as deep in a long pause).

With ``lips_shut`` (``TrainConfig.lips_shut_rest``, run 13 on) the portrait's lip openers are 0
(:func:`~emote.model.motion.interface.closed_mouth`): the mouth's motion is its opening itself, so a
portrait smiling with its teeth showing speaks from a shut mouth instead of closing it to speak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import fftconvolve, lfilter, resample_poly

from emote.model.motion.diffusion.clips import FPS, SAMPLE_RATE, Clip
from emote.model.motion.diffusion.denoiser import DenoiserConfig, mouth_dims
from emote.model.motion.diffusion.features import clip_features
from emote.model.motion.interface import ARKIT_NAMES, COEFF_INDEX, N_POSE, closed_mouth

AUDIO_COPIES = 6
#: The portrait frame is drawn from the frames whose jawOpen is below this quantile of the clip's.
REST_QUANTILE = 0.3
#: Coefficients whose spread within clips stays below this never move in the data: the model keeps the
#: portrait's value for them.
MIN_COEFF_STD = 0.002
P_STREAM_START, P_CARRIED_NOISE, P_NO_AUDIO, P_MIRROR = 0.1, 0.5, 0.15, 0.5
#: How often the carried frames' mouth is replaced by noise: the next frames' mouth must then come from the
#: audio. Without it a model learns to continue the mouth it sees (smooth and easy to predict) and barely
#: listens: free-running on held-out people, its jawOpen followed the real one at r 0.13.
P_MOUTH_UNKNOWN = 0.5
#: How often the audio falls silent inside a window (from a random frame on, as at the end of an
#: utterance, or from the first carried frame, as deep in a long pause): the mouth closes over
#: :data:`CLOSE_FRAMES` frames and stays at the portrait's, while the head, eyes and brows go on as
#: recorded. Real pauses are too short and too few to teach that silence means a closed mouth: the first
#: model opened the jaw to 0.14-0.25 in four seconds of silence. Run 10 saw silence only after speech in
#: the carried frames; rolled out through a minute of silence its lids stayed half shut up to 1.2 s and
#: its gaze fell (BENCHMARKS.md): ``long_silence`` draws :data:`P_LONG_SILENCE` from any frame instead.
P_SILENCE, P_LONG_SILENCE = 0.1, 0.2
CLOSE_FRAMES = 3
#: Width (Gaussian sigma, frames) of a zero-phase smoothing of the measured head pose that training runs 8
#: and 9 used (``TrainConfig.pose_smooth``; off by default, as in the shipped run 7). MediaPipe's pose
#: jitters from frame to frame (|second difference| 0.57 °/frame² averaged over the training clips'
#: rotations); at 1.5 frames it falls to 0.12 while the spread of the head's rotations keeps 97 % of its
#: size (3.13 of 3.24 °). It did not take the jitter out of the models (run 8 free-running: 0.96 °/frame²,
#: 0.69 with no sampling noise): that jitter is the block-by-block sampler's own (BENCHMARKS.md).
POSE_SMOOTH_FRAMES = 1.5
_JAW = COEFF_INDEX["jawOpen"]


def mirror_pairs() -> np.ndarray:
    """(52,) the index each ARKit coefficient takes in a mirrored face (Left <-> Right, jawLeft <-> jawRight)."""
    out = np.arange(len(ARKIT_NAMES))
    for i, name in enumerate(ARKIT_NAMES):
        for a, b in (("Left", "Right"), ("Right", "Left")):
            if name.endswith(a):
                out[i] = COEFF_INDEX[name[: -len(a)] + b]
    return out


_MIRROR = mirror_pairs()


def augment_audio(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """One random augmented copy of 16 kHz float audio, and its speed factor (> 1: faster)."""
    speed = float(rng.uniform(0.9, 1.1))
    up, down = 100, int(round(100 * speed))
    x = resample_poly(audio, up, down).astype(np.float32)
    speed = down / up
    if rng.random() < 0.5:  # a tilt of the spectrum: a brighter or duller microphone
        a = float(rng.uniform(-0.6, 0.6))
        x = lfilter([1.0, -a], [1.0], x).astype(np.float32) / (1 + abs(a))
    if rng.random() < 0.3:  # a room: exponentially decaying noise as the impulse response
        rt60 = rng.uniform(0.2, 0.8)
        t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
        ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
        ir[0] = 1.0 / float(rng.uniform(0.1, 0.5))  # the direct sound
        wet = fftconvolve(x, ir)[: len(x)]
        x = (wet * np.sqrt(np.sum(x**2) / max(np.sum(wet**2), 1e-12))).astype(np.float32)
    if rng.random() < 0.5:  # background noise, white or pink
        noise = rng.standard_normal(len(x))
        if rng.random() < 0.5:
            noise = lfilter([1.0], [1.0, -0.97], noise)
        snr_db = rng.uniform(10, 40)
        power = np.mean(x.astype(np.float64) ** 2) / 10 ** (snr_db / 10)
        x = x + (noise * np.sqrt(power / max(np.mean(noise**2), 1e-12))).astype(np.float32)
    x *= np.float32(10 ** (rng.uniform(-10, 10) / 20))
    return np.clip(x, -1.0, 1.0).astype(np.float32), speed


def _stretch(values: np.ndarray, n_out: int, speed: float) -> np.ndarray:
    """Motion of a clip played ``speed`` times as fast, on ``n_out`` frames."""
    t_out = np.arange(n_out) * speed
    t_in = np.arange(len(values))
    return np.stack([np.interp(t_out, t_in, values[:, j]) for j in range(values.shape[1])], 1).astype(np.float32)


@dataclass
class Copy:
    """One audio copy of a clip: motion (T, 58) = pose (6) + coeffs (52), features (T, A), rest pool."""

    motion: np.ndarray
    features: np.ndarray
    rest_frames: np.ndarray  # frames the portrait is drawn from


def prepare_copies(clip: Clip, mel: np.ndarray, rng: np.random.Generator, copies: int,
                   feature_set: str = "mel", pose_smooth: float = 0.0, block: int = 3) -> list[Copy]:
    """Copy 0 as recorded, then ``copies - 1`` augmented ones; the pose smoothed over ``pose_smooth`` frames
    (a Gaussian's sigma; 0 keeps it as measured); speech features in the generator's blocks of ``block``."""
    audio = clip.audio.astype(np.float32) / 32768.0
    pose = clip.pose
    if pose_smooth > 0:
        pose = gaussian_filter1d(pose.astype(np.float64), pose_smooth, axis=0, mode="nearest").astype(np.float32)
    motion = np.concatenate([pose, clip.coeffs], axis=1)
    motion[:, 5] = np.log(np.maximum(motion[:, 5], 1e-3))  # scale as log scale: symmetric around 0
    out = []
    for k in range(copies):
        x, speed = (audio, 1.0) if k == 0 else augment_audio(audio, rng)
        n = max(1, int(np.floor((len(motion) - 1) / speed)) + 1)
        m = motion if k == 0 else _stretch(motion, n, speed)
        jaw = m[:, N_POSE + _JAW]
        rest = np.flatnonzero(jaw <= np.quantile(jaw, REST_QUANTILE))
        out.append(Copy(m, clip_features(x, len(m), mel, feature_set, block=block), rest))
    return out


class WindowSampler:
    """Draws training (or validation) windows from prepared clips.

    Args:
        clips: per clip, its copies (:func:`prepare_copies`).
        cfg: the window shape.
        active: (M,) indices of the coefficients the model moves.
        norm: ``(motion_mean, motion_std, audio_mean, audio_std)``.
        silence: (A,) features of digital silence (frames before a stream starts).
    """

    def __init__(self, clips: list[list[Copy]], cfg: DenoiserConfig, active: np.ndarray,
                 norm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], silence: np.ndarray, *,
                 mouth_unknown: float = P_MOUTH_UNKNOWN, emitted_weight: float = 1.0, lips_shut: bool = False,
                 long_silence: bool = False) -> None:
        self.clips, self.cfg, self.active, self.lips_shut = clips, cfg, active, lips_shut
        self.long_silence = long_silence
        self.mouth_unknown, self.emitted_weight = mouth_unknown, emitted_weight
        self.motion_mean, self.motion_std, self.audio_mean, self.audio_std = norm
        self.silence = (silence - self.audio_mean) / self.audio_std
        self.mouth_dims = np.array(mouth_dims(active), np.int64)
        lengths = np.array([len(c[0].motion) for c in clips], np.float64)
        self.weights = lengths / lengths.sum()

    def rest_of(self, coeffs: np.ndarray) -> np.ndarray:
        """The (52,) rest of a portrait frame's coefficients (lips shut with ``lips_shut``)."""
        return closed_mouth(coeffs) if self.lips_shut else np.array(coeffs, np.float32)

    def delta(self, motion: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """(..., 58) motion and (52,) rest -> (..., D) normalised model vectors."""
        v = np.concatenate([motion[..., :N_POSE], motion[..., N_POSE + self.active] - rest[self.active]], axis=-1)
        return (v - self.motion_mean) / self.motion_std

    def window(self, rng: np.random.Generator, *, clip: int | None = None, start: int | None = None,
               boundary: int | None = None, augment: bool = True, silence_from: int | None = None
               ) -> dict[str, np.ndarray]:
        """One window (arrays of the denoiser's inputs without the batch axis, plus ``target`` and ``weight``).

        ``silence_from``: the window frame from which the audio is silent (see :data:`P_SILENCE`); drawn
        at random when augmenting.
        """
        cfg = self.cfg
        k_c, s_len = cfg.carried, cfg.frames
        ci = int(rng.choice(len(self.clips), p=self.weights)) if clip is None else clip
        copies = self.clips[ci]
        cp = copies[int(rng.integers(len(copies)))] if augment else copies[0]
        n = len(cp.motion)
        s = int(rng.integers(n)) if start is None else start
        rest_frame = int(rng.choice(cp.rest_frames)) if augment else int(cp.rest_frames[0])
        motion, rest = cp.motion, self.rest_of(cp.motion[rest_frame, N_POSE:])
        if augment and rng.random() < P_MIRROR:
            motion = motion.copy()
            motion[:, N_POSE:] = motion[:, N_POSE + _MIRROR]
            motion[:, [0, 2, 3]] *= -1.0
            rest = rest[_MIRROR]
        idx = np.arange(s - k_c, s - k_c + s_len)
        inside = (idx >= 0) & (idx < n)
        portrait = np.zeros(motion.shape[1], np.float32)
        portrait[N_POSE:] = rest
        frames = np.where(inside[:, None], motion[np.clip(idx, 0, n - 1)], portrait)
        x = self.delta(frames, rest).astype(np.float32)
        still = self.delta(portrait, rest)  # the portrait itself as a model frame
        audio = np.where(inside[:, None], (cp.features[np.clip(idx, 0, n - 1)] - self.audio_mean) / self.audio_std,
                         self.silence).astype(np.float32)
        if silence_from is None and augment and rng.random() < (P_LONG_SILENCE if self.long_silence else P_SILENCE):
            silence_from = int(rng.integers(0 if self.long_silence else k_c - CLOSE_FRAMES, s_len))
        if silence_from is not None:
            audio[silence_from:] = self.silence
            closing = np.clip((np.arange(s_len) - silence_from + 1) / CLOSE_FRAMES, 0.0, 1.0)[:, None]
            x[:, self.mouth_dims] = x[:, self.mouth_dims] * (1.0 - closing) + still[self.mouth_dims] * closing
        known = np.zeros(s_len, np.float32)
        known[:k_c] = 1.0
        carried = x.copy()
        if augment and rng.random() < P_STREAM_START:
            carried[:k_c] = still
        elif augment and rng.random() < P_CARRIED_NOISE:
            carried[:k_c] += rng.normal(0, rng.uniform(0, 0.1), carried[:k_c].shape).astype(np.float32)
        if augment and rng.random() < self.mouth_unknown:
            carried[:k_c, self.mouth_dims] = rng.standard_normal((k_c, len(self.mouth_dims))).astype(np.float32)
        b = int(rng.integers(1, cfg.generated + 1)) if boundary is None else boundary
        has_audio = (np.arange(s_len) < k_c + b) & (idx < n)
        if augment and rng.random() < P_NO_AUDIO:
            has_audio[:] = False
        weight = np.zeros(s_len, np.float32)
        weight[k_c:] = inside[k_c:]
        weight[k_c : k_c + 3] *= self.emitted_weight  # the frames a live call emits
        return {"target": x, "carried": carried, "known": known, "audio": audio,
                "has_audio": has_audio.astype(np.float32), "rest": rest.astype(np.float32), "weight": weight}

    def batch(self, rng: np.random.Generator, size: int, **options: object) -> dict[str, np.ndarray]:
        items = [self.window(rng, **options) for _ in range(size)]  # type: ignore[arg-type]
        return {k: np.stack([it[k] for it in items]) for k in items[0]}

    def fixed_windows(self, stride: int, boundary: int) -> list[dict[str, np.ndarray]]:
        """Every ``stride``-th window of every clip, unaugmented (validation)."""
        rng = np.random.default_rng(0)
        return [self.window(rng, clip=c, start=s, boundary=boundary, augment=False)
                for c, copies in enumerate(self.clips) for s in range(0, len(copies[0].motion), stride)]


def rest_deltas(copy: Copy, active: np.ndarray, lips_shut: bool = False) -> np.ndarray:
    """(T, 6 + len(active)) unnormalised model vectors of a copy: its pose, and its active coefficients
    minus their mean over the copy's rest frames (the typical closed-mouth portrait; lip openers 0 with
    ``lips_shut``)."""
    m = copy.motion
    rest = m[copy.rest_frames].mean(axis=0)[N_POSE:]
    rest = closed_mouth(rest) if lips_shut else rest
    return np.concatenate([m[:, :N_POSE], m[:, N_POSE + active] - rest[active]], axis=1)


def statistics(clips: list[list[Copy]], silence: np.ndarray, lips_shut: bool = False) -> tuple[np.ndarray, ...]:
    """Active coefficients and normalisation statistics from the training clips' recorded copies."""
    motion = np.concatenate([c[0].motion for c in clips])
    spread = np.mean([c[0].motion[:, N_POSE:].std(axis=0) for c in clips], axis=0)
    active = np.flatnonzero(spread >= MIN_COEFF_STD)
    d = np.concatenate([rest_deltas(copies[0], active, lips_shut) for copies in clips])
    features = np.concatenate([copies[k].features for copies in clips for k in range(len(copies))])
    assert len(motion) == sum(len(c[0].motion) for c in clips)
    return (active, d.mean(0).astype(np.float32), np.maximum(d.std(0), 0.02).astype(np.float32),
            features.mean(0).astype(np.float32), np.maximum(features.std(0), 1e-3).astype(np.float32))


def prepare_all(clips: list[Clip], mel: np.ndarray, seed: int, copies: int,
                progress: Callable[[str], None] | None = None, feature_set: str = "mel",
                pose_smooth: float = 0.0, block: int = 3) -> list[list[Copy]]:
    rng = np.random.default_rng(seed)
    out = []
    for i, clip in enumerate(clips):
        out.append(prepare_copies(clip, mel, rng, copies, feature_set, pose_smooth, block))
        if progress and (i + 1) % 20 == 0:
            progress(f"features: {i + 1}/{len(clips)} clips")
    return out


__all__ = ["FPS", "Copy", "WindowSampler", "augment_audio", "mirror_pairs", "prepare_all", "rest_deltas", "statistics"]

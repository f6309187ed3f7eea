"""The analytic motion generator: speech acoustics → mouth, prosody → head, plus blinks and gaze.

No learned weights: the mouth follows loudness, voicing, fricative noise and
the first two formants (F1 opens the jaw, a low F2 rounds the lips, a high
F2 spreads them), smoothed by a critically damped spring that opens faster
than it closes (coarticulation), and led ahead of the sound by ``LEAD_S``
(lips move before the sound they make). Silence closes the mouth. The head
drifts slowly (smoothed Ornstein-Uhlenbeck noise), nods on stressed
syllables and lifts with pitch; the eyes blink at human rates (about 15 a
minute, more often at pauses) and make small saccades. Everything random is
drawn from counters keyed by the seed and the frame or event number, and all
filters run on fixed time grids, so the output does not depend on how the
audio was cut into windows. It is the fallback and the yardstick for the
learned generators.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from emote.model.motion.baseline.audio_features import HOP, SAMPLE_RATE, hop_features
from emote.model.motion.baseline.mouth_dynamics import MOUTH_CHANNELS, MouthFilter, mouth_targets
from emote.model.motion.interface import COEFF_INDEX, LIP_OPENERS, AudioWindow, MotionChunk, neutral_pose

LEAD_S = 0.05  # the mouth shows the sound this far ahead of hearing it
_C = COEFF_INDEX
MAX_ANGLE_DEG = 6.0
_BLINK_MEAN_S = 3.8  # ~15.8 blinks per minute
_SACCADE_MEAN_S = 2.2
#: Coefficients that part the lips; silence sets them to 0 whatever the photo shows (mouthLowerDown, one of
#: them, follows the jaw below).
_LIP_OPENERS = frozenset(LIP_OPENERS)


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """A generator for one (stream, index) pair: draws never depend on windowing."""
    return np.random.default_rng([seed & 0xFFFFFFFF, stream, index])


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a well-mixed 64-bit hash of x."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _frame_normals(seed: int, frame: int) -> tuple[float, float, float]:
    """Three standard normal draws for one frame, from a counter hash (a Generator per frame is slow)."""
    u = [(_mix64(((seed & 0xFFFFFFFF) << 32) ^ (frame * 8 + k) ^ 0x5EED) >> 11) / 2.0**53 for k in range(4)]
    r1, r2 = math.sqrt(-2.0 * math.log(max(u[0], 1e-300))), math.sqrt(-2.0 * math.log(max(u[2], 1e-300)))
    return r1 * math.cos(2 * math.pi * u[1]), r1 * math.sin(2 * math.pi * u[1]), r2 * math.cos(2 * math.pi * u[3])


#: Blink timing (s): lids close, stay shut, reopen (slower). Long enough to show shut lids on
#: two frames at 25 fps; a 30 ms hold showed on one at most and trackers mostly missed it.
BLINK_CLOSE_S, BLINK_HOLD_S, BLINK_OPEN_S = 0.08, 0.07, 0.15


def blink_profile(since_s: float) -> float:
    """Lid closure (0 open .. 1 closed) ``since_s`` seconds after a blink starts."""
    if since_s < 0 or since_s > BLINK_CLOSE_S + BLINK_HOLD_S + BLINK_OPEN_S:
        return 0.0
    if since_s < BLINK_CLOSE_S:
        return 0.5 - 0.5 * math.cos(math.pi * since_s / BLINK_CLOSE_S)
    if since_s < BLINK_CLOSE_S + BLINK_HOLD_S:
        return 1.0
    return 0.5 + 0.5 * math.cos(math.pi * (since_s - BLINK_CLOSE_S - BLINK_HOLD_S) / BLINK_OPEN_S)


@dataclass(frozen=True)
class BaselineState:
    """Everything the generator carries from one window to the next."""

    seed: int
    rest: np.ndarray  # (52,) the portrait's own coefficients
    next_frame: int
    mouth: MouthFilter
    head_ou: tuple[float, float, float]  # slow random drift (deg)
    head_smooth: tuple[float, float, float]  # drift after smoothing (deg)
    nod: tuple[float, float, float]  # nod spring: angle (deg), velocity, low-passed stress drive
    level_slow: float  # slow average of loudness, for stress detection
    pitch_stats: tuple[float, float]  # running mean and variance of log F0
    lift: float  # smoothed chin lift from pitch (deg)
    speech_prev: float  # speech activity of the previous frame
    blink_count: int
    blink_start_s: float
    next_blink_s: float
    saccade_count: int
    next_saccade_s: float
    gaze_from: tuple[float, float]
    gaze_to: tuple[float, float]
    saccade_start_s: float


class BaselineGenerator:
    """Analytic audio → motion generator (see the module docstring)."""

    name = "baseline"
    #: One frame per window: live, a frame's motion is ready as soon as its audio and the lookahead
    #: have arrived. Offline rendering merges windows (the output does not depend on the cut).
    window_frames = 1
    overlap_frames = 0
    context_ms = 20.0
    lookahead_ms = 1000.0 * LEAD_S + 25.0 + 10.0
    cut_invariant = True

    def initial_state(self, rest: np.ndarray, seed: int) -> BaselineState:
        rest = np.asarray(rest, np.float32).copy()
        first_blink = 0.8 + float(_rng(seed, 2, 0).gamma(2.5, _BLINK_MEAN_S / 2.5))
        return BaselineState(
            seed=int(seed), rest=rest, next_frame=0, mouth=MouthFilter.start(),
            head_ou=(0.0, 0.0, 0.0), head_smooth=(0.0, 0.0, 0.0), nod=(0.0, 0.0, 0.0), level_slow=0.0,
            pitch_stats=(math.log(150.0), 0.1), lift=0.0, speech_prev=0.0,
            blink_count=0, blink_start_s=-10.0, next_blink_s=first_blink,
            saccade_count=0, next_saccade_s=1.0 + float(_rng(seed, 3, 0).gamma(2.0, _SACCADE_MEAN_S / 2.0)),
            gaze_from=(0.0, 0.0), gaze_to=(0.0, 0.0), saccade_start_s=-10.0,
        )  # fmt: skip

    def generate(self, window: AudioWindow, state: BaselineState) -> tuple[MotionChunk, BaselineState]:
        if window.start_frame != state.next_frame:
            raise ValueError(f"window starts at frame {window.start_frame}, expected {state.next_frame}")
        if window.sample_rate != SAMPLE_RATE:
            raise ValueError(f"baseline needs {SAMPLE_RATE} Hz audio, got {window.sample_rate}")
        n, fps = window.n_frames, window.fps
        lead = int(round(LEAD_S * SAMPLE_RATE))
        end_sample = window.frame_start_sample(window.start_frame + n) + lead
        first_hop = state.mouth.next_hop
        n_hops = max(0, -(-end_sample // HOP) - first_hop)
        feats = hop_features(window.samples, window.first_sample, first_hop, n_hops)
        mouth, per_hop, mouth_state = mouth_targets(feats, state.mouth)
        hop_centres = (first_hop + np.arange(n_hops)) * HOP
        pose = neutral_pose(n)
        coeffs = np.repeat(state.rest[None, :], n, axis=0)
        st = state
        for i in range(n):
            frame = window.start_frame + i
            lo = window.frame_start_sample(frame) + lead
            hi = window.frame_start_sample(frame + 1) + lead
            sel = (hop_centres >= lo) & (hop_centres < hi)
            if sel.any():
                m = mouth[sel].mean(axis=0)
                speech = float(per_hop["speech"][sel].mean())
                level = float(per_hop["level"][sel].mean())
                voiced_pitch = per_hop["pitch"][sel]
                voiced_pitch = voiced_pitch[voiced_pitch > 0]
                f0 = float(np.median(voiced_pitch)) if len(voiced_pitch) else 0.0
            else:  # a frame shorter than a hop (fps > 100): reuse the filter's present value
                m = mouth_state.value.copy()
                speech, level, f0 = st.speech_prev, 0.0, 0.0
            st, pose[i], coeffs[i] = self._frame(st, frame, fps, m, speech, level, f0)
        st = dataclasses.replace(st, next_frame=window.start_frame + n, mouth=mouth_state)
        return MotionChunk(window.start_frame, fps, pose, coeffs), st

    def _frame(
        self, st: BaselineState, frame: int, fps: float, mouth: np.ndarray, speech: float, level: float, f0: float
    ) -> tuple[BaselineState, np.ndarray, np.ndarray]:
        """Pose and coefficients of one frame; returns the advanced state."""
        t = frame / fps
        dt = 1.0 / fps
        rest = st.rest
        coeffs = rest.copy()
        # Mouth: silence closes the lips (even a photo's open smile), speech adds the articulation.
        for k, name in enumerate(MOUTH_CHANNELS):
            base = 0.0 if name in _LIP_OPENERS else float(rest[_C[name]])
            coeffs[_C[name]] = min(1.0, base + float(mouth[k]))
        for side in ("Left", "Right"):
            coeffs[_C["mouthLowerDown" + side]] = min(1.0, 0.5 * float(mouth[MOUTH_CHANNELS.index("jawOpen")]))
        # Head: smoothed Ornstein-Uhlenbeck drift, larger while speaking.
        sigma = np.array([1.0, 0.6, 0.6]) + speech * np.array([1.0, 0.7, 0.6])
        tau = 2.5 - speech
        decay = math.exp(-dt / tau)
        noise = np.array(_frame_normals(st.seed, frame))
        ou = np.array(st.head_ou) * decay + sigma * math.sqrt(1 - decay * decay) * noise
        k_smooth = 1.0 - math.exp(-dt / 0.35)
        smooth = np.array(st.head_smooth) + k_smooth * (ou - np.array(st.head_smooth))
        # Stress: loudness jumping above its slow average nods the head and lifts the brows.
        accent = max(0.0, level - st.level_slow - 0.15) * speech
        level_slow = st.level_slow + (1.0 - math.exp(-dt / 0.4)) * (level - st.level_slow)
        # The nod follows the stress through a low-pass and a damped spring: a syllable's
        # loudness flickers from frame to frame, a head does not.
        angle, vel, drive = st.nod
        drive += (1.0 - math.exp(-dt / 0.12)) * (accent * 7.0 - drive)
        omega = 2 * math.pi * 1.2
        acc = omega * omega * (drive - angle) - 2 * 0.8 * omega * vel
        vel += acc * dt
        angle += vel * dt
        # Higher pitch lifts the chin a little, smoothly (pitch itself jumps from frame to frame).
        mean, var = st.pitch_stats
        lift_target = 0.0
        if f0 > 0:
            lf = math.log(f0)
            mean += 0.02 * (lf - mean)
            var += 0.02 * ((lf - mean) ** 2 - var)
            lift_target = float(np.clip((lf - mean) / math.sqrt(max(var, 1e-3)), -2, 2)) * 0.8 * speech
        lift = st.lift + (1.0 - math.exp(-dt / 0.4)) * (lift_target - st.lift)
        breath = 0.35 * math.sin(2 * math.pi * t / 4.2)
        yaw, pitch, roll = smooth[0], smooth[1] + angle - lift + breath, smooth[2]
        pose = np.array([yaw, pitch, roll, 0.0, 0.002 * math.sin(2 * math.pi * t / 4.2), 1.0], np.float32)
        pose[:3] = np.clip(pose[:3], -MAX_ANGLE_DEG, MAX_ANGLE_DEG)
        brow = min(0.35, max(0.0, angle) * 0.06)
        for name in ("browInnerUp", "browOuterUpLeft", "browOuterUpRight"):
            coeffs[_C[name]] = min(1.0, float(rest[_C[name]]) + brow)
        st = dataclasses.replace(st, head_ou=tuple(ou), head_smooth=tuple(smooth), nod=(angle, vel, drive),
                                 level_slow=level_slow, pitch_stats=(mean, var), lift=lift, speech_prev=speech)
        st, closure = self._blink(st, t, speech)
        for side in ("Left", "Right"):
            coeffs[_C["eyeBlink" + side]] = max(float(rest[_C["eyeBlink" + side]]), 0.95 * closure)
        st, (gx, gy) = self._gaze(st, t)
        for side, sign_out in (("Left", 1.0), ("Right", -1.0)):
            out, inward = max(0.0, gx * sign_out), max(0.0, -gx * sign_out)
            coeffs[_C["eyeLookOut" + side]] = float(rest[_C["eyeLookOut" + side]]) + out
            coeffs[_C["eyeLookIn" + side]] = float(rest[_C["eyeLookIn" + side]]) + inward
            coeffs[_C["eyeLookDown" + side]] = float(rest[_C["eyeLookDown" + side]]) + max(0.0, gy)
            coeffs[_C["eyeLookUp" + side]] = float(rest[_C["eyeLookUp" + side]]) + max(0.0, -gy)
        return st, pose, np.clip(coeffs, 0.0, 1.0)

    def _blink(self, st: BaselineState, t: float, speech: float) -> tuple[BaselineState, float]:
        """Advance the blink schedule to time ``t``; returns the lid closure now."""
        pause_started = st.speech_prev > 0.5 and speech < 0.2
        due = t >= st.next_blink_s
        # People tend to blink as a phrase ends.
        at_pause = pause_started and t - st.blink_start_s > 1.5 and _rng(st.seed, 4, st.blink_count).random() < 0.6
        if (due or at_pause) and t - st.blink_start_s > 0.4:
            count = st.blink_count + 1
            interval = max(1.0, float(_rng(st.seed, 2, count).gamma(2.5, _BLINK_MEAN_S / 2.5)))
            st = dataclasses.replace(st, blink_count=count, blink_start_s=t, next_blink_s=t + interval)
        return st, blink_profile(t - st.blink_start_s)

    def _gaze(self, st: BaselineState, t: float) -> tuple[BaselineState, tuple[float, float]]:
        """Advance the saccade schedule to time ``t``; returns the gaze offset (x right, y down)."""
        if t >= st.next_saccade_s:
            count = st.saccade_count + 1
            rng = _rng(st.seed, 3, count)
            # Mostly back to the camera; sometimes a glance away.
            target = (0.0, 0.0) if rng.random() < 0.45 else (
                float(np.clip(rng.normal(0, 0.22), -0.4, 0.4)), float(np.clip(rng.normal(0.02, 0.1), -0.25, 0.25)))
            now = self._gaze_at(st, t)
            st = dataclasses.replace(st, saccade_count=count, gaze_from=now, gaze_to=target, saccade_start_s=t,
                                     next_saccade_s=t + 0.4 + float(rng.gamma(2.0, _SACCADE_MEAN_S / 2.0)))
        return st, self._gaze_at(st, t)

    @staticmethod
    def _gaze_at(st: BaselineState, t: float) -> tuple[float, float]:
        k = min(1.0, max(0.0, (t - st.saccade_start_s) / 0.06))
        k = k * k * (3 - 2 * k)
        return (st.gaze_from[0] + k * (st.gaze_to[0] - st.gaze_from[0]),
                st.gaze_from[1] + k * (st.gaze_to[1] - st.gaze_from[1]))

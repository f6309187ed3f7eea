"""The ``diffusion`` motion generator: the distilled student, run on a fixed block schedule.

The model works on a 25 fps grid in blocks of ``emit_frames`` (3) frames. Each block is one window
of the denoiser: the last ``carried`` (8) frames it made before (EMO's motion frames, kept in the
state), then the block, then a provisional future it throws away. Audio features are real up to
``lookahead_frames`` (0) frames beyond the block and the learned null audio after that, or, as the
shipped config asks, the last heard frame sustained when it is quiet; noise is seeded by (seed, block number), so the
motion depends only on the audio and the seed, never on how it arrived. One denoiser call per block
(the student was distilled to one step with guidance folded in). A model whose feature set ends in
``+speech`` (``+speech1s``) also runs Whisper's encoder once per block over the 2 s (1 s) of audio that end
with it (:mod:`~.speech`), so its windows carry that much audio as context. Digital silence is heard as a quiet
room (comfort noise), and :mod:`~.blocks` decides what is shown: the mouth at rest in silence, and each
block's head starting from what the window before foresaw for it.

Windows: the generator asks for windows of ``emit_frames`` frames with the audio of its carried
frames as context and ``lookahead_frames`` of lookahead; at 25 fps each window is exactly one block,
so a live call waits for the block's 3 frames (120 ms, plus half an analysis window) before the
first frame of a block can be made. At other frame rates (evaluation renders real videos at their
own rate) frames are interpolated between the model's, which are made as soon as a window needs them
with the audio that window holds.

The weights (``config.json`` + ``model.safetensors``) are loaded once per process and shared by every
generator; running needs torch and safetensors, not diffusers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emote.model.errors import DependencyError
from emote.model.motion.baseline.mouth_dynamics import MouthFilter
from emote.model.motion.diffusion.blocks import (
    articulation_gate,
    crossfade_pose,
    sustain_quiet,
)
from emote.model.motion.diffusion.denoiser import blink_dims, mouth_dims
from emote.model.motion.diffusion.features import (
    COMFORT_NOISE_RMS,
    DITHER_RMS,
    DITHER_TRACK,
    FPS,
    HOP,
    MARGIN_SAMPLES,
    clip_features,
    frame_dim,
    frame_features,
    prior_features,
    spectral_set,
    speech_context,
)
from emote.model.motion.interface import N_COEFFS, N_POSE, AudioWindow, MotionChunk, closed_mouth

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "motion_diffusion"
SAMPLE_RATE = 16000
_FRAME_SAMPLES = int(SAMPLE_RATE / FPS)


@dataclass(frozen=True)
class DiffusionState:
    """What the generator carries from window to window.

    Attributes:
        seed: the random seed (noise of block b comes from (seed, b)).
        rest: (52,) the portrait's coefficients.
        next_frame: the next output frame expected.
        model_frames: 25 fps frames made so far.
        carried: (carried, D) the last model frames, normalised, as the denoiser continues from them.
        features: (carried, A) normalised audio features of the 25 fps frames just before
            ``model_frames`` (a frame's features depend only on the audio around it, so they are
            computed once; frames of the lookahead are not kept: an interruption may still silence them).
        features_valid: (carried,) bool, which rows of ``features`` hold features.
        shown: (carried,) share of each carried frame's articulation that is shown (:func:`articulation_gate`).
        mouth: the analytic articulation filter of the ``mel+prior`` features, run up to ``model_frames``
            (None for the other feature sets).
        ahead: (<= emit, D) the last window's provisional frames for the next block (:func:`crossfade_pose`).
    """

    seed: int
    rest: np.ndarray
    next_frame: int
    model_frames: int
    carried: np.ndarray
    features: np.ndarray
    features_valid: np.ndarray
    shown: np.ndarray
    mouth: MouthFilter | None = None
    ahead: np.ndarray | None = None


@functools.lru_cache(maxsize=1)
def alphas_cumprod(steps: int = 1000) -> np.ndarray:
    """(steps,) float64 cumulative signal share of the cosine noise schedule ("squaredcos_cap_v2", the
    one the model was trained with), computed as diffusers computes it."""

    def alpha_bar(t: float) -> float:
        return float(np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2)

    betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
    return np.cumprod(1.0 - np.array(betas))


def ddim_timesteps(steps: int, train_steps: int = 1000) -> list[int]:
    """DDIM's timesteps with "trailing" spacing (the first is always pure noise): 999, ..., for ``steps``."""
    return [int(t) for t in np.round(np.arange(train_steps, 0, -train_steps / steps)).astype(np.int64) - 1]


@functools.lru_cache(maxsize=4)
def load_model(folder: str) -> tuple[Any, dict[str, Any]]:
    """The denoiser and its config from a weights folder (loaded once per process)."""
    try:
        import torch  # noqa: F401

        from emote.model.motion.diffusion.denoiser import MotionDenoiser
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise DependencyError(f"the diffusion motion model needs torch ({exc}); run `make install`") from exc
    path = Path(folder)
    if not (path / "model.safetensors").is_file():
        raise DependencyError(f"{path}: no trained motion model there (model.safetensors is missing); train one "
                              "with `make train` or choose --motion baseline")
    model, config = MotionDenoiser.load(path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, config


class DiffusionGenerator:
    """A :class:`~emote.model.motion.interface.MotionGenerator` driven by the distilled motion model.

    Args:
        weights: folder with ``config.json`` and ``model.safetensors`` (default: the shipped model).
    """

    name = "diffusion"
    cut_invariant = False

    def __init__(self, weights: str | Path | None = None) -> None:
        self.model, config = load_model(str(Path(weights or DEFAULT_WEIGHTS).resolve()))
        cfg = self.model.cfg
        gen = config.get("generator", {})
        self.emit = int(gen.get("emit_frames", 2))
        self.lookahead = int(gen.get("lookahead_frames", 1))
        self.sustain = bool(gen.get("sustain_audio", False))
        self.lips_shut = bool(gen.get("lips_shut_rest", False))  # trained with the portrait's lips shut (run 13 on)
        self.crossfade = bool(gen.get("crossfade_pose", False))
        self.feature_set = str(config.get("features", "mel"))
        sampling = config.get("sampling", {})
        self.steps = int(sampling.get("steps", 1))  # 1: the distilled student; more: the teacher (DDIM)
        self.guidance = float(sampling.get("guidance", 1.0))
        self.carried = cfg.carried
        self.window_frames = self.emit
        self.overlap_frames = cfg.carried
        # Audio of the carried frames before the window, of the lookahead after it, and the analysis margins.
        self.context_ms = 1000.0 * (cfg.carried * _FRAME_SAMPLES + MARGIN_SAMPLES) / SAMPLE_RATE
        self._speech_context = speech_context(self.feature_set)
        self._speech = self._speech_context > 0
        if self._speech:  # a block's speech features encode the seconds before it (features.speech_context)
            self.context_ms = max(self.context_ms, 1000.0 * (self._speech_context * _FRAME_SAMPLES + MARGIN_SAMPLES)
                                  / SAMPLE_RATE)
        self.lookahead_ms = 1000.0 * (self.lookahead * _FRAME_SAMPLES + MARGIN_SAMPLES) / SAMPLE_RATE
        m = self.model
        self._mean, self._std = m.motion_mean.numpy(), m.motion_std.numpy()
        # The articulation's sampling path starts at the centre of the noise (0: its own random variation
        # only adds lip-sync error); the head, eyes and brows are sampled, at the temperature the config
        # gives (TrainConfig.mouth_noise, TrainConfig.motion_noise).
        self._noise_scale = np.full(self._mean.shape[0], float(sampling.get("motion_noise", 1.0)), np.float32)
        self._mouth = mouth_dims(self.model.active.tolist())
        self._noise_scale[self._mouth] = float(sampling.get("mouth_noise", 1.0))
        if "blink_noise" in sampling:  # the lids at their own temperature (TrainConfig.blink_noise)
            self._noise_scale[blink_dims(self.model.active.tolist())] = float(sampling["blink_noise"])
        self._audio_mean, self._audio_std = m.audio_mean.numpy(), m.audio_std.numpy()
        self._mel = m.mel.numpy()
        self._silence = clip_features(np.zeros(_FRAME_SAMPLES, np.float32), 1, self._mel, self.feature_set,
                                      COMFORT_NOISE_RMS, block=self.emit)[0]
        self._active = m.active.numpy().astype(np.int64)
        if self._audio_mean.shape != (frame_dim(self.feature_set),):
            raise DependencyError(f"{weights}: the model's audio features ({self._audio_mean.shape[0]}) are not "
                                  f"the {self.feature_set!r} set its config names; retrain it")

    def initial_state(self, rest: np.ndarray, seed: int) -> DiffusionState:
        rest = closed_mouth(rest) if self.lips_shut else np.asarray(rest, np.float32).copy()
        portrait = ((np.zeros(self._mean.shape) - self._mean) / self._std).astype(np.float32)
        return DiffusionState(seed=int(seed), rest=rest, next_frame=0, model_frames=0,
                              carried=np.repeat(portrait[None], self.carried, axis=0),
                              features=np.zeros((self.carried, self._audio_mean.shape[0]), np.float32),
                              features_valid=np.zeros(self.carried, bool),
                              mouth=MouthFilter.start() if self.feature_set == "mel+prior" else None,
                              shown=np.ones(self.carried, np.float32))

    def generate(self, window: AudioWindow, state: DiffusionState) -> tuple[MotionChunk, DiffusionState]:
        if window.start_frame != state.next_frame:
            raise ValueError(f"window starts at frame {window.start_frame}, expected {state.next_frame}")
        if window.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the diffusion model needs {SAMPLE_RATE} Hz audio, got {window.sample_rate}")
        n = window.n_frames
        times = (window.start_frame + np.arange(n)) / window.fps  # seconds
        need = int(np.ceil(times[-1] * FPS - 1e-9)) + 1 if n else state.model_frames
        st = state
        made = 0  # model frames made in this call
        history = st.carried
        features, valid, mouth, ahead, shown = st.features, st.features_valid, st.mouth, st.ahead, st.shown
        while st.model_frames + made < need:
            block, future, gate, features, valid, mouth = self._block(window, st, st.model_frames + made, history,
                                                                      features, valid, mouth)
            if self.crossfade and ahead is not None:
                block = crossfade_pose(block, ahead)
            history, shown, ahead = np.concatenate([history, block]), np.concatenate([shown, gate]), future
            made += len(block)
        first = st.model_frames + made - len(history)  # model frame of history[0]
        # What is shown: the articulation relaxed in silence (the model goes on from its own frames).
        raw = history * self._std + self._mean
        raw[:, self._mouth] *= shown[:, None]
        pose = np.zeros((n, N_POSE), np.float32)
        coeffs = np.repeat(st.rest[None], n, axis=0)
        if n:
            pos = times * FPS - first
            i0 = np.clip(np.floor(pos).astype(int), 0, len(raw) - 1)
            i1 = np.clip(i0 + 1, 0, len(raw) - 1)
            frac = (pos - np.floor(pos))[:, None].astype(np.float32)
            v = raw[i0] * (1 - frac) + raw[i1] * frac
            pose[:] = v[:, :N_POSE]
            pose[:, 5] = np.exp(v[:, 5])
            coeffs[:, self._active] = np.clip(st.rest[self._active] + v[:, N_POSE:], 0.0, 1.0)
        new_state = dataclasses.replace(st, next_frame=window.start_frame + n, model_frames=st.model_frames + made,
                                        carried=history[-self.carried :].copy(), features=features,
                                        features_valid=valid, mouth=mouth, shown=shown[-self.carried :].copy(),
                                        ahead=ahead)
        return MotionChunk(window.start_frame, window.fps, pose, coeffs.astype(np.float32)), new_state

    def _noise(self, seed: int, block_start: int) -> np.ndarray:
        digest = hashlib.sha256(f"{seed}:{block_start}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        noise = rng.standard_normal((self.model.cfg.frames, self._mean.shape[0]))
        return (noise * self._noise_scale).astype(np.float32)

    def _block(self, window: AudioWindow, st: DiffusionState, m0: int, history: np.ndarray, cached: np.ndarray,
               valid: np.ndarray, mouth: MouthFilter | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, MouthFilter | None]:
        """The next ``emit`` normalised model frames from 25 fps frame ``m0`` on, the window's provisional
        frames after them, the share of their articulation to show, and the feature cache for the block
        after (features of the ``carried`` frames before ``m0 + emit``)."""
        import torch

        cfg = self.model.cfg
        k, s_len = cfg.carried, cfg.frames
        carried = np.zeros((s_len, self._mean.shape[0]), np.float32)
        carried[:k] = history[-k:]
        known = np.zeros(s_len, np.float32)
        known[:k] = 1.0
        frames = m0 - k + np.arange(s_len)  # 25 fps frame of each position
        # Which frames' audio this window holds (features read MARGIN_SAMPLES around a frame).
        last = window.first_sample + len(window.samples)
        ok = (frames * _FRAME_SAMPLES + _FRAME_SAMPLES + MARGIN_SAMPLES <= last) & (
            frames * _FRAME_SAMPLES - MARGIN_SAMPLES >= window.first_sample)
        if mouth is not None:  # a frame whose articulation the filter has passed can only come from the cache
            ok &= (frames >= mouth.next_hop // 4) | (frames < 0)
        has_audio = (ok | np.r_[valid, np.zeros(s_len - k, bool)]) & (frames < m0 + self.emit + self.lookahead)
        audio = np.zeros((s_len, self._audio_mean.shape[0]), np.float32)
        audio[:k][valid] = cached[valid]
        todo = np.flatnonzero(has_audio & ~np.r_[valid, np.zeros(s_len - k, bool)])
        if len(todo):
            lo, hi = int(todo[0]), int(todo[-1]) + 1
            feats, mouth = self._features(window, frames[lo:hi], m0 + self.emit, mouth)
            audio[lo:hi] = (feats - self._audio_mean) / self._audio_std
        keep = slice(self.emit, k + self.emit)  # positions of the frames before the next block's m0
        cache, cache_valid = audio[keep].copy(), has_audio[keep].copy()
        heard = has_audio.astype(np.float32)
        if self.sustain:
            boundary = k + self.emit + self.lookahead
            sustain_quiet(audio, heard, boundary, self._audio_mean, self._audio_std, self.feature_set)
        gate = articulation_gate(audio * self._audio_std + self._audio_mean, has_audio, self.feature_set,
                                 k, self.emit)
        inputs = [torch.from_numpy(a[None]) for a in (carried, known, audio, heard, st.rest)]
        x0 = self.sample(self._noise(st.seed, m0), *inputs)
        return x0[k : k + self.emit], x0[k + self.emit : k + 2 * self.emit].copy(), gate, cache, cache_valid, mouth

    def _features(self, window: AudioWindow, frames: np.ndarray, commit_until: int, mouth: MouthFilter | None
                  ) -> tuple[np.ndarray, MouthFilter | None]:
        """Raw features of consecutive 25 fps frames; the articulation filter advances through the frames
        before ``commit_until`` only (the lookahead's audio may still be silenced by an interruption)."""
        out = np.repeat(self._silence[None], len(frames), axis=0)  # frames before the stream: silence
        pos = frames[frames >= 0]
        if not len(pos):
            return out, mouth
        a, b = int(pos[0]), int(pos[-1]) + 1
        base = spectral_set(self.feature_set)
        feats = frame_features(window.samples, window.first_sample, a, b - a, self._mel,
                               "mel" if base == "mel+prior" else base, COMFORT_NOISE_RMS)
        if mouth is not None:
            parts = []
            split = min(max(commit_until, a), b)
            if split > a:
                part, mouth = prior_features(window.samples, window.first_sample, a, split - a, mouth)
                parts.append(part)
            if b > split:
                parts.append(prior_features(window.samples, window.first_sample, split, b - split, mouth)[0])
            feats = np.concatenate([feats, np.concatenate(parts)], axis=1)
        if self._speech:
            from emote.model.motion.diffusion.speech import frames_speech

            speech = frames_speech(window.samples, window.first_sample, a, b - a, self.emit, DITHER_TRACK,
                                   COMFORT_NOISE_RMS / DITHER_RMS, self._speech_context)
            feats = np.concatenate([feats, speech], axis=1)
        out[frames >= 0] = feats
        return out, mouth


    def sample(self, noise: np.ndarray, carried: Any, known: Any, audio: Any, has_audio: Any, rest: Any) -> np.ndarray:
        """(S, D) clean motion of one window from seeded noise (:func:`ddim_sample`)."""
        import torch

        x0 = ddim_sample(self.model, torch.from_numpy(noise[None]), (carried, known, audio, has_audio, rest),
                         steps=self.steps, guidance=self.guidance)
        return x0[0].numpy()


def ddim_sample(model: Any, noise: Any, inputs: tuple[Any, ...], *, steps: int, guidance: float) -> Any:
    """(B, S, D) clean motion of a batch of windows from noise: one step for the student; DDIM with
    classifier-free guidance for a teacher (the sampler it was validated with, written out so running a
    model needs no diffusers). ``inputs``: carried, known, audio, has_audio, rest."""
    import torch

    carried, known, audio, has_audio, rest = inputs
    silent = torch.zeros_like(has_audio)
    x, x0 = noise, noise
    timesteps = ddim_timesteps(steps)
    alphas = alphas_cumprod()
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            tt = torch.full((len(x),), t, dtype=torch.long)
            x0 = model(x, tt, carried, known, audio, has_audio, rest)
            if guidance != 1.0:
                unconditional = model(x, tt, carried, known, audio, silent, rest)
                x0 = unconditional + guidance * (x0 - unconditional)
            if i + 1 == len(timesteps):
                break
            a_t, a_prev = alphas[t], alphas[timesteps[i + 1]]
            eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1.0 - a_t)
            x = (np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps).float()
    return x0


assert HOP * 4 == _FRAME_SAMPLES and N_COEFFS == 52

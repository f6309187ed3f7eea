"""Free-running validation: the model generates whole held-out clips from their audio, as it will live.

Predicting the next frames from real previous frames is easy for a motion model: motion is smooth,
and a model can score well there while hardly listening. What users see is the model continuing from
its *own* frames, block after block, from the stream start. :func:`rollout` does exactly that for a
batch of clips at once (the block schedule of :class:`~.generator.DiffusionGenerator`: ``emit`` frames
per window, ``lookahead`` frames of audio beyond them, the portrait as the carried frames at the
start), and :func:`rollout_metrics` compares the result with what the real people did: the
correlation of jawOpen over time (lip sync), head motion and blinks.
"""

from __future__ import annotations

import numpy as np
import torch

from emote.model.motion.diffusion.blocks import (
    articulation_gate,
    crossfade_pose,
    relax_articulation,
    sustain_audio,
    sustain_quiet,
)
from emote.model.motion.diffusion.denoiser import MotionDenoiser, blink_dims
from emote.model.motion.diffusion.windows import Copy, WindowSampler
from emote.model.motion.interface import COEFF_INDEX, N_POSE

T_MAX = 999


@torch.no_grad()
def rollout(model: MotionDenoiser, sampler: WindowSampler, copies: list[Copy], *, emit: int, lookahead: int,
            steps: int = 1, guidance: float = 1.0, seed: int = 0, temperature: float = 1.0,
            sustain: bool = False, feature_set: str | None = None, crossfade: bool = False,
            blink_temperature: float | None = None) -> list[np.ndarray]:
    """Generated normalised motion (T, D) of each clip, from its audio alone (the first frame as portrait).

    The generator's block rules (:mod:`~.blocks`): ``sustain``, the audio beyond the lookahead is heard as
    the last frame's, sustained (where that frame is quiet, given ``feature_set``); ``feature_set`` given,
    the shown articulation relaxes in silence; ``crossfade``, blocks start from the pose the window before
    foresaw. ``blink_temperature``: the eyeBlink dimensions' noise scale, where it differs from ``temperature``.
    """
    from emote.model.motion.diffusion.generator import ddim_sample

    model.eval()
    cfg = model.cfg
    k, s_len, d = cfg.carried, cfg.frames, cfg.motion_dim
    lengths = [len(c.motion) for c in copies]
    mouth = list(sampler.mouth_dims)
    blinks = blink_dims(sampler.active.tolist())
    rests = [sampler.rest_of(c.motion[int(c.rest_frames[0]), N_POSE:]) for c in copies]
    start = np.stack([sampler.delta(np.r_[np.zeros(N_POSE), r], r) for r in rests]).astype(np.float32)
    history = [np.repeat(s[None], k, axis=0) for s in start]
    out: list[list[np.ndarray]] = [[] for _ in copies]
    ahead: list[np.ndarray | None] = [None for _ in copies]
    gen = torch.Generator().manual_seed(seed)
    for m0 in range(0, max(lengths), emit):
        live = [i for i, n in enumerate(lengths) if m0 < n]
        b = len(live)
        carried = np.zeros((b, s_len, d), np.float32)
        audio = np.zeros((b, s_len, sampler.silence.shape[0]), np.float32)
        has_audio = np.zeros((b, s_len), np.float32)
        idx = m0 - k + np.arange(s_len)
        for row, i in enumerate(live):
            carried[row, :k] = history[i][-k:]
            inside = (idx >= 0) & (idx < lengths[i])
            feats = (copies[i].features[np.clip(idx, 0, lengths[i] - 1)] - sampler.audio_mean) / sampler.audio_std
            audio[row] = np.where(inside[:, None], feats, sampler.silence)
            has_audio[row] = (idx < m0 + emit + lookahead) & (idx < lengths[i])
        gates = [articulation_gate(audio[row] * sampler.audio_std + sampler.audio_mean, has_audio[row] > 0,
                                   feature_set, k, emit) if feature_set else np.ones(emit, np.float32)
                 for row in range(b)]
        if sustain:
            if feature_set:
                sustain_quiet(audio, has_audio, k + emit + lookahead, sampler.audio_mean, sampler.audio_std,
                              feature_set)
            else:
                sustain_audio(audio, has_audio, k + emit + lookahead)
        known = torch.zeros(b, s_len)
        known[:, :k] = 1
        tensors = [torch.from_numpy(carried), known, torch.from_numpy(audio), torch.from_numpy(has_audio),
                   torch.from_numpy(np.stack([rests[i] for i in live]).astype(np.float32))]
        x = torch.randn(b, s_len, d, generator=gen) * temperature
        x[..., mouth] = 0.0  # the articulation's sampling path starts at the centre (as the generator's)
        if blink_temperature is not None and temperature > 0:
            x[..., blinks] *= blink_temperature / temperature
        x0 = ddim_sample(model, x, tuple(tensors), steps=steps, guidance=guidance)
        block, future = x0[:, k : k + emit].numpy(), x0[:, k + emit : k + 2 * emit].numpy()
        for row, i in enumerate(live):
            made, prior = block[row], ahead[i]
            if crossfade and prior is not None:
                made = crossfade_pose(made, prior)
            ahead[i] = future[row]
            history[i] = np.concatenate([history[i], made])[-k:]  # the model goes on from its own frames
            out[i].append(relax_articulation(made, gates[row], mouth, sampler.motion_mean, sampler.motion_std))
    model.train()
    return [np.concatenate(o)[:n] for o, n in zip(out, lengths, strict=True)]


#: Rise of the mean eyeBlink coefficient above its median that counts as a closed lid.
BLINK_RISE = 0.25


def rollout_metrics(sampler: WindowSampler, copies: list[Copy], generated: list[np.ndarray]) -> dict[str, float]:
    """Lip sync (jawOpen r over time, pooled over clips and the median clip), head yaw spread relative to the
    real one, and blinks per minute, of generated clips against the real ones.

    Blinks are counted in coefficient units, as :mod:`bench.motion_checks` counts them: the mean eyeBlink
    rising more than :data:`BLINK_RISE` above the clip's median (a closed lid; real blinks of the
    validation people reach 0.5-0.7 above it). A threshold in normalised units counted half-closed dips
    of 0.1 as blinks: a teacher that reported 3.8 of them per minute rendered videos without one blink.
    """
    active = list(sampler.active)
    jaw = N_POSE + active.index(COEFF_INDEX["jawOpen"])
    blink = [N_POSE + active.index(COEFF_INDEX[n]) for n in ("eyeBlinkLeft", "eyeBlinkRight")]
    per_clip, real_all, gen_all, yaw_ratio, blinks, real_blinks, minutes = [], [], [], [], 0, 0, 0.0

    def onsets(normalised: np.ndarray) -> int:
        closure = (normalised[:, blink] * sampler.motion_std[blink] + sampler.motion_mean[blink]).mean(axis=1)
        shut = closure > np.median(closure) + BLINK_RISE
        return int(np.sum(shut[1:] & ~shut[:-1]))

    for c, g in zip(copies, generated, strict=True):
        real = sampler.delta(c.motion, c.motion[int(c.rest_frames[0]), N_POSE:])
        real_all.append(real[:, jaw] - real[:, jaw].mean())
        gen_all.append(g[:, jaw] - g[:, jaw].mean())
        if len(g) > 25 and np.std(g[:, jaw]) > 0 and np.std(real[:, jaw]) > 0:
            per_clip.append(float(np.corrcoef(g[:, jaw], real[:, jaw])[0, 1]))
        yaw_ratio.append(float(g[:, 0].std() / max(real[:, 0].std(), 1e-6)))
        blinks += onsets(g)
        real_blinks += onsets(real)
        minutes += len(g) / 25 / 60
    pooled = float(np.corrcoef(np.concatenate(gen_all), np.concatenate(real_all))[0, 1])
    return {"rollout_jaw_r": pooled, "rollout_jaw_r_median": float(np.median(per_clip)) if per_clip else float("nan"),
            "rollout_yaw_spread_ratio": float(np.median(yaw_ratio)), "rollout_blinks_per_min": blinks / minutes,
            "real_blinks_per_min": real_blinks / minutes}


def evaluate_folder(dataset: str, folder: str, *, side: str = "validation", steps: int | None = None,
                    guidance: float | None = None, seed: int = 0, temperature: float | None = None,
                    blink_temperature: float | None = None) -> dict[str, float]:
    """:func:`rollout_metrics` of a saved model (``emote train``'s teacher/ or student/) on one side of a dataset."""
    from emote.model.motion.diffusion.dataset import dataset_clips
    from emote.model.motion.diffusion.features import clip_features
    from emote.model.motion.diffusion.windows import prepare_all

    model, config = MotionDenoiser.load(folder)
    sampling = config.get("sampling", {})
    generator = config.get("generator", {})
    mel = model.array("mel")
    clips = [clip for _, clip in dataset_clips(dataset, side)]
    feature_set, emit = str(config.get("features", "mel")), int(generator.get("emit_frames", 2))
    copies = [c[0] for c in prepare_all(clips, mel, seed, 1, feature_set=feature_set, block=emit)]
    norm = (model.array("motion_mean"), model.array("motion_std"), model.array("audio_mean"),
            model.array("audio_std"))
    sampler = WindowSampler([[c] for c in copies], model.cfg, model.array("active").astype(np.int64), norm,
                            clip_features(np.zeros(640, np.float32), 1, mel, feature_set, block=emit)[0],
                            lips_shut=bool(generator.get("lips_shut_rest", False)))
    generated = rollout(model, sampler, copies, emit=emit,
                        lookahead=int(generator.get("lookahead_frames", 1)),
                        sustain=bool(generator.get("sustain_audio", False)), feature_set=feature_set,
                        crossfade=bool(generator.get("crossfade_pose", False)),
                        steps=steps or int(sampling.get("steps", 1)),
                        guidance=guidance if guidance is not None else float(sampling.get("guidance", 1.0)), seed=seed,
                        temperature=float(sampling.get("motion_noise", 1.0)) if temperature is None else temperature,
                        blink_temperature=blink_temperature if blink_temperature is not None else (
                            float(sampling["blink_noise"]) if "blink_noise" in sampling else None))
    return rollout_metrics(sampler, copies, generated)

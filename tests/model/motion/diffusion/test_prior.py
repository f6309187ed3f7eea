"""The articulation prior: fitted in closed form it follows mouths of clips it never saw, the denoiser hears
it causally, it round-trips with the weights, and the training pose is freed of the tracker's jitter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from emote.model.motion.diffusion.clips import Clip
from emote.model.motion.diffusion.denoiser import MotionDenoiser, mouth_dims
from emote.model.motion.diffusion.features import N_MELS, clip_features, hop_features, mel_matrix
from emote.model.motion.diffusion.prior import TARGET_LAGS, fit_prior, prior_r, prosody_columns
from emote.model.motion.diffusion.windows import POSE_SMOOTH_FRAMES, prepare_all, prepare_copies, statistics
from tests.model.motion.diffusion._tiny import TINY, tiny_model
from tests.model.motion.diffusion.test_train import synthetic_clip

MEL = mel_matrix()
SILENCE = clip_features(np.zeros(640, np.float32), 1, MEL, "mel+formants")[0]


def _fitted(train: list[Clip]) -> tuple[np.ndarray, ...]:
    copies = prepare_all(train, MEL, seed=0, copies=1, feature_set="mel+formants")
    active, *norm = statistics(copies, SILENCE)
    mouth = np.asarray(mouth_dims(active))
    weight, bias = fit_prior(copies, mouth, active, tuple(norm), SILENCE, frames=5)  # type: ignore[arg-type]
    return weight, bias, mouth, active, tuple(norm)  # type: ignore[return-value]


def test_the_prior_follows_mouths_it_was_not_fitted_on() -> None:
    weight, bias, mouth, active, norm = _fitted([synthetic_clip(8.0, s) for s in range(4)])
    assert weight.shape == (len(TARGET_LAGS) * len(mouth), len(SILENCE), 5) and bias.shape == (weight.shape[0],)
    held_out = [c[0] for c in prepare_all([synthetic_clip(8.0, s) for s in (10, 11)], MEL, 1, 1,
                                          feature_set="mel+formants")]
    jaw = 6 + list(active).index(24)  # jawOpen
    r = prior_r(weight, held_out, mouth, jaw, active, norm, SILENCE)  # type: ignore[arg-type]
    # A mouth that does not follow the voice (another clip's jaw under this audio) is not predicted.
    swapped = [replace(held_out[0], motion=held_out[1].motion[: len(held_out[0].motion)])]
    r_swapped = prior_r(weight, swapped, mouth, jaw, active, norm, SILENCE)  # type: ignore[arg-type]
    assert r > 0.8 and abs(r_swapped) < 0.5, (r, r_swapped)


def test_the_denoiser_hears_the_prior_causally_and_it_round_trips(tmp_path: Path) -> None:
    mouth = mouth_dims(tiny_model().active.tolist())
    prosody = prosody_columns("mel")
    cfg = replace(TINY, prior_frames=3, prior_dim=2 * len(mouth), prosody_dim=len(prosody))
    torch.manual_seed(0)
    model = MotionDenoiser(cfg)
    with torch.no_grad():
        model.get_buffer("prior_weight").normal_()
        model.get_buffer("prior_bias").normal_()
        model.get_buffer("prosody").copy_(torch.from_numpy(prosody))
    audio = torch.randn(1, cfg.frames, cfg.audio_dim)
    later = audio.clone()
    later[:, 5] += 3.0
    heard, heard_later = model.heard(audio), model.heard(later)
    assert heard.shape == (1, cfg.frames, cfg.prior_dim + cfg.prosody_dim)
    assert torch.equal(heard[:, :5], heard_later[:, :5]) and not torch.equal(heard[:, 5:8], heard_later[:, 5:8])
    assert torch.equal(heard[:, 8:], heard_later[:, 8:])  # three frames of context: frame 8 no longer hears frame 5
    model.save(tmp_path)
    loaded, _ = MotionDenoiser.load(tmp_path)
    assert loaded.cfg == cfg and torch.equal(loaded.heard(audio), heard)


def test_prosody_columns_are_each_hops_energy_voicing_and_pitch() -> None:
    t = np.arange(16000) / 16000
    loud = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    hops = [hop_features(x, 0, 10, 8, MEL, "mel+formants") for x in (loud, loud * 0.1)]
    frame = [h[:4].reshape(-1) for h in hops]  # 4 hops side by side, as one 25 fps frame
    energy, voicing, pitch = (prosody_columns("mel+formants")[j::3] for j in range(3))
    assert np.allclose(frame[0][energy] - frame[1][energy], 2 * np.log(10), atol=0.05)
    assert np.all(frame[0][voicing] > 0.5)
    assert np.allclose(np.exp(frame[0][pitch]) * 100, 180, rtol=0.05)
    assert len(set(prosody_columns("mel+formants")) & set(range(N_MELS))) == 0


def test_training_pose_loses_the_trackers_jitter_not_the_head_motion() -> None:
    clip = synthetic_clip(8.0, 0)
    jitter = np.random.default_rng(0).standard_normal(len(clip.pose)).astype(np.float32)
    pose = clip.pose.copy()
    pose[:, 0] += 0.7 * jitter
    [copy] = prepare_copies(Clip(pose, clip.coeffs, clip.audio), MEL, np.random.default_rng(0), 1,
                            pose_smooth=POSE_SMOOTH_FRAMES)
    yaw = copy.motion[:, 0]
    assert np.abs(np.diff(yaw, 2)).mean() < np.abs(np.diff(pose[:, 0], 2)).mean() / 4
    assert abs(yaw.std() - clip.pose[:, 0].std()) < 0.1 * clip.pose[:, 0].std()

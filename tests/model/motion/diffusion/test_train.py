"""Training on this CPU: a tiny model's loss falls, the sampling loop is seeded, and a whole (tiny) run
writes a teacher and a student that the generator loads, with the run's config, curves and metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from emote.model.motion.diffusion.clips import Clip
from emote.model.motion.diffusion.denoiser import MotionDenoiser
from emote.model.motion.diffusion.features import clip_features, frame_dim, mel_matrix
from emote.model.motion.diffusion.generator import DiffusionGenerator
from emote.model.motion.diffusion.train import TrainConfig, _schedulers, _tensors, sample, train, window_loss
from emote.model.motion.diffusion.windows import WindowSampler, prepare_all, statistics
from emote.model.motion.interface import COEFF_INDEX
from tests.model.motion.diffusion._tiny import TINY


def synthetic_clip(seconds: float, seed: int) -> Clip:
    """A 'speaker' whose jaw opens with the loudness of a buzzing voice, head swaying slowly."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 25)
    level = (np.sin(np.arange(n) * 2 * np.pi / rng.uniform(8, 14)) > 0).astype(np.float32)
    t = np.arange(n * 640) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 150 * t) * np.repeat(level, 640) + 0.003 * rng.standard_normal(len(t))
    coeffs = np.full((n, 52), 0.05, np.float32)
    coeffs[:, COEFF_INDEX["jawOpen"]] = 0.05 + 0.3 * level
    coeffs[:, COEFF_INDEX["eyeBlinkLeft"]] = coeffs[:, COEFF_INDEX["eyeBlinkRight"]] = 0.1 + 0.05 * rng.random(n)
    pose = np.zeros((n, 6), np.float32)
    pose[:, 0] = 3 * np.sin(np.arange(n) / 20 + seed)
    pose[:, 5] = 1.0
    return Clip(pose, coeffs, (audio * 32767).astype(np.int16))


@pytest.fixture(scope="module")
def sampler() -> WindowSampler:
    mel = mel_matrix()
    silence = clip_features(np.zeros(640, np.float32), 1, mel)[0]
    copies = prepare_all([synthetic_clip(6.0, s) for s in range(3)], mel, seed=0, copies=2)
    active, *norm = statistics(copies, silence)
    cfg = replace(TINY, motion_dim=6 + len(active))
    return WindowSampler(copies, cfg, active, tuple(norm), silence)  # type: ignore[arg-type]


def test_a_few_steps_lower_the_loss(sampler: WindowSampler) -> None:
    torch.manual_seed(0)
    model = MotionDenoiser(sampler.cfg)
    ddpm, _ = _schedulers()
    batch = _tensors(sampler.batch(np.random.default_rng(0), 32))
    noise = torch.randn(batch["target"].shape, generator=torch.Generator().manual_seed(1))
    t = torch.randint(0, 1000, (32,), generator=torch.Generator().manual_seed(2))
    noisy = ddpm.add_noise(batch["target"], noise, t)

    def loss() -> torch.Tensor:
        return window_loss(model(noisy, t, batch["carried"], batch["known"], batch["audio"], batch["has_audio"],
                                 batch["rest"]), batch, sampler.cfg.carried)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = float(loss().detach())
    for _ in range(60):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert float(loss().detach()) < 0.7 * before


def test_windows_are_what_the_generator_builds(sampler: WindowSampler) -> None:
    rng = np.random.default_rng(3)
    w = sampler.window(rng, clip=0, start=0, boundary=3, augment=False)
    k = sampler.cfg.carried
    np.testing.assert_allclose(w["carried"][:k], sampler.delta(np.r_[np.zeros(6), w["rest"]][None], w["rest"])
                               .repeat(k, 0), atol=1e-6)  # the stream start: the portrait itself
    assert w["known"][:k].all() and not w["known"][k:].any()
    assert w["has_audio"][: k + 3].all() and not w["has_audio"][k + 3 :].any()
    assert (w["weight"][:k] == 0).all() and (w["weight"][k:] == 1).all()
    # Training windows may hide the carried mouth (noise): the mouth must come from the audio. jawOpen of the
    # carried frames then no longer follows the clip's (up to the portrait's offset, and light noise).
    jaw = 6 + list(sampler.active).index(COEFF_INDEX["jawOpen"])
    assert jaw in sampler.mouth_dims
    clean = sampler.window(rng, clip=1, start=40, augment=False)["carried"][:k, jaw]

    def wander(share: float) -> float:
        recorded = WindowSampler([[c[0]] for c in sampler.clips], sampler.cfg, sampler.active,
                                 (sampler.motion_mean, sampler.motion_std, sampler.audio_mean, sampler.audio_std),
                                 np.zeros(sampler.silence.shape, np.float32), mouth_unknown=share)  # no speed change
        return float(np.median([np.std(recorded.window(rng, clip=1, start=40)["carried"][:k, jaw] - clean)
                                for _ in range(30)]))

    assert wander(1.0) > 0.5 > 0.15 > wander(0.0)


def test_silence_windows_close_the_mouth_and_keep_the_head(sampler: WindowSampler) -> None:
    k = sampler.cfg.carried
    jaw = 6 + list(sampler.active).index(COEFF_INDEX["jawOpen"])
    for start in range(20, 120, 5):  # a stretch where the synthetic speaker's mouth is open
        talking = sampler.window(np.random.default_rng(4), clip=0, start=start, augment=False)
        shut = sampler.delta(np.r_[np.zeros(6), talking["rest"]][None], talking["rest"])[0]
        if np.abs(talking["target"][k + 3 :, jaw] - shut[jaw]).max() > 0.5:
            break
    quiet = sampler.window(np.random.default_rng(4), clip=0, start=start, augment=False, silence_from=k + 1)
    np.testing.assert_array_equal(quiet["audio"][: k + 1], talking["audio"][: k + 1])
    assert (quiet["audio"][k + 1 :] == sampler.silence).all()
    np.testing.assert_allclose(quiet["target"][k + 3 :, sampler.mouth_dims], np.broadcast_to(
        shut[sampler.mouth_dims], quiet["target"][k + 3 :, sampler.mouth_dims].shape), atol=1e-6)  # closed
    np.testing.assert_array_equal(quiet["target"][: k + 1], talking["target"][: k + 1])  # before: as recorded
    np.testing.assert_array_equal(quiet["target"][:, :6], talking["target"][:, :6])  # the head goes on
    assert np.abs(talking["target"][k + 3 :, jaw] - shut[jaw]).max() > 0.5  # the clip was talking there


def test_silence_may_fill_a_whole_window_as_deep_in_a_long_pause(sampler: WindowSampler) -> None:
    from emote.model.motion.diffusion import windows

    quiet = sampler.window(np.random.default_rng(4), clip=0, start=60, augment=False, silence_from=0)
    assert (quiet["audio"] == sampler.silence).all()
    long = WindowSampler(sampler.clips, sampler.cfg, sampler.active,
                         (sampler.motion_mean, sampler.motion_std, sampler.audio_mean, sampler.audio_std),
                         sampler.silence * sampler.audio_std + sampler.audio_mean, long_silence=True)
    starts = {}
    for name, s in (("short", sampler), ("long", long)):
        rng, drawn = np.random.default_rng(0), []
        for _ in range(400):
            silent = (s.window(rng, clip=0, start=60)["audio"] == s.silence).all(axis=1)
            if silent[-1]:  # silence runs from where it was drawn to the window's end
                drawn.append(int(np.argmax(silent)))
        starts[name] = drawn
    first_allowed = sampler.cfg.carried - windows.CLOSE_FRAMES
    assert min(starts["short"]) >= first_allowed > min(starts["long"])  # whole windows only with long_silence
    assert len(starts["long"]) > 1.4 * len(starts["short"])  # 20 % of windows against 10 %


def test_a_lips_shut_rest_makes_the_mouths_motion_its_opening(sampler: WindowSampler) -> None:
    from emote.model.motion.interface import LIP_OPENERS

    shut = WindowSampler(sampler.clips, sampler.cfg, sampler.active,
                         (sampler.motion_mean, sampler.motion_std, sampler.audio_mean, sampler.audio_std),
                         sampler.silence * sampler.audio_std + sampler.audio_mean, lips_shut=True)
    plain = sampler.window(np.random.default_rng(3), clip=1, start=50, augment=False)
    closed = shut.window(np.random.default_rng(3), clip=1, start=50, augment=False)
    openers = [COEFF_INDEX[n] for n in LIP_OPENERS]
    assert (closed["rest"][openers] == 0).all() and plain["rest"][COEFF_INDEX["jawOpen"]] > 0
    others = np.setdiff1d(np.arange(52), openers)
    np.testing.assert_array_equal(closed["rest"][others], plain["rest"][others])
    jaw = 6 + list(sampler.active).index(COEFF_INDEX["jawOpen"])
    moved = (closed["target"][:, jaw] - plain["target"][:, jaw]) * sampler.motion_std[jaw]
    np.testing.assert_allclose(moved, plain["rest"][COEFF_INDEX["jawOpen"]], rtol=1e-4)  # measured from 0


def test_the_sampling_loop_is_seeded_and_guided(sampler: WindowSampler) -> None:
    model = MotionDenoiser(sampler.cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = _tensors(sampler.batch(np.random.default_rng(0), 4, augment=False))
    noise = torch.randn(b["target"].shape, generator=torch.Generator().manual_seed(0))
    a = sample(model, b, noise, steps=5, guidance=2.0)
    assert a.shape == b["target"].shape and torch.equal(a, sample(model, b, noise, steps=5, guidance=2.0))
    assert not torch.equal(a, sample(model, b, noise, steps=5, guidance=1.0))
    assert not torch.equal(a, sample(model, b, noise + 0.1, steps=5, guidance=2.0))


@pytest.mark.parametrize("features", ["mel+formants", "mel+formants+speech1s"])
def test_a_whole_tiny_run_writes_models_the_generator_loads(dataset, features: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, records, _ = dataset
    split = json.loads((folder / "split.json").read_text())
    people = sorted(split["people"])
    for k, person in enumerate(people):  # one person on each side, whatever the hash said
        split["people"][person]["side"] = "validation" if k == 0 else "train"
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "split.json").write_text(json.dumps(split))
    (data / "clips").symlink_to(folder / "clips")
    cfg = TrainConfig(batch=16, teacher_steps=12, student_steps=6, pairs=32, audio_copies=2, validate_every=6,
                      sample_steps=3, features=features)
    net = replace(TINY, width=32)
    metrics = train(data, tmp_path / "run", cfg, net)
    for name in ("teacher", "student"):
        assert [row["step"] for row in metrics[name]] == ([6, 12] if name == "teacher" else [6])
        assert (tmp_path / "run" / name / "model.safetensors").is_file()
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["config"]["teacher_steps"] == 12 and saved["student"][0]["jaw_r"] == metrics["student"][0]["jaw_r"]
    generator = DiffusionGenerator(tmp_path / "run" / "student")
    assert (generator.window_frames, generator.lookahead) == (cfg.emit_frames, cfg.lookahead_frames) == (3, 0)
    assert generator.model.cfg.width == 32 and generator.feature_set == features
    assert generator.model.cfg.audio_dim == frame_dim(features)
    written = json.loads((tmp_path / "run" / "student" / "config.json").read_text())["sampling"]
    assert (written["motion_noise"], written["blink_noise"]) == (cfg.motion_noise, cfg.blink_noise) == (1.25, 1.6)


def test_rollout_counts_closed_lids_not_dips(sampler: WindowSampler) -> None:
    from emote.model.motion.diffusion.rollout import rollout_metrics

    copies = [c[0] for c in sampler.clips]
    real = [sampler.delta(c.motion, c.motion[int(c.rest_frames[0]), 6:]) for c in copies]
    blink = [6 + list(sampler.active).index(COEFF_INDEX[n]) for n in ("eyeBlinkLeft", "eyeBlinkRight")]
    std = sampler.motion_std[blink]

    def with_lids(rise: float) -> list[np.ndarray]:
        out = []
        for g in real:
            g = g.copy()
            for start in range(10, len(g) - 5, 50):  # a blink every 2 s: 30 per minute
                g[start : start + 4, blink] += rise / std
            out.append(g)
        return out

    assert rollout_metrics(sampler, copies, real)["real_blinks_per_min"] == 0.0  # the synthetic people never blink
    assert rollout_metrics(sampler, copies, with_lids(0.1))["rollout_blinks_per_min"] == 0.0  # dips of 0.1
    assert rollout_metrics(sampler, copies, with_lids(0.6))["rollout_blinks_per_min"] == pytest.approx(30, abs=3)


def test_the_acceleration_term_charges_jitter_not_a_smooth_error(sampler: WindowSampler) -> None:
    """Two predictions with the same squared error: one zig-zags from frame to frame (the block-to-block
    jitter the first models had), one is off by a constant. Only the zig-zag pays the acceleration term."""
    b = _tensors(sampler.batch(np.random.default_rng(3), 8, augment=False))  # carried frames as recorded
    k = sampler.cfg.carried
    sign = torch.ones(sampler.cfg.frames)
    sign[1::2] = -1.0
    zigzag = b["target"] + 0.1 * sign[None, :, None]
    offset = b["target"] + 0.1
    extra = {name: float(window_loss(pred, b, k, acceleration=1.0) - window_loss(pred, b, k))
             for name, pred in (("zigzag", zigzag), ("offset", offset))}
    assert float(window_loss(b["target"], b, k, acceleration=1.0)) == 0.0
    assert extra["zigzag"] > 10 * extra["offset"] > 0, extra

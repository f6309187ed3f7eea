"""The diffusion generator on a tiny random model: the block schedule, seeded noise, any frame rate, and
the state it carries. (The registered model with trained weights also runs the generator contract suite.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from emote.model.motion.diffusion.blocks import articulation_gate, crossfade_pose, quiet_windows, sustain_audio
from emote.model.motion.diffusion.features import COMFORT_NOISE_RMS, clip_features, mel_matrix, silent_frames
from emote.model.motion.diffusion.generator import DiffusionGenerator
from emote.model.motion.interface import COEFF_INDEX, N_COEFFS, N_POSE, MotionChunk
from emote.streaming.animator import MotionStream
from tests._fixtures import chunked
from tests.model.motion.diffusion._tiny import save_tiny

REST = np.full(N_COEFFS, 0.05, np.float32)


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> DiffusionGenerator:
    return DiffusionGenerator(save_tiny(tmp_path_factory.mktemp("tiny")))


def talk(seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 160 * t) * (np.sin(2 * np.pi * 2.5 * t) > 0)).astype(np.float32)


def run(generator: DiffusionGenerator, audio: np.ndarray, chunk: int | list[int], *, fps: float = 25.0,
        seed: int = 0, merge_frames: int | None = None) -> MotionChunk:
    stream = MotionStream(generator, REST, fps=fps, seed=seed, merge_frames=merge_frames)
    out = []
    for piece in chunked(audio, chunk):
        out += stream.push(piece)
    return MotionChunk.concat(out + stream.finish())


def test_declares_its_block_schedule(generator: DiffusionGenerator) -> None:
    assert generator.window_frames == 2 and generator.overlap_frames == 4 and not generator.cut_invariant
    # The carried frames' audio and half an analysis window: 4 x 40 + 12.5 ms; one frame of lookahead + 12.5 ms.
    assert generator.context_ms == pytest.approx(172.5) and generator.lookahead_ms == pytest.approx(52.5)
    stream = MotionStream(generator, REST, fps=25.0, merge_frames=25)
    assert stream.windower.window_frames == 2  # offline may not merge: it would change the motion


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97, 12.0])
def test_same_motion_however_the_audio_arrives_at_any_frame_rate(generator: DiffusionGenerator, fps: float) -> None:
    x = talk()
    whole = run(generator, x, len(x), fps=fps)
    assert len(whole) == round(3.0 * fps)
    for chunk in (160, [1, 4000, 333]):
        part = run(generator, x, chunk, fps=fps)
        np.testing.assert_array_equal(part.coeffs, whole.coeffs)
        np.testing.assert_array_equal(part.pose, whole.pose)


def test_other_rates_sample_the_25_fps_motion(generator: DiffusionGenerator) -> None:
    """The model runs on its own 25 fps grid; other rates show its frames (here 12.5 fps: every other one,
    made with the same audio, since each window reaches past the blocks it needs)."""
    x = talk()
    m25 = run(generator, x, 1600, fps=25.0)
    m12 = run(generator, x, 1600, fps=12.5)
    jaw = COEFF_INDEX["jawOpen"]
    np.testing.assert_allclose(m12.coeffs[:-2, jaw], m25.coeffs[::2][: len(m12) - 2, jaw], atol=1e-5)
    np.testing.assert_allclose(m12.pose[:-2], m25.pose[::2][: len(m12) - 2], atol=1e-5)


def test_the_seed_changes_the_motion_and_only_it(generator: DiffusionGenerator) -> None:
    x = talk()
    a, b = run(generator, x, 800, seed=1), run(generator, x, 800, seed=2)
    assert np.abs(a.coeffs - b.coeffs).max() > 1e-4
    np.testing.assert_array_equal(run(generator, x, 3200, seed=1).coeffs, a.coeffs)


def test_state_is_explicit_and_unchanged_by_generate(generator: DiffusionGenerator) -> None:
    stream = MotionStream(generator, REST, fps=25.0)
    windows = stream.windower.push(talk(1.0))
    state = generator.initial_state(REST, 0)
    _, after = generator.generate(windows[0], state)
    assert after.model_frames == 2 and after.next_frame == 2 and state.model_frames == 0
    assert after.carried.shape == state.carried.shape and not np.array_equal(after.carried, state.carried)
    with pytest.raises(ValueError, match="expected 2"):
        generator.generate(windows[0], after)
    with pytest.raises(ValueError, match="16000 Hz"):
        generator.generate(dataclasses.replace(windows[1], sample_rate=8000), after)


def test_untouched_coefficients_keep_the_portraits_values(generator: DiffusionGenerator) -> None:
    motion = run(generator, talk(1.0), 1600)
    moved = np.flatnonzero(np.abs(motion.coeffs - REST).max(axis=0) > 0)
    assert set(moved) <= set(generator._active.tolist())
    assert motion.coeffs.min() >= 0 and motion.coeffs.max() <= 1


def test_a_model_trained_with_the_lips_shut_speaks_from_a_shut_mouth(tmp_path: Path) -> None:
    from emote.model.motion.interface import LIP_OPENERS

    shut = DiffusionGenerator(save_tiny(tmp_path, generator={"emit_frames": 2, "lookahead_frames": 1,
                                                             "lips_shut_rest": True}))
    smiling = REST.copy()
    smiling[[COEFF_INDEX[n] for n in ("mouthUpperUpLeft", "mouthUpperUpRight", "jawOpen")]] = 0.47
    quiet = MotionChunk.concat(MotionStream(shut, smiling, fps=25.0, seed=0).push(np.zeros(32000, np.float32)))
    openers = [COEFF_INDEX[n] for n in LIP_OPENERS]
    assert np.abs(quiet.coeffs[5:, openers]).max() < 1e-3  # silence: shut, not the portrait's parted lips
    assert shut.initial_state(smiling, 0).rest[openers].max() == 0  # what the model conditions on, too


def test_missing_weights_are_a_clear_error(tmp_path: Path) -> None:
    from emote.model.errors import DependencyError

    with pytest.raises(DependencyError, match="make train"):
        DiffusionGenerator(tmp_path)


def test_the_written_out_ddim_sampler_is_diffusers_sampler(tmp_path: Path) -> None:
    """A teacher runs in the generator with DDIM written out (no diffusers at run time): the same
    motion as the DDIMScheduler the training validated with."""
    import torch

    from emote.model.motion.diffusion.train import sample
    from tests.model.motion.diffusion._tiny import tiny_model

    model = tiny_model(seed=4)
    model.save(tmp_path, {"generator": {"emit_frames": 2, "lookahead_frames": 1},
                          "sampling": {"steps": 5, "guidance": 2.0}})
    teacher = DiffusionGenerator(tmp_path)
    assert (teacher.steps, teacher.guidance) == (5, 2.0)
    rng = np.random.default_rng(0)
    s, d = model.cfg.frames, model.cfg.motion_dim
    known = np.r_[np.ones(model.cfg.carried), np.zeros(s - model.cfg.carried)].astype(np.float32)
    inputs = {"carried": rng.standard_normal((s, d)).astype(np.float32), "known": known,
              "audio": rng.standard_normal((s, model.cfg.audio_dim)).astype(np.float32),
              "has_audio": (np.arange(s) < model.cfg.carried + 3).astype(np.float32),
              "rest": rng.random(52).astype(np.float32)}
    noise = rng.standard_normal((s, d)).astype(np.float32)
    ours = teacher.sample(noise, *(torch.from_numpy(inputs[k][None]) for k in ("carried", "known", "audio",
                                                                               "has_audio", "rest")))
    batch = {k: torch.from_numpy(v[None]) for k, v in inputs.items()}
    theirs = sample(model, batch, torch.from_numpy(noise[None]), steps=5, guidance=2.0)[0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-4)
    assert np.abs(ours - sample(model, batch, torch.from_numpy(noise[None]), steps=5, guidance=1.0)[0].numpy()
                  ).max() > 1e-3  # guidance is applied
    # The articulation's noise is 0 when the config says so (the head's stays random).
    from emote.model.motion.diffusion.denoiser import mouth_dims
    from emote.model.motion.diffusion.generator import load_model

    model.save(tmp_path, {"generator": {"emit_frames": 2, "lookahead_frames": 1},
                          "sampling": {"steps": 1, "mouth_noise": 0.0}})
    load_model.cache_clear()
    centred = DiffusionGenerator(tmp_path)._noise(seed=3, block_start=8)
    mouth = mouth_dims(model.active.tolist())
    assert mouth and (centred[:, mouth] == 0).all() and np.abs(centred[:, :6]).min() > 0
    # The rest of the motion is sampled at the config's temperature (the same draw, scaled).
    model.save(tmp_path, {"generator": {"emit_frames": 2, "lookahead_frames": 1},
                          "sampling": {"steps": 1, "mouth_noise": 0.0, "motion_noise": 1.25}})
    load_model.cache_clear()
    warmer = DiffusionGenerator(tmp_path)._noise(seed=3, block_start=8)
    assert np.allclose(warmer[:, :6], 1.25 * centred[:, :6]) and (warmer[:, mouth] == 0).all()
    # The lids at their own temperature when the config names one; everything else as before.
    from emote.model.motion.diffusion.denoiser import blink_dims

    model.save(tmp_path, {"generator": {"emit_frames": 2, "lookahead_frames": 1},
                          "sampling": {"steps": 1, "mouth_noise": 0.0, "motion_noise": 1.25, "blink_noise": 1.6}})
    load_model.cache_clear()
    lids = DiffusionGenerator(tmp_path)._noise(seed=3, block_start=8)
    blinks = blink_dims(model.active.tolist())
    others = [d for d in range(lids.shape[1]) if d not in blinks]
    assert len(blinks) == 2 and np.allclose(lids[:, blinks], 1.6 * centred[:, blinks])
    np.testing.assert_array_equal(lids[:, others], warmer[:, others])


@pytest.mark.parametrize("feature_set", ["mel", "mel+formants", "mel+prior", "mel+formants+speech",
                                         "mel+formants+speech1s"])
def test_live_features_are_the_training_features(feature_set: str, tmp_path: Path) -> None:
    """What the generator hears frame by frame, streaming, is exactly what training computed on the whole clip
    (the articulation prior's filter and the speech encoder's blocks included), however the audio arrives."""
    from dataclasses import replace

    import torch

    from emote.model.motion.diffusion.denoiser import MotionDenoiser
    from emote.model.motion.diffusion.features import clip_features, frame_dim
    from tests.model.motion.diffusion._tiny import TINY, tiny_model

    base = tiny_model()
    model = MotionDenoiser(replace(TINY, audio_dim=frame_dim(feature_set)))
    model.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith(("audio_in", "audio_"))},
                          strict=False)
    with torch.no_grad():
        model.mel.copy_(base.mel)
        model.active.copy_(base.active)
    model.save(tmp_path, {"features": feature_set, "generator": {"emit_frames": 2, "lookahead_frames": 1}})
    generator = DiffusionGenerator(tmp_path)
    x = talk(3.0)
    # The training features with the live floor: digital silence is heard as a quiet room (COMFORT_NOISE_RMS).
    expected = clip_features(x, 75, model.mel.numpy(), feature_set, COMFORT_NOISE_RMS, block=generator.emit)
    for chunk in (len(x), 333):
        stream = MotionStream(generator, REST, fps=25.0)
        seen = {}
        for piece in chunked(x, chunk):
            for window in stream.windower.push(piece):
                _, stream.state = generator.generate(window, stream.state)
                st = stream.state
                for row in range(generator.carried):
                    frame = st.model_frames - generator.carried + row
                    if frame >= 0 and st.features_valid[row]:
                        seen[frame] = st.features[row]
        frames = sorted(seen)
        assert frames[0] == 0 and len(frames) > 60
        got = np.stack([seen[f] for f in frames]) * generator._audio_std + generator._audio_mean
        np.testing.assert_allclose(got, expected[frames], rtol=1e-4, atol=1e-4)


def test_digital_silence_relaxes_the_mouth_to_the_portraits_and_the_face_lives_on(
    generator: DiffusionGenerator,
) -> None:
    x = np.concatenate([talk(2.0), np.zeros(32000, np.float32)])
    motion = run(generator, x, 1600)
    mouth = [int(generator._active[d - N_POSE]) for d in generator._mouth]
    talking, quiet = motion.coeffs[10:50][:, mouth], motion.coeffs[70:][:, mouth]
    assert np.abs(talking - REST[mouth]).max() > 0.01  # the random tiny model moves the mouth while it hears sound
    np.testing.assert_allclose(quiet, np.broadcast_to(REST[mouth], quiet.shape), atol=1e-3)  # shut in silence
    assert motion.pose[70:, :3].std(axis=0).max() > 0.01  # the head still moves


def test_the_articulation_gate_counts_frames_of_digital_silence() -> None:
    mel = mel_matrix()
    sound = (0.1 * np.sin(np.arange(640 * 4) * 0.2)).astype(np.float32)
    audio = np.concatenate([sound, np.zeros(640 * 4, np.float32), 1e-2 * np.ones(640, np.float32)])
    raw = clip_features(audio, 9, mel, "mel+formants", COMFORT_NOISE_RMS)  # zeros heard as the generator hears them
    # Frames 4 and 7 hear the sound and the -40 dBFS hum beside them through their analysis windows.
    assert silent_frames(raw, "mel+formants").tolist() == [False] * 5 + [True] * 2 + [False] * 2
    heard = np.ones(9, bool)
    np.testing.assert_allclose(articulation_gate(raw, heard, "mel+formants", 3, 6), [1, 1, 0.5, 0.25, 1, 1])
    heard[5] = False  # a position without real audio counts as sound: the run restarts after it
    np.testing.assert_allclose(articulation_gate(raw, heard, "mel+formants", 3, 6), [1, 1, 1, 0.5, 1, 1])
    long_pause = clip_features(np.concatenate([sound, np.zeros(640 * 8, np.float32)]), 12, mel, "mel+formants",
                               COMFORT_NOISE_RMS)
    gate = articulation_gate(long_pause, np.ones(12, bool), "mel+formants", 4, 8)
    np.testing.assert_allclose(gate, [1, 0.5, 0.25, 0.125, 0, 0, 0, 0])  # shut from the fourth silent frame on
    noise = np.random.default_rng(0).standard_normal(640 * 3).astype(np.float32)
    for db, silent in ((-68, True), (-50, False)):  # a very quiet room is silence; -50 dBFS is not
        heard = clip_features(10 ** (db / 20) * noise, 3, mel, "mel+formants", COMFORT_NOISE_RMS)
        assert silent_frames(heard, "mel+formants").tolist() == [silent] * 3, db


def test_sustained_audio_fills_the_window_beyond_the_lookahead() -> None:
    audio = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)
    heard = np.array([1, 1, 1, 0, 0, 0], np.float32)
    sustain_audio(audio, heard, 3)
    assert audio[3:].tolist() == [[4.0, 5.0]] * 3 and heard.tolist() == [1.0] * 6
    batch, batch_heard = np.zeros((2, 4, 1), np.float32), np.zeros((2, 4), np.float32)
    batch[:, 1, 0], batch_heard[:, :2] = [7.0, 8.0], 1.0
    sustain_audio(batch, batch_heard, 2)  # rollouts fill a batch of windows at once
    assert batch[:, 2:, 0].tolist() == [[7.0, 7.0], [8.0, 8.0]] and batch_heard.min() == 1.0
    batch[:, 2:], batch_heard[:, 2:] = 0.0, 0.0
    sustain_audio(batch, batch_heard, 2, np.array([False, True]))  # only the windows asked for
    assert batch[:, 2:, 0].tolist() == [[0.0, 0.0], [8.0, 8.0]] and batch_heard[:, 2:].tolist() == [[0, 0], [1, 1]]


def test_only_windows_that_end_quiet_hear_their_last_frame_sustained() -> None:
    mel = mel_matrix()
    loud = (0.1 * np.sin(np.arange(640 * 6) * 0.2)).astype(np.float32)  # -23 dBFS
    quiet = loud * 10 ** (-25 / 20)  # -48 dBFS: a pause, a quiet room
    raw = np.stack([clip_features(x, 6, mel, "mel+formants", COMFORT_NOISE_RMS) for x in (loud, quiet)])
    mean, std = raw.mean(axis=(0, 1)), raw.std(axis=(0, 1)) + 1.0
    assert quiet_windows((raw - mean) / std, 4, mean, std, "mel+formants").tolist() == [False, True]


SHIPPED_RULES = {"emit_frames": 3, "lookahead_frames": 0, "sustain_audio": True, "crossfade_pose": True}


def test_the_shipped_block_rules_give_the_same_motion_however_the_audio_arrives(tmp_path: Path) -> None:
    generator = DiffusionGenerator(save_tiny(tmp_path, generator=SHIPPED_RULES))
    assert (generator.window_frames, generator.lookahead, generator.sustain, generator.crossfade) == (3, 0, True, True)
    x = np.concatenate([talk(2.0), np.zeros(16000, np.float32)])
    whole = run(generator, x, len(x))
    for chunk in (160, [1, 4000, 333]):
        part = run(generator, x, chunk)
        np.testing.assert_array_equal(part.pose, whole.pose)
        np.testing.assert_array_equal(part.coeffs, whole.coeffs)
    plain = DiffusionGenerator(save_tiny(tmp_path / "plain", generator={**SHIPPED_RULES, "crossfade_pose": False}))
    joined = run(plain, x, len(x))
    assert not np.array_equal(joined.pose, whole.pose)  # the crossfade changes the head ...
    np.testing.assert_array_equal(joined.pose[:3], whole.pose[:3])  # ... from the second block on
    np.testing.assert_array_equal(joined.coeffs[:3], whole.coeffs[:3])


def test_a_block_starts_from_the_pose_the_window_before_foresaw() -> None:
    block = np.ones((3, 10), np.float32)
    ahead = np.zeros((3, 10), np.float32)
    out = crossfade_pose(block, ahead)
    np.testing.assert_allclose(out[:, 0], [1 / 3, 2 / 3, 1.0])  # weights 2/3, 1/3, 0 on the foresight
    np.testing.assert_allclose(out[:, N_POSE:], 1.0)  # expression and mouth are the new block's
    short = crossfade_pose(block, ahead[:1])  # a window that foresaw only one frame of the block
    np.testing.assert_allclose(short[:, 0], [1 / 3, 1.0, 1.0])


@pytest.mark.parametrize("fps", [25.0, 29.97, 12.0])
def test_a_model_that_hears_speech_runs_at_any_frame_rate(fps: float, tmp_path: Path) -> None:
    """Windows at other frame rates end inside the speech encoder's blocks: the generator still runs and
    gives the same motion however the audio arrives."""
    from dataclasses import replace

    import torch

    from emote.model.motion.diffusion.denoiser import MotionDenoiser
    from emote.model.motion.diffusion.features import frame_dim
    from tests.model.motion.diffusion._tiny import TINY, tiny_model

    pytest.importorskip("ctranslate2")
    base = tiny_model()
    model = MotionDenoiser(replace(TINY, audio_dim=frame_dim("mel+formants+speech")))
    model.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith(("audio_in", "audio_"))},
                          strict=False)
    with torch.no_grad():
        model.mel.copy_(base.mel)
        model.active.copy_(base.active)
    model.save(tmp_path, {"features": "mel+formants+speech", "generator": {"emit_frames": 3, "lookahead_frames": 0}})
    generator = DiffusionGenerator(tmp_path)
    x = talk(3.0)
    whole = run(generator, x, len(x), fps=fps)
    assert len(whole) == round(3.0 * fps) and np.isfinite(whole.coeffs).all()
    for chunk in (160, [1, 4000, 333]):
        part = run(generator, x, chunk, fps=fps)
        np.testing.assert_array_equal(part.coeffs, whole.coeffs)
        np.testing.assert_array_equal(part.pose, whole.pose)

"""The contract every registered motion generator keeps (baseline, still, and any learned one).

A new generator is added to ``emote.model.motion.registry.GENERATORS`` and these tests run on it
unchanged: its declared windows, shapes and ranges, determinism, purity of ``generate`` (the state is
never changed in place), the same motion however the audio arrives in chunks, a closed mouth in
silence, and a clear error for a window that does not follow its state. The diffusion generator also
runs the structural part with a tiny random model, so its code is checked even where no trained
weights are installed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from emote.model.errors import OptionError
from emote.model.motion.interface import COEFF_INDEX, N_COEFFS, N_POSE, MotionChunk, MotionGenerator
from emote.model.motion.registry import GENERATORS, check_generator_name, make_generator
from emote.streaming.animator import MotionStream
from tests._fixtures import chunked, silence

FPS = 25.0
REST = np.zeros(N_COEFFS, np.float32)
REST[COEFF_INDEX["eyeBlinkLeft"]] = REST[COEFF_INDEX["eyeBlinkRight"]] = 0.1
REST[COEFF_INDEX["mouthSmileLeft"]] = REST[COEFF_INDEX["mouthSmileRight"]] = 0.2


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced bursts with pitch movement and pauses: enough to open a mouth and nod a head."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 6))
    envelope = (np.sin(2 * np.pi * 3.1 * t) > -0.2) * (np.sin(2 * np.pi * 0.4 * t) > -0.6)
    return (0.25 * voiced * envelope + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def run(generator: MotionGenerator[Any], audio: np.ndarray, chunk: int | list[int], *, seed: int = 0,
        merge_frames: int | None = None) -> MotionChunk:
    stream = MotionStream(generator, REST, fps=FPS, seed=seed, merge_frames=merge_frames)
    out: list[MotionChunk] = []
    for piece in chunked(audio, chunk):
        out += stream.push(piece)
    out += stream.finish()
    return MotionChunk.concat(out)


TINY_DIFFUSION = "diffusion (tiny random model)"


def _make(name: str, tmp: pytest.TempPathFactory) -> MotionGenerator[Any]:
    from emote.model.errors import DependencyError

    if name == TINY_DIFFUSION:
        from emote.model.motion.diffusion.generator import DiffusionGenerator
        from tests.model.motion.diffusion._tiny import save_tiny

        return DiffusionGenerator(save_tiny(tmp.mktemp("tiny")))
    try:
        return make_generator(name)
    except DependencyError as exc:  # the learned model before `make train` has installed its weights
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=[*sorted(GENERATORS), TINY_DIFFUSION])
def generator(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MotionGenerator[Any]:
    return _make(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=sorted(GENERATORS))
def registered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MotionGenerator[Any]:
    """Only what users can choose: behaviour, not just structure."""
    return _make(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def talk() -> np.ndarray:
    return speechlike(6.0)


def test_registry_names_and_declarations(generator: MotionGenerator[Any]) -> None:
    assert generator.name in GENERATORS or generator.name == "diffusion"
    assert isinstance(generator.window_frames, int) and generator.window_frames >= 1
    assert isinstance(generator.overlap_frames, int) and 0 <= generator.overlap_frames
    assert generator.context_ms >= 0 and generator.lookahead_ms >= 0
    assert isinstance(generator.cut_invariant, bool)


def test_unknown_names_are_refused_with_the_choices() -> None:
    with pytest.raises(OptionError, match=r"--motion 'nope'.*baseline"):
        make_generator("nope")
    with pytest.raises(OptionError, match="still"):
        check_generator_name("")


def test_shipped_weights_with_terms_carry_a_notice_and_the_users_own_do_not() -> None:
    from emote.model.motion.registry import usage_notice

    notice = usage_notice("diffusion")
    assert notice is not None and "non-commercial" in notice and "--motion baseline" in notice
    assert usage_notice("diffusion=my/run/student") is None
    assert usage_notice("baseline") is None and usage_notice("still") is None


def test_shapes_frame_count_and_ranges(generator: MotionGenerator[Any], talk: np.ndarray) -> None:
    motion = run(generator, talk, 1600)
    assert len(motion) == round(len(talk) / 16000 * FPS)
    assert motion.pose.shape == (len(motion), N_POSE) and motion.coeffs.shape == (len(motion), N_COEFFS)
    assert motion.pose.dtype == np.float32 and motion.coeffs.dtype == np.float32
    assert np.isfinite(motion.pose).all() and np.isfinite(motion.coeffs).all()
    assert motion.coeffs.min() >= 0.0 and motion.coeffs.max() <= 1.0
    assert (motion.pose[:, 5] > 0.5).all() and (motion.pose[:, 5] < 2.0).all()  # head scale
    assert motion.start_frame == 0 and motion.fps == FPS


def test_same_seed_same_motion(generator: MotionGenerator[Any], talk: np.ndarray) -> None:
    a, b = run(generator, talk, 3200, seed=4), run(generator, talk, 3200, seed=4)
    np.testing.assert_array_equal(a.pose, b.pose)
    np.testing.assert_array_equal(a.coeffs, b.coeffs)


@pytest.mark.parametrize("chunk", [160, 441, [1, 5000, 77, 640], 16000 * 7])
def test_the_same_audio_gives_the_same_motion_however_it_arrives(
    generator: MotionGenerator[Any], talk: np.ndarray, chunk: int | list[int]
) -> None:
    """Offline and live cut the same windows: pushing in any chunks gives identical frames."""
    reference = run(generator, talk, len(talk))
    cut = run(generator, talk, chunk)
    np.testing.assert_array_equal(cut.pose, reference.pose)
    np.testing.assert_array_equal(cut.coeffs, reference.coeffs)


def test_merging_windows_only_where_the_generator_allows_it(generator: MotionGenerator[Any], talk: np.ndarray) -> None:
    merged = MotionStream(generator, REST, fps=FPS, merge_frames=25)
    expected = max(generator.window_frames, 25) if generator.cut_invariant else generator.window_frames
    assert merged.windower.window_frames == expected
    if generator.cut_invariant:  # then merging must not change a single value
        reference = run(generator, talk, 1600)
        np.testing.assert_array_equal(run(generator, talk, 1600, merge_frames=25).coeffs, reference.coeffs)


def test_generate_is_pure(generator: MotionGenerator[Any], talk: np.ndarray) -> None:
    """The state is never changed in place: generating twice from one state gives the same motion."""
    stream = MotionStream(generator, REST, fps=FPS)
    windows = stream.windower.push(talk[:32000])
    state = generator.initial_state(REST, 0)
    for window in windows[:3]:
        _, state = generator.generate(window, state)
    first, _ = generator.generate(windows[3], state)
    again, _ = generator.generate(windows[3], state)
    np.testing.assert_array_equal(first.coeffs, again.coeffs)
    np.testing.assert_array_equal(first.pose, again.pose)


def test_silence_keeps_the_mouth_shut(registered: MotionGenerator[Any]) -> None:
    motion = run(registered, silence(4.0), 1600)
    for name in ("jawOpen", "mouthUpperUpLeft", "mouthUpperUpRight"):
        assert motion.coeff(name).max() <= REST[COEFF_INDEX[name]] + 0.05, name


def test_a_window_that_does_not_follow_the_state_is_refused(generator: MotionGenerator[Any]) -> None:
    stream = MotionStream(generator, REST, fps=FPS)
    windows = stream.windower.push(silence(1.0))
    state = generator.initial_state(REST, 0)
    _, state = generator.generate(windows[0], state)
    with pytest.raises(ValueError, match="expected"):
        generator.generate(windows[2], state)
    with pytest.raises(ValueError):
        generator.generate(dataclasses.replace(windows[1], start_frame=0), state)


def test_learned_generators_take_other_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from emote.model.motion.diffusion.generator import DiffusionGenerator
    from tests.model.motion.diffusion._tiny import save_tiny

    folder = save_tiny(tmp_path / "tiny")
    generator = make_generator(f"diffusion={folder}")
    assert isinstance(generator, DiffusionGenerator) and generator.model.cfg.width == 32
    with pytest.raises(OptionError, match="holds no trained model"):
        make_generator(f"diffusion={tmp_path / 'nothing'}")
    with pytest.raises(OptionError, match="has no weights"):
        check_generator_name(f"baseline={folder}")

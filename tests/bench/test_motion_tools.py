"""The motion measuring tools: seams, blink counting and the contact sheets (bench/motion_checks, bench/sheets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import motion_checks, sheets
from emote.model.motion.interface import COEFF_INDEX, MotionChunk
from tests._fixtures import speech_16k

FPS = 25.0


def _smooth_motion(n: int) -> MotionChunk:
    t = np.arange(n) / FPS
    pose = np.zeros((n, 6), np.float32)
    pose[:, 0] = 3.0 * np.sin(2 * np.pi * 0.3 * t)
    coeffs = np.zeros((n, 52), np.float32)
    coeffs[:, COEFF_INDEX["jawOpen"]] = 0.2 + 0.1 * np.sin(2 * np.pi * 2.0 * t)
    return MotionChunk(0, FPS, pose, coeffs)


def test_seams_tell_a_jump_at_every_block_from_smooth_motion() -> None:
    smooth = motion_checks.seams(_smooth_motion(400), block=8)
    assert smooth["head_boundary"] < 1.5 * smooth["head_inside"]
    jumpy = _smooth_motion(400)
    jumpy.pose[:, 0] += 0.5 * (np.arange(400) // 8)  # a step at the first frame of every block
    seams = motion_checks.seams(jumpy, block=8)
    assert seams["head_boundary"] > 3 * seams["head_inside"]


def test_blinks_are_counted_once_each() -> None:
    motion = _smooth_motion(1500)  # one minute
    for start in range(50, 1500, 150):  # ten blinks of 5 frames
        motion.coeffs[start : start + 5, [COEFF_INDEX["eyeBlinkLeft"], COEFF_INDEX["eyeBlinkRight"]]] = 0.9
    assert motion_checks.blinks_per_minute(motion) == pytest.approx(10.0)


def test_contact_sheet_shows_which_generator_follows_the_sound(tmp_path: Path) -> None:
    from emote.model.media.audio_io import write_wav

    portrait = Path(__file__).resolve().parents[2] / "model" / "assets" / "default_portrait.jpg"
    audio = tmp_path / "speech.wav"
    write_wav(audio, speech_16k("Open the window and let the fresh air in, please."), 16000)
    lines = sheets.sheet_for_case("case", portrait, audio, ["baseline", "still"], tmp_path)
    assert (tmp_path / "case.png").stat().st_size > 10_000
    r = {line.split()[1]: float(line.split("r ")[1].split()[0]) for line in lines}
    assert r["baseline"] > 0.4 > r["still"]


def test_sheets_exit_cleanly_without_the_shared_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sheets.main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 0
    assert "not found" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_make_eval_leaves_out_the_videos_the_shipped_model_trained_on(tmp_path: Path) -> None:
    import json

    from bench.eval import SPLIT, unseen_videos
    from emote.model.motion.diffusion.dataset import content_hash

    for name in ("seen.mp4", "unseen.mp4", "validation.mp4"):
        (tmp_path / name).write_bytes(name.encode() * 100)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"people": {
        "a": {"side": "train", "videos": [content_hash(tmp_path / "seen.mp4")]},
        "b": {"side": "validation", "videos": [content_hash(tmp_path / "validation.mp4")]}}}))
    unseen, trained = unseen_videos(tmp_path, split)
    assert [v.name for v in unseen] == ["unseen.mp4", "validation.mp4"] and trained == 1
    assert SPLIT.is_file()  # the shipped weights' own split


def test_eyes_tell_a_drowsy_face_from_blinks() -> None:
    n = 250
    coeffs = np.zeros((n, 52), np.float32)
    lids = [COEFF_INDEX["eyeBlinkLeft"], COEFF_INDEX["eyeBlinkRight"]]
    for start in range(10, n, 50):  # five blinks of 3 frames
        coeffs[start : start + 3, lids] = 0.9
    blinking = motion_checks.eyes(coeffs)
    assert blinking["shut_share"] == pytest.approx(15 / n) and blinking["longest_shut_s"] == pytest.approx(3 / FPS)
    coeffs[100:150, lids] = 0.6  # two seconds half shut
    coeffs[:, COEFF_INDEX["eyeLookDownLeft"]] = coeffs[:, COEFF_INDEX["eyeLookDownRight"]] = 0.5
    drowsy = motion_checks.eyes(coeffs)
    assert drowsy["longest_shut_s"] == pytest.approx(2.0) and drowsy["shut_share"] > 0.2
    assert drowsy["gaze_down"] == pytest.approx(0.5) and blinking["gaze_down"] == 0

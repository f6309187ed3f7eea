"""The renderer's self-reenactment benchmark (`emote eval --renderer`) on a talking video the test makes.

Known answers: our renderer re-enacting a video our renderer made from the same first frame comes
close to it (the motion measured on it is the motion it was drawn with, give or take the tracker), and
much closer in the mouth than the first frame held still; shifts are undone before scoring; a video
that cannot be used is reported and the run goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from emote.evaluation.image_similarity import (
    align_shift,
    compare_frames,
    masked_psnr,
    region_masks,
    shift_image,
    ssim_map,
)
from emote.model.face.regions import LEFT_EYE, OUTER_LIPS, RIGHT_EYE
from emote.model.face.tracks import measure_frames, read_video_frames
from emote.model.media.audio_io import write_wav
from emote.server.cli import main as emote_main
from emote.streaming.offline import render_file
from tests._fixtures import speech_16k


def textured(seed: int = 0, side: int = 160) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((side, side, 3)) * 255).astype(np.uint8), (7, 7), 2)


def test_scores_of_equal_and_shifted_images() -> None:
    img = textured()
    mask = np.zeros(img.shape[:2], bool)
    mask[30:130, 30:130] = True
    assert masked_psnr(img, img, mask) == float("inf") and ssim_map(img, img)[mask].min() == pytest.approx(1.0)
    moved = shift_image(img, 2.5, -1.5)
    dx, dy = align_shift(img, moved, mask, face_width=100.0)
    assert (dx, dy) == (pytest.approx(-2.5, abs=0.3), pytest.approx(1.5, abs=0.3))
    back = shift_image(moved, dx, dy)
    assert masked_psnr(img, back, mask) > masked_psnr(img, moved, mask) + 10
    assert ssim_map(img, back)[mask].mean() > 0.97 > ssim_map(img, moved)[mask].mean()
    # A shift beyond what a tracker's jitter could be is a real difference, not corrected.
    assert align_shift(img, shift_image(img, 12.0, 0.0), mask, face_width=100.0) == (0.0, 0.0)


@pytest.fixture(scope="module")
def talking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skimage.data

    d = tmp_path_factory.mktemp("reenact-in")
    portrait = d / "astronaut.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    speech = d / "speech.wav"
    write_wav(speech, np.concatenate([speech_16k("Open wide and say aah, then close your mouth again."),
                                      np.zeros(4000, np.float32)]), 16000)
    video = d / "talking.mp4"
    render_file(portrait, speech, video, size=256, seed=1, motion="baseline")
    return video


def test_regions_come_from_the_landmarks(talking: Path) -> None:
    frames, fps = read_video_frames(talking, max_frames=1)
    lm = measure_frames(frames, fps).landmarks[0]
    masks = region_masks(lm, frames[0].shape)
    for name, points in (("mouth", OUTER_LIPS), ("eyes", np.r_[RIGHT_EYE, LEFT_EYE]), ("face", [1, 4, 13, 159])):
        x, y = np.round(lm[points, :2]).astype(int).T
        assert masks[name][y, x].all(), name
    assert masks["mouth"].sum() < masks["face"].sum() and not masks["mouth"][:40].any()


def test_the_renderer_reenacts_its_own_video(talking: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    out = tmp_path / "out"
    assert emote_main(["eval", "--renderer", str(talking), str(broken), "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "Videos re-enacted: 1 of 2" in summary and "`broken.mp4`" in summary
    assert "Worst mouths: `talking.mp4` (SSIM 0." in summary
    report = json.loads((out / "talking" / "metrics.json").read_text())
    m = report["metrics"]
    assert m["frames"] > 50
    assert m["face_ssim"] > 0.85 and m["mouth_ssim"] > 0.8 and m["face_psnr"] > 25
    assert m["landmark_error"] < 0.03
    # The video is itself a render of this face: re-enacted, it stays the same person as the real frames.
    assert 0 < m["identity_to_real"] < 0.2 and abs(m["identity_rendered"] - m["identity_real"]) < 0.1
    for key in ("side_by_side", "worst_mouths"):
        assert Path(report["files"][key]).stat().st_size > 10_000
    # The first frame held still is much further from the talking mouth than the re-enactment, frame by frame.
    real, fps = read_video_frames(talking)
    tracks = measure_frames(real, fps)
    scored = dict(zip(report["per_frame"]["frame"], report["per_frame"]["mouth_ssim"], strict=True))
    opening = tracks.mouth_opening
    wide = [i for i in np.flatnonzero(opening > np.quantile(opening, 0.8)) if i in scored]
    assert len(wide) > 10
    reenacted = np.mean([scored[i] for i in wide])
    still = np.mean([compare_frames(real[i], real[0], tracks.landmarks[i])[0]["mouth_ssim"] for i in wide])
    assert reenacted > still + 0.04


def test_a_cut_ends_the_reenactment(talking: Path, tmp_path: Path) -> None:
    from emote.model.media.video_out import Mp4Writer

    frames, fps = read_video_frames(talking)
    cut = tmp_path / "cut.mp4"
    h, w = frames[0].shape[:2]
    with Mp4Writer(cut, w, h, fps) as writer:  # 40 frames, then the same face a third of the picture away
        for i, f in enumerate(frames[:80]):
            writer.write_video(f if i < 40 else np.roll(f, w // 3, axis=1))
    out = tmp_path / "out"
    assert emote_main(["eval", "--renderer", str(cut), "--out", str(out)]) == 0
    report = json.loads((out / "cut" / "metrics.json").read_text())
    assert max(report["per_frame"]["frame"]) == 39 and report["metrics"]["frames"] >= 35


def test_reference_mouths_are_scored_against_the_painted_ones(talking: Path, tmp_path: Path) -> None:
    """`--reference`: the first half re-enacted again with the open mouths of the second half, both renders
    scored on the same frames; the video our renderer made is matched about as well either way (its second
    half's mouths are its own renderer's), and both far better than a still mouth would be."""
    out = tmp_path / "out"
    assert emote_main(["eval", "--renderer", "--reference", str(talking), "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "With real mouth interiors (1 videos)" in summary and "| from the reference clip |" in summary
    report = json.loads((out / "talking" / "metrics.json").read_text())
    half = report["half"]
    assert half["frames"] > 20 and half["mouths"] >= 3
    assert half["painted"]["mouth_ssim"] > 0.8 and half["reference"]["mouth_ssim"] > 0.75
    assert abs(half["reference"]["face_psnr"] - half["painted"]["face_psnr"]) < 2.0
    assert max(report["per_frame"]["frame"]) > 2 * half["frames"] * 0.8  # the full video is still scored too
    assert emote_main(["eval", "--reference", str(talking), "--out", str(out)]) == 2  # needs --renderer


def test_render_with_a_reference_clip(talking: Path, tmp_path: Path) -> None:
    import skimage.data

    portrait = tmp_path / "astronaut.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "with_reference.mp4"
    assert emote_main(["render", str(portrait), str(talking), "--reference", str(talking), "--size", "256",
                       "-o", str(out)]) == 0
    frames, _ = read_video_frames(out)
    assert len(frames) > 50
    from emote.model.media.video_out import Mp4Writer

    empty = tmp_path / "empty_room.mp4"  # no one in it
    with Mp4Writer(empty, 128, 128, 25.0) as writer:
        for _ in range(30):
            writer.write_video(np.full((128, 128, 3), 90, np.uint8))
    bad = tmp_path / "bad.mp4"
    assert emote_main(["render", str(portrait), str(talking), "--reference", str(empty), "-o", str(bad)]) == 2
    assert not bad.exists()


def test_a_video_without_a_reference_is_still_scored_and_named() -> None:
    from emote.evaluation.reenact import COLUMNS, ReenactReport, summary_markdown

    metrics = {key: 0.5 for key, _, _ in COLUMNS}
    with_ref = ReenactReport(video="a.mp4", metrics=metrics,
                             half={"painted": dict(metrics), "reference": metrics | {"mouth_psnr": 0.75},
                                   "frames": 10.0, "mouths": 5.0})
    without = ReenactReport(video="b.mp4", metrics=metrics, half={"error": "its second half: only 0 of 9 frames"})
    summary = summary_markdown([with_ref, without])
    assert "Videos re-enacted: 2 of 2" in summary and "With real mouth interiors (1 videos)" in summary
    assert "| difference | +0 | +0 | +0.25 |" in summary
    assert "- `b.mp4`: no reference (its second half: only 0 of 9 frames)" in summary

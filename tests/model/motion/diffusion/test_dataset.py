"""emote dataset on generated videos: a talking render becomes a clip, bad videos are refused with a reason,
people are told apart by their faces and the split never moves a person."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emote.model.errors import InputError
from emote.model.motion.diffusion.clips import FPS
from emote.model.motion.diffusion.dataset import build_dataset, dataset_clips, make_split
from emote.model.motion.interface import COEFF_INDEX


def test_a_talking_video_becomes_a_clip_of_motion_and_audio(dataset) -> None:  # type: ignore[no-untyped-def]
    folder, records, _ = dataset
    ok = {Path(r.source).stem: r for r in records if r.status == "ok"}
    assert set(ok) == {"astro_a", "astro_b", "grace"}
    clips = dataset_clips(folder, "train") + dataset_clips(folder, "validation")
    assert len(clips) == 3
    for _, clip in clips:
        assert clip.pose.shape == (len(clip), 6) and clip.coeffs.shape == (len(clip), 52)
        assert len(clip.audio) == round(len(clip) * 16000 / FPS) and clip.audio.dtype == np.int16
        # The mouth opened for the words and the head moved (the renders' baseline motion, measured back).
        assert clip.coeffs[:, COEFF_INDEX["jawOpen"]].max() > 0.15
        assert np.abs(clip.pose[:, :3]).max() > 0.5
        assert np.abs(np.median(clip.pose[:, :3], axis=0)).max() < 0.5  # relative to the clip's typical frame
    assert all(r.sync_r >= 0.15 for r in ok.values())


def test_unusable_videos_are_skipped_with_a_reason(dataset) -> None:  # type: ignore[no-untyped-def]
    _, records, lines = dataset
    reasons = {Path(r.source).stem: r.reason for r in records if r.status == "skipped"}
    assert "no audio track" in reasons["mute"]
    assert "silent audio" in reasons["silent"]
    assert "face" in reasons["noface"]
    assert sum("skipped:" in line for line in lines) == 3 and len(lines) == 6


def test_people_are_told_apart_by_face_and_kept_on_one_side(dataset, videos, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, records, _ = dataset
    person = {Path(r.source).stem: r.person for r in records if r.status == "ok"}
    assert person["astro_a"] == person["astro_b"] != person["grace"]
    split = json.loads((folder / "split.json").read_text())["people"]
    assert {p: len(e["videos"]) for p, e in split.items()} == {person["astro_a"]: 2, person["grace"]: 1}
    # A second run measures nothing again, and keeps every side.
    lines: list[str] = []
    build_dataset([videos["astro_a"], videos["grace"]], folder, progress=lines.append)
    assert all("(cached)" in line for line in lines)
    assert json.loads((folder / "split.json").read_text())["people"] == split


def test_a_split_that_would_move_a_person_is_refused(dataset) -> None:  # type: ignore[no-untyped-def]
    folder, records, _ = dataset
    ok = [r for r in records if r.status == "ok"]
    shas = [r.sha for r in ok]
    before = {"people": {"p1": {"side": "train", "videos": shas[:1]}, "p2": {"side": "validation",
                                                                            "videos": shas[1:2]}}}
    for r in ok:
        r.person = "everyone"  # now grouped as one person
    with pytest.raises(InputError, match="both sides"):
        make_split(ok, before)


def test_nothing_to_measure_is_a_clear_error(tmp_path: Path) -> None:
    from emote.model.errors import OptionError

    with pytest.raises(OptionError, match="no such file"):
        build_dataset([tmp_path / "missing.mp4"], tmp_path / "out")
    with pytest.raises(OptionError, match="no videos found"):
        build_dataset([tmp_path], tmp_path / "out")
    with pytest.raises(InputError, match="emote dataset"):
        dataset_clips(tmp_path, "train")

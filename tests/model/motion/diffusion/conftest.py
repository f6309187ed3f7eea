"""Generated talking videos and a dataset built from them (shared by the dataset and training tests)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from emote.model.media.audio_io import write_wav
from emote.model.media.video_out import Mp4Writer
from emote.model.motion.diffusion.dataset import build_dataset
from emote.streaming.offline import render_file
from tests._fixtures import speech_16k


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Talking renders of two people (one of them twice, other words), and three unusable videos."""
    from emote.model.assets import default_portrait_path

    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("videos")
    astronaut = folder / "astronaut.png"
    cv2.imwrite(str(astronaut), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    out: dict[str, Path] = {}
    texts = {"astro_a": "Good morning, everybody. Today we talk about the moon.",
             "astro_b": "Open wide and say aah, then close your mouth again.",
             "grace": "Computers are very useful, but they are only as good as their programs."}
    for name, text in texts.items():
        wav = folder / f"{name}.wav"
        speech = np.concatenate([speech_16k(text), np.zeros(8000, np.float32)])
        write_wav(wav, speech, 16000)
        portrait = default_portrait_path() if name == "grace" else astronaut
        out[name] = folder / f"{name}.mp4"
        render_file(portrait, wav, out[name], size=256, seed=1, motion="baseline")
    frame = cv2.resize(skimage_data.astronaut(), (256, 256))
    out["mute"] = folder / "mute.mp4"  # no audio track
    with Mp4Writer(out["mute"], 256, 256, 25.0) as writer:
        for _ in range(25):
            writer.write_video(frame)
    out["silent"] = folder / "silent.mp4"  # an audio track of digital silence
    silence = folder / "silence.wav"
    write_wav(silence, np.zeros(32000, np.float32), 16000)
    render_file(astronaut, silence, out["silent"], size=256, motion="baseline")
    out["noface"] = folder / "noface.mp4"  # a talking soundtrack over a picture without a face
    with Mp4Writer(out["noface"], 256, 256, 25.0) as writer:
        for _ in range(50):
            writer.write_video(np.full((256, 256, 3), 90, np.uint8))
    return out


@pytest.fixture(scope="session")
def dataset(videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("dataset")
    lines: list[str] = []
    records = build_dataset(list(videos.values()), folder, progress=lines.append)
    return folder, records, lines

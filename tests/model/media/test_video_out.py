"""Tests for model.media.video_out: exact frames and rates, playable A/V, atomic commit or nothing."""

from __future__ import annotations

import gc
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from emote.model.errors import OptionError
from emote.model.media.audio_io import open_audio, write_wav
from emote.model.media.video_out import Mp4Writer, as_fraction

W, H = 64, 48


def frame(i: int) -> np.ndarray:
    image = np.zeros((H, W, 3), np.uint8)
    image[:, : (i * 3) % W] = (200, 40, 40)  # a moving edge so frames differ
    return image


def speech_like(path: Path, seconds: float, rate: int = 22050) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    write_wav(path, 0.4 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)), rate)
    return path


def probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {
            "codecs": sorted(s.codec_context.name for s in container.streams),
            "size": (video.codec_context.width, video.codec_context.height),
            "rate": video.average_rate,
            "frames": sum(1 for _ in container.decode(video)),
            "video_s": float(video.duration * video.time_base),
        }
    if info["codecs"] == ["aac", "h264"]:
        with av.open(str(path)) as container:
            audio = container.streams.audio[0]
            info["audio_rate"] = audio.codec_context.sample_rate
            info["audio_layout"] = audio.codec_context.layout.name
            # The edit list holds the exact length; decoding also yields the AAC
            # encoder's padding at the end (under one 1024-sample frame).
            info["audio_s"] = float(audio.duration * audio.time_base)
            decoded = sum(f.samples for f in container.decode(audio))
            info["audio_padding"] = decoded - audio.duration * audio.time_base * audio.codec_context.sample_rate
    return info


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_video_with_audio(tmp_path: Path) -> None:
    source = open_audio(speech_like(tmp_path / "speech.wav", 2.0))
    out = tmp_path / "out" / "nested" / "talk.mp4"  # parent folders are created
    fps = 25
    with Mp4Writer(out, W, H, fps, audio_rate=source.mux_rate, audio_layout=source.mux_layout) as writer:
        for piece in source.chunks(chunk_s=0.3):
            writer.write_audio(piece.for_mux)
            end_s = (piece.start_sample + piece.mono16k.size) / 16000
            while writer.frames_written < min(round(end_s * fps), 50):
                writer.write_video(frame(writer.frames_written))
        while writer.frames_written < 50:
            writer.write_video(frame(writer.frames_written))
    info = probe(out)
    assert info["codecs"] == ["aac", "h264"]
    assert info["size"] == (W, H) and info["rate"] == 25
    assert info["frames"] == 50 and info["video_s"] == pytest.approx(2.0)
    assert (info["audio_rate"], info["audio_layout"]) == (22050, "mono")
    assert writer.audio_samples_written == 44100
    assert info["audio_s"] == pytest.approx(2.0, abs=1e-6)
    assert 0 <= info["audio_padding"] < 1024
    assert leftovers(out.parent) == []


def test_audio_written_after_all_video_still_muxes(tmp_path: Path) -> None:
    source = open_audio(speech_like(tmp_path / "s.wav", 1.0, rate=44100))
    out = tmp_path / "late_audio.mp4"
    with Mp4Writer(out, W, H, 25, audio_rate=44100, audio_layout="stereo") as writer:
        for i in range(25):
            writer.write_video(frame(i))
        stereo = av.AudioResampler(format="fltp", layout="stereo", rate=44100)
        for piece in source.chunks():
            writer.write_audio([f for mono in piece.for_mux for f in stereo.resample(mono)])
        writer.write_audio(stereo.resample(None))
    info = probe(out)
    assert info["frames"] == 25 and info["audio_layout"] == "stereo"
    assert info["audio_s"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("fps", "expected"),
    [(29.97, Fraction(2997, 100)), (Fraction(30000, 1001), Fraction(30000, 1001)), (12.5, Fraction(25, 2))],
)
def test_fractional_frame_rates(tmp_path: Path, fps: float | Fraction, expected: Fraction) -> None:
    assert as_fraction(fps) == expected
    out = tmp_path / "frac.mp4"
    with Mp4Writer(out, W, H, fps, preset="ultrafast") as writer:
        for i in range(30):
            writer.write_video(frame(i))
    info = probe(out)
    assert info["codecs"] == ["h264"]
    assert info["rate"] == expected and info["frames"] == 30
    assert info["video_s"] == pytest.approx(float(30 / expected), abs=1e-3)


def test_colours_survive(tmp_path: Path) -> None:
    out = tmp_path / "colour.mp4"
    colour = np.array([200, 60, 30], np.uint8)
    with Mp4Writer(out, W, H, 25, crf=10) as writer:
        for _ in range(3):
            writer.write_video(np.broadcast_to(colour, (H, W, 3)).copy())
    with av.open(str(out)) as container:
        decoded = next(container.decode(video=0))
        assert decoded.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0) == pytest.approx(colour, abs=6)


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_failure_leaves_nothing_and_keeps_old_file(tmp_path: Path, error: type[BaseException]) -> None:
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous good render")
    with pytest.raises(error), Mp4Writer(out, W, H, 25, audio_rate=16000) as writer:
        writer.write_video(frame(0))
        assert len(leftovers(tmp_path)) == 1 and leftovers(tmp_path)[0].startswith(".keep.mp4.partial-")
        raise error
    assert out.read_bytes() == b"previous good render"
    assert leftovers(tmp_path) == []


def test_failure_without_previous_file(tmp_path: Path) -> None:
    with pytest.raises(Boom), Mp4Writer(tmp_path / "new.mp4", W, H, 25) as writer:
        writer.write_video(frame(0))
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_abort_and_dropped_writer(tmp_path: Path) -> None:
    writer = Mp4Writer(tmp_path / "a.mp4", W, H, 25)
    writer.write_video(frame(0))
    writer.abort()
    with pytest.raises(ValueError):
        writer.write_video(frame(1))
    dropped = Mp4Writer(tmp_path / "b.mp4", W, H, 25)
    dropped.write_video(frame(0))
    del dropped
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_success_replaces_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old")
    with Mp4Writer(out, W, H, 25) as writer:
        writer.write_video(frame(0))
    assert probe(out)["frames"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any other new file


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"width": 63}, "even"),
        ({"height": 0}, "positive"),
        ({"fps": 0}, "fps"),
        ({"preset": "warp"}, "preset"),
        ({"crf": 60}, "crf"),
        ({"audio_rate": 37800}, "37800"),
        ({"audio_layout": "5.1"}, "audio_layout"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, words: str) -> None:
    args = {"width": W, "height": H, "fps": 25} | kwargs
    with pytest.raises(OptionError, match=words):
        Mp4Writer(tmp_path / "x.mp4", args.pop("width"), args.pop("height"), args.pop("fps"), **args)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    target = blocker / "out.mp4"
    with pytest.raises(OptionError, match="out.mp4"):
        Mp4Writer(target, W, H, 25)
    with pytest.raises(OptionError, match="directory"):
        Mp4Writer(tmp_path, W, H, 25)


def test_misuse_is_reported(tmp_path: Path) -> None:
    with Mp4Writer(tmp_path / "m.mp4", W, H, 25, audio_rate=48000, audio_layout="stereo") as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write_video(np.zeros((H, W, 3), np.float32))
        with pytest.raises(ValueError, match=r"\(48, 64, 3\)"):
            writer.write_video(np.zeros((W, H, 3), np.uint8))
        mono = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        mono.sample_rate = 48000
        with pytest.raises(ValueError, match="stereo"):
            writer.write_audio([mono])
        writer.write_video(frame(0))
    with pytest.raises(ValueError, match="closed"):
        writer.write_video(frame(1))
    with Mp4Writer(tmp_path / "n.mp4", W, H, 25) as silent:
        with pytest.raises(ValueError, match="no audio stream"):
            silent.write_audio([mono])
        silent.write_video(frame(0))

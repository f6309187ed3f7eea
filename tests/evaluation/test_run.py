"""`emote eval` end to end on talking videos the test makes itself.

The "real" video is the astronaut speaking (rendered by our own pipeline, so
the test needs no third-party footage). Known answers: the calibration row
(the real frames re-encoded) tracks the real mouth almost perfectly, the
still portrait does not track it at all, the baseline does; videos that
cannot be used are reported and the run goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from emote.model.media.audio_io import write_wav
from emote.server.cli import main as emote_main
from emote.streaming.offline import render_file

tts = pytest.importorskip("emote.server.tts")
pytest.importorskip("silero_vad")
pytest.importorskip("face_recognition_models")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import skimage.data

    d = tmp_path_factory.mktemp("eval-in")
    portrait = d / "astronaut.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    a, rate = tts.synthesize("Hello there. This is a short test of the evaluation, with a pause in the middle.")
    gap = np.zeros(int(0.8 * rate), np.float32)
    speech = d / "speech.wav"
    write_wav(speech, np.concatenate([gap, a, gap]), rate)
    talking = d / "talking.mp4"
    render_file(portrait, speech, talking, size=256, seed=1, motion="baseline")
    silent = d / "silent.mp4"  # video without an audio track
    with av.open(str(talking)) as src, av.open(str(silent), "w") as dst:
        stream = dst.add_stream("libx264", rate=25)
        stream.width = stream.height = 256
        stream.pix_fmt = "yuv420p"
        for frame in src.decode(video=0):
            frame.pts = None
            dst.mux(stream.encode(frame.reformat(format="yuv420p")))
        dst.mux(stream.encode(None))
    broken = d / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    return {"talking": talking, "silent": silent, "broken": broken, "folder": d}


@pytest.fixture(scope="module")
def evaluated(videos, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("eval-out")
    code = emote_main(["eval", str(videos["talking"]), str(videos["silent"]), str(videos["broken"]),
                       "--out", str(out), "--motion", "baseline,still"])
    assert code == 0
    return out


def test_writes_metrics_side_by_side_and_contact_sheet(evaluated) -> None:  # type: ignore[no-untyped-def]
    folder = evaluated / "talking"
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"real", "reencode", "baseline", "still"}
    assert (folder / "contact_sheet.png").stat().st_size > 10_000
    with av.open(str(folder / "side_by_side.mp4")) as c:
        assert c.streams.audio and c.streams.video[0].width > 3 * 256


def test_known_answers(evaluated) -> None:  # type: ignore[no-untyped-def]
    m = json.loads((evaluated / "talking" / "metrics.json").read_text())["metrics"]
    # The real frames re-encoded: the same mouth, so r is ~1 and the lag the same.
    assert m["reencode"]["lip_sync_r"] > 0.95
    assert m["reencode"]["audio_mouth_lag_frames"] == m["real"]["audio_mouth_lag_frames"]
    # A portrait that never moves tracks nothing (its mouth curve is tracker noise) and never blinks.
    assert m["still"]["lip_sync_r"] < 0.3
    assert m["still"]["blinks_per_min"] == 0
    # The baseline follows the speech the "real" video (itself a baseline render) speaks.
    assert m["baseline"]["lip_sync_r"] > 0.5
    assert m["baseline"]["lip_sync_r"] - m["still"]["lip_sync_r"] > 0.5
    assert m["baseline"]["identity_mean"] < 0.45
    assert m["baseline"]["identity_at_pose"] < 0.45 and m["real"]["identity_at_pose"] >= 0


def test_bad_videos_are_reported_and_the_run_goes_on(evaluated) -> None:  # type: ignore[no-untyped-def]
    summary = (evaluated / "summary.md").read_text()
    assert "Videos evaluated: 1 of 3" in summary
    assert "silent.mp4" in summary and "audio" in summary
    assert "broken.mp4" in summary
    assert "| baseline |" in summary and "| still |" in summary and "reencode (calibration)" in summary

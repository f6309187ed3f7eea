"""`emote render` from the command line: bad inputs get clear errors and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from emote.model.media.audio_io import write_wav
from emote.server.cli import main as emote_main


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import skimage.data

    d = tmp_path_factory.mktemp("cli")
    paths = {
        "face": d / "astronaut.png",
        "noface": d / "coffee.png",
        "text": d / "notes.txt",
        "speech": d / "speech.wav",
        "silence": d / "silence.wav",
        "empty": d / "empty.wav",
        "corrupt": d / "corrupt.mp3",
    }
    cv2.imwrite(str(paths["face"]), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(paths["noface"]), cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR))
    paths["text"].write_text("this is not a picture\n")
    t = np.arange(int(1.5 * 16000)) / 16000
    write_wav(paths["speech"], (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32),
              16000)
    write_wav(paths["silence"], np.zeros(int(2.0 * 16000), np.float32), 16000)
    paths["empty"].write_bytes(b"")
    paths["corrupt"].write_bytes(os.urandom(20000))
    return paths


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = emote_main(list(args))
    return code, capsys.readouterr().err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


@pytest.mark.parametrize(
    ("portrait", "audio", "expect"),
    [
        ("noface", "speech", "no face was found"),
        ("text", "speech", "not a readable image"),
        ("face", "empty", "empty.wav"),
        ("face", "corrupt", "corrupt.mp3"),
        ("face", "missing", "missing"),
    ],
)
def test_bad_input_gets_clear_error_and_no_output(files, tmp_path, capsys, portrait, audio, expect) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out.mp4"
    audio_path = files.get(audio, tmp_path / "missing.wav")
    code, err = _run(capsys, "render", str(files[portrait]), str(audio_path), "-o", str(out))
    assert code == 2
    assert expect in err
    assert err.count("\n") <= 2, "one short message, not a traceback"
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("option", "value", "expect"),
    [("--fps", "0", "--fps"), ("--size", "63", "--size"), ("--face", "3", "face"), ("--motion", "nope", "--motion")],
)
def test_bad_option_gets_clear_error(files, tmp_path, capsys, option, value, expect) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out.mp4"
    code, err = _run(capsys, "render", str(files["face"]), str(files["speech"]), "-o", str(out), option, value)
    assert code == 2 and expect in err
    assert not out.exists()


def test_silence_gives_valid_idle_video(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "idle.mp4"
    code, _ = _run(capsys, "render", str(files["face"]), str(files["silence"]), "-o", str(out), "--size", "256")
    assert code == 0
    with av.open(str(out)) as c:
        assert c.streams.audio and c.streams.video
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 50
    assert (frames[0].shape[1], frames[0].shape[0]) == (256, 256)


def test_failure_mid_render_keeps_existing_output(files, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous render")
    from emote.model.render.meshwarp import renderer

    calls = {"n": 0}
    real = renderer.MeshWarpSession.render

    def failing(self, pose, coeffs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt  # the user pressing Ctrl-C mid-render
        return real(self, pose, coeffs)

    monkeypatch.setattr(renderer.MeshWarpSession, "render", failing)
    code, err = _run(capsys, "render", str(files["face"]), str(files["speech"]), "-o", str(out))
    assert code == 130 and "interrupted" in err
    assert out.read_bytes() == b"previous render"
    assert _leftovers(tmp_path) == []


def test_console_script_runs(files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cli.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "emote.server.cli", "render", str(files["face"]), str(files["speech"]), "-o", str(out),
         "--size", "128", "--fps", "30"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and out.exists()
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 45


def test_warm_kernels_fills_an_empty_numba_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The install step's kernel warm-up leaves the render and mouth kernels compiled on disk."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "EMOTE_CACHE_DIR": str(tmp_path / "portraits")}
    proc = subprocess.run(
        [sys.executable, "-c", "from emote.streaming.offline import warm_kernels; print(warm_kernels())"],
        capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip()) > 0
    cached = {p.name.split("-")[0] for p in (tmp_path / "numba").rglob("*.nbi")}
    assert {"raster._draw", "mouth_dynamics._run"} <= cached, cached

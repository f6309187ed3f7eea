"""Upload face analysis in a worker process: it runs elsewhere, reports bad pictures, survives a dead worker."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from emote.model.errors import NoFaceError, PortraitError
from emote.model.face.portrait import cached_analysis_path
from emote.server.face_check import FaceChecker

skimage_data = pytest.importorskip("skimage.data")


def test_the_analysis_runs_in_a_worker_process_and_fills_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOTE_CACHE_DIR", str(tmp_path / "cache"))  # the worker is spawned with this
    face = tmp_path / "astronaut.png"
    cv2.imwrite(str(face), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1)))
    checker = FaceChecker()
    try:
        pid = checker(face)
        assert pid != os.getpid()
        assert cached_analysis_path(face, face_index=0).is_file()  # the session reads it from there
        with pytest.raises(NoFaceError, match="no face was found"):
            checker(wall)
        assert checker(face) == pid  # the same worker, kept for the next upload
        os.kill(pid, signal.SIGKILL)  # a worker that dies (say, out of memory) is replaced
        replacement = checker(face)
        assert replacement not in (pid, os.getpid())
    finally:
        checker.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        checker(face)


def test_a_stuck_worker_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emote.server import face_check

    monkeypatch.setenv("EMOTE_CACHE_DIR", str(tmp_path / "cache"))
    face = tmp_path / "astronaut.png"
    cv2.imwrite(str(face), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    checker = FaceChecker()
    try:
        monkeypatch.setattr(face_check, "TIMEOUT_S", 0.01)  # far less than starting a worker takes
        with pytest.raises(PortraitError, match="did not finish"):
            checker(face)
        monkeypatch.setattr(face_check, "TIMEOUT_S", 60.0)
        assert checker(face) != os.getpid()  # a fresh worker does the next one
    finally:
        checker.shutdown()

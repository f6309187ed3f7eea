"""Portrait analysis: measure once everything the renderer needs to know about the photo.

Between loading the image (:mod:`model.face.image_io`) and animating it, the pipeline needs the face's 478
landmarks in pixels (the mesh the renderer warps), the expression the face already has as 52 ARKit
coefficients (the *rest* expression that motion is measured against), the head pose, and a soft person
matte that separates the sitter from the background. This module gets them from MediaPipe's Face
Landmarker, face detector and selfie segmenter, picks one face when there are several, turns unusable
pictures into user-facing errors, and caches the result per image content, so that a portrait is analysed
once however often it is animated; a cache hit neither runs nor imports MediaPipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import threading
import warnings
import zipfile
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from emote.model.errors import DependencyError, FaceTooSmallError, MultipleFacesWarning, NoFaceError, OptionError
from emote.model.face import image_io
from emote.model.face.image_io import DEFAULT_MAX_SIDE, LoadedImage
from emote.model.face.landmarker import landmarker_task_path, quiet_native_logs
from emote.model.face.pose import pose_angles
from emote.model.motion.interface import N_COEFFS, coeffs_from_named

#: Bump whenever a change here alters analysis results; it is part of the cache key.
ANALYSIS_VERSION = 1
N_LANDMARKS = 478
#: Faces narrower than this, in the original image's pixels, are refused.
MIN_FACE_PX = 64
MAX_FACES = 6
# A fallback crop is this many detector boxes wide, so that the whole head fits in it.
_CROP_SCALE = 2.2
_CROP_PX = 384
# Mattes are kept at 16-bit precision, so that cached ones are identical to fresh ones.
_U16 = np.float32(65535.0)
_NO_FACE_HINT = "use a photo or painting with one clearly visible face, looking roughly at the camera"

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PortraitAnalysis:
    """Everything measured on one portrait; its arrays are read-only.

    Attributes:
        image: (H, W, 3) uint8 RGB, upright and downscaled as analysed.
        landmarks: (478, 3) float32 MediaPipe face-mesh points in pixels of ``image``: x right, y down,
            z in the same pixel scale as x, negative towards the viewer.
        coeffs: (52,) float32 ARKit blendshape weights in ``motion.ARKIT_NAMES`` order.
        transform: (4, 4) float32 facial transformation matrix, face model -> camera (x right, y up, z to viewer).
        yaw_pitch_roll: (3,) float32 degrees (:func:`~emote.model.face.pose.pose_angles` of ``transform``).
        matte: (H, W) float32 person probability in [0, 1].
        face_box: (x0, y0, x1, y1) integer pixel bounds of the landmarks, clipped to ``image``.
        n_faces: how many faces were found.
        face_index: which of them this is (0 = largest).
        source_id: sha256 hex of the image file's bytes, or of the array's bytes.
        from_cache: True when loaded from the cache; ignored by ``==``.
    """

    image: np.ndarray
    landmarks: np.ndarray
    coeffs: np.ndarray
    transform: np.ndarray
    yaw_pitch_roll: np.ndarray
    matte: np.ndarray
    face_box: tuple[int, int, int, int]
    n_faces: int
    face_index: int
    source_id: str
    from_cache: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            if isinstance(value := getattr(self, f.name), np.ndarray):
                value.setflags(write=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PortraitAnalysis):
            return NotImplemented
        pairs = [(getattr(self, f.name), getattr(other, f.name)) for f in fields(self) if f.compare]
        return all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in pairs)


def analyze_portrait(
    source: str | os.PathLike[str] | np.ndarray,
    *,
    face_index: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    use_cache: bool = True,
) -> PortraitAnalysis:
    """Analyse a portrait file or image array, from the cache when possible.

    Args:
        source: image path, or an array accepted by :func:`model.face.image_io.portrait_from_array`.
        face_index: which face to use, 0 = largest, 1 = next, ...; None = the largest, with a
            :class:`MultipleFacesWarning` when there are several.
        cache_dir: where results are cached; None = :func:`default_cache_dir`.
        max_side: images are downscaled so that their longest side is at most this many pixels.
        use_cache: False to neither read nor write the cache.

    Raises:
        PortraitError: (or a subclass) the picture cannot be used.
        OptionError: ``face_index`` is invalid or out of range.
        DependencyError: the Face Landmarker model is not installed.
    """
    if isinstance(face_index, bool) or not isinstance(face_index, int | np.integer | None) or (face_index or 0) < 0:
        raise OptionError(f"--face must be a whole number >= 0 (0 = largest face), got {face_index!r}")
    if isinstance(source, np.ndarray):
        name, raw = "portrait array", np.ascontiguousarray(source)
        loaded = image_io.portrait_from_array(raw, max_side=max_side, name=name)
        source_id, kind = hashlib.sha256(raw.tobytes()).hexdigest(), f"{raw.shape}{raw.dtype}"
    else:
        name, data = os.fspath(source), image_io.read_portrait_bytes(source)
        loaded = image_io.decode_portrait(data, name, max_side=max_side)
        source_id, kind = hashlib.sha256(data).hexdigest(), "file"
    index = int(face_index or 0)
    path = _cache_path(source_id, kind, index, max_side, cache_dir)
    result = _load_cached(path, loaded, source_id) if use_cache else None
    if result is None:
        result = _analyze(loaded, name, index, source_id)
        if use_cache:
            _save_cached(path, result)
    if face_index is None and result.n_faces > 1:
        n, width = result.n_faces, result.face_box[2] - result.face_box[0]
        message = (
            f"{name}: {n} faces were found; using face 0, the largest ({width} px wide). "
            f"Use --face N to pick another (0 = largest, 1 = next, ..., {n - 1})."
        )
        warnings.warn(MultipleFacesWarning(message), stacklevel=2)
    return result


def default_cache_dir() -> Path:
    """``$EMOTE_CACHE_DIR``, or ``~/.cache/emote/portraits``."""
    return Path(os.environ.get("EMOTE_CACHE_DIR") or Path.home() / ".cache" / "emote" / "portraits")


@lru_cache(maxsize=1)
def detector_version() -> str:
    """Names the analysing software and model without importing MediaPipe; part of the cache key."""
    model_size = 0
    with contextlib.suppress(DependencyError, OSError):
        model_size = os.path.getsize(landmarker_task_path())
    return f"mediapipe-{importlib.metadata.version('mediapipe')}/face_landmarker-{model_size}"


class _Face(NamedTuple):
    landmarks: np.ndarray  # (478, 3) float32 pixels
    coeffs: np.ndarray  # (52,) float32
    transform: np.ndarray  # (4, 4) float32

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        (x0, y0), (x1, y1) = np.floor(self.landmarks[:, :2].min(0)), np.ceil(self.landmarks[:, :2].max(0))
        return int(max(x0, 0)), int(max(y0, 0)), int(min(x1, width)), int(min(y1, height))

    def area(self) -> float:
        return float(np.prod(np.ptp(self.landmarks[:, :2], axis=0)))


def _analyze(loaded: LoadedImage, name: str, index: int, source_id: str) -> PortraitAnalysis:
    rgb = loaded.rgb
    with quiet_native_logs():
        faces = sorted(_find_faces(rgb), key=_Face.area, reverse=True)
        if not faces:
            raise NoFaceError(f"{name}: no face was found; {_NO_FACE_HINT}")
        if index >= len(faces):
            n, hint = len(faces), f"use --face 0 to {len(faces) - 1} (0 = largest)"
            raise OptionError(f"{name}: --face {index} was asked for, but {n} face(s) were found; {hint}")
        face = faces[index]
        box = face.box(rgb.shape[1], rgb.shape[0])
        width = round((box[2] - box[0]) / loaded.scale)
        if width < MIN_FACE_PX:
            hint = f"at least {MIN_FACE_PX} are needed; use a closer or higher-resolution picture"
            raise FaceTooSmallError(f"{name}: the face is only {width} pixels wide ({hint})")
        matte = _person_matte(rgb, loaded.alpha, faces)
    angles = pose_angles(face.transform)
    return PortraitAnalysis(image=rgb, landmarks=face.landmarks, coeffs=face.coeffs, transform=face.transform,
                            yaw_pitch_roll=angles, matte=matte, face_box=box, n_faces=len(faces), face_index=index,
                            source_id=source_id)


def _find_faces(rgb: np.ndarray) -> list[_Face]:
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=landmarker_task_path()),
        running_mode=vision.RunningMode.IMAGE,
        num_faces=MAX_FACES,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    landmarker = vision.FaceLandmarker.create_from_options(options)
    try:
        faces = _add_detected_faces(landmarker, rgb, _landmark(landmarker, rgb), tiled=False)
        if not faces:
            # Faces under ~8% of the picture's width escape the full-range detector's 192x192 view of it.
            faces = _add_detected_faces(landmarker, rgb, [], tiled=True)
        return faces
    finally:
        landmarker.close()


def _landmark(landmarker: Any, rgb: np.ndarray) -> list[_Face]:
    import mediapipe as mp

    h, w = rgb.shape[:2]
    result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
    faces = []
    for i, points in enumerate(result.face_landmarks):
        # Normalised z is in units of the image width, like x.
        landmarks = np.array([(p.x * w, p.y * h, p.z * w) for p in points], np.float32)
        coeffs = coeffs_from_named({c.category_name: c.score for c in result.face_blendshapes[i]})
        transform = np.asarray(result.facial_transformation_matrixes[i], np.float32).reshape(4, 4)
        faces.append(_Face(landmarks, coeffs, transform))
    return faces


def _add_detected_faces(landmarker: Any, rgb: np.ndarray, known: list[_Face], tiled: bool) -> list[_Face]:
    """``known`` plus the faces that only the full-range detector finds.

    The landmarker's own detector is short-range and misses small faces in large pictures. Each new
    detection is cropped with a margin, scaled up and landmarked, which drops false detections too. The
    transformation matrix is then measured in the crop's virtual camera; its rotation barely differs.

    Args:
        tiled: run the detector on a 3x3 grid of half-size, half-overlapping tiles, not the whole image.
    """
    h, w = rgb.shape[:2]
    faces = list(known)

    def is_new(x: float, y: float) -> bool:
        return not any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in (f.box(w, h) for f in faces))

    for cx, cy, size in _full_range_detections(rgb, tiled):
        if not is_new(cx, cy):
            continue
        side = size * _CROP_SCALE
        x0, y0, s = cx - side / 2, cy - side / 2, _CROP_PX / side
        warp = np.array([[s, 0, -s * x0], [0, s, -s * y0]], np.float32)
        crop = cv2.warpAffine(rgb, warp, (_CROP_PX, _CROP_PX), borderValue=image_io.BACKGROUND_RGB)
        found = _landmark(landmarker, crop)
        if found:
            # A neighbour's face may share the crop: keep the one at its centre.
            best = min(found, key=lambda f: float(np.linalg.norm(f.landmarks[:, :2].mean(0) - _CROP_PX / 2)))
            landmarks = best.landmarks / np.float32(s) + np.array([x0, y0, 0], np.float32)
            if is_new(*landmarks[:, :2].mean(0)):
                faces.append(_Face(landmarks.astype(np.float32), best.coeffs, best.transform))
    return faces


def _full_range_detections(rgb: np.ndarray, tiled: bool) -> list[tuple[float, float, float]]:
    """(centre x, centre y, box side) in pixels of each face MediaPipe's full-range detector sees."""
    import mediapipe as mp

    h, w = rgb.shape[:2]
    tw, th = ((w + 1) // 2, (h + 1) // 2) if tiled else (w, h)
    regions = [(x, y) for y in sorted({0, (h - th) // 2, h - th}) for x in sorted({0, (w - tw) // 2, w - tw})]
    boxes = []
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as detector:
        for x, y in regions:
            for d in detector.process(np.ascontiguousarray(rgb[y : y + th, x : x + tw])).detections or []:
                b = d.location_data.relative_bounding_box
                cx, cy = x + (b.xmin + b.width / 2) * tw, y + (b.ymin + b.height / 2) * th
                boxes.append((cx, cy, max(b.width * tw, b.height * th)))
    return boxes


def _person_matte(rgb: np.ndarray, alpha: np.ndarray | None, faces: list[_Face]) -> np.ndarray:
    """(H, W) float32 person probability in [0, 1]."""
    import mediapipe as mp

    h, w = rgb.shape[:2]
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmenter:
        raw = np.asarray(segmenter.process(rgb).segmentation_mask, np.float32)
    # The segmenter sees 256x256 pixels: a filter guided by the photo moves its blurry boundary onto
    # the real edge, and a large epsilon keeps hair wisps partial instead of snapping them to 0 or 1.
    radius = max(2, round(max(h, w) / 100))
    matte = cv2.ximgproc.guidedFilter(rgb, raw, radius, (0.02 * 255) ** 2)
    # Selfie-trained segmenters sometimes bite into faces in paintings; a face must never be cut.
    hull = np.zeros((h, w), np.uint8)
    for f in faces:
        cv2.fillConvexPoly(hull, cv2.convexHull(np.round(f.landmarks[:, :2]).astype(np.int32)), (255,))
    k = max(3, radius) | 1
    inner = cv2.GaussianBlur(cv2.erode(hull, np.ones((k, k), np.uint8)), (k, k), 0)
    matte = np.maximum(matte, inner.astype(np.float32) / 255.0)
    if alpha is not None:
        matte = np.minimum(matte, alpha)
    return np.round(np.clip(matte, 0.0, 1.0) * _U16).astype(np.uint16) / _U16


def cached_analysis_path(
    path: str | os.PathLike[str], *, face_index: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Path:
    """Where :func:`analyze_portrait` keeps (or would keep) its result for this image file (which
    must exist): for deleting it together with a file that is not needed any more."""
    source_id = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _cache_path(source_id, "file", int(face_index or 0), max_side, cache_dir)


def _cache_path(source_id: str, kind: str, index: int, max_side: int, cache_dir: str | os.PathLike[str] | None) -> Path:
    key = f"{source_id}|{kind}|{index}|{max_side}|{ANALYSIS_VERSION}|{detector_version()}"
    return Path(cache_dir or default_cache_dir()) / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.npz"


#: The arrays a cache file holds, with their shapes (the pose angles are recomputed from the transform).
_CACHED_ARRAYS = {"landmarks": (N_LANDMARKS, 3), "coeffs": (N_COEFFS,), "transform": (4, 4)}


def _load_cached(path: Path, loaded: LoadedImage, source_id: str) -> PortraitAnalysis | None:
    if not path.is_file():
        return None
    try:
        # Our own file handle: np.load leaks its handle when a damaged archive fails to open.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k].astype(np.float32) for k in _CACHED_ARRAYS}
            matte, counts = z["matte"].astype(np.uint16) / _U16, z["counts"]
            box = [int(v) for v in z["face_box"]]
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable portrait cache %s (%s); analysing again", path, exc)
        return None
    consistent = all(arrays[k].shape == shape for k, shape in _CACHED_ARRAYS.items())
    if not consistent or matte.shape != loaded.rgb.shape[:2] or len(box) != 4 or counts.shape != (2,):
        log.warning("ignoring inconsistent portrait cache %s; analysing again", path)
        return None
    n_faces, face_index = (int(v) for v in counts)
    face_box = (box[0], box[1], box[2], box[3])
    return PortraitAnalysis(
        image=loaded.rgb, landmarks=arrays["landmarks"], coeffs=arrays["coeffs"], transform=arrays["transform"],
        yaw_pitch_roll=pose_angles(arrays["transform"]), matte=matte, face_box=face_box,
        n_faces=n_faces, face_index=face_index, source_id=source_id, from_cache=True,
    )  # fmt: skip


def _save_cached(path: Path, result: PortraitAnalysis) -> None:
    """Write to a temporary file and rename it, so that a concurrent reader never sees half a file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                matte=np.round(result.matte * _U16).astype(np.uint16),
                face_box=np.array(result.face_box, np.int64),
                counts=np.array([result.n_faces, result.face_index], np.int64),
                **{k: getattr(result, k) for k in _CACHED_ARRAYS},
            )
        os.replace(tmp, path)
    except OSError as exc:
        # A read-only or full disk costs speed, not correctness.
        log.warning("could not write the portrait cache %s (%s)", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)

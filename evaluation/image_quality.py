"""No-reference image quality of the face: BRISQUE on a fixed-size face crop.

The sharpness/artefact term of the evaluation. BRISQUE (Mittal et al. 2012)
fits natural-scene statistics of locally normalised luminance and maps them
through an SVM trained on human opinion scores to a number where lower is
better: about 10-25 for a clean photo, 50-80 for a blurred one. It needs no
reference, so a generated video and the real one are scored the same way;
the implementation and its SVM model are those of the ``brisque`` package
(``eval`` extra), nothing is downloaded.

Crop convention (:func:`face_crop`): BRISQUE depends on scale, so every frame
is reduced to the same view of the face before scoring: a square centred on
the centre of the MediaPipe landmarks' bounding box, with side 1.25 x the
longer side of that box (face plus a margin of hair and background), moved
inside the frame (and shrunk to fit it if needed), then resized to 256 x 256
pixels (area averaging down, bicubic up; a small face is therefore judged
at the size it would be shown, softness included). Without landmarks the
largest centred square of the frame is used. At 256 px one score takes about
60 ms on this project's 2-core machines, so 16 sampled frames cost ~1 s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from emote.model.errors import DependencyError
from emote.model.face.identity import evenly_spaced
from emote.model.face.tracks import FaceTracks

CROP_SIDE = 256
CROP_SCALE = 1.25


def face_crop(rgb: np.ndarray, landmarks_px: np.ndarray | None = None, side: int = CROP_SIDE) -> np.ndarray:
    """The square view of the face that BRISQUE scores (convention in the module docstring).

    Args:
        rgb: (H, W, 3) uint8 RGB frame.
        landmarks_px: (N, 2|3) face landmarks in pixels; None = the largest centred square of the frame.
        side: output side in pixels.

    Returns:
        (side, side, 3) uint8.

    Raises:
        ValueError: the frame is not (H, W, 3) uint8, or the landmarks hold no finite point.
    """
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if landmarks_px is None:
        size = min(h, w)
        cx, cy = w / 2, h / 2
    else:
        pts = np.asarray(landmarks_px, np.float64)[:, :2]
        pts = pts[np.isfinite(pts).all(axis=1)]
        if len(pts) == 0:
            raise ValueError("no finite landmarks to crop the face with")
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        size = min(max(CROP_SCALE * max(x1 - x0, y1 - y0), 8.0), h, w)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    n = int(round(size))
    left = int(np.clip(round(cx - n / 2), 0, w - n))
    top = int(np.clip(round(cy - n / 2), 0, h - n))
    crop = image[top : top + n, left : left + n]
    if n == side:
        return np.ascontiguousarray(crop)
    interpolation = cv2.INTER_AREA if n > side else cv2.INTER_CUBIC
    return cv2.resize(crop, (side, side), interpolation=interpolation)


class BrisqueScorer:
    """The ``brisque`` package's model, scoring images without its wasted work and NumPy warnings.

    ``BRISQUE.score`` computes the full-scale statistics twice and converts (1,)-arrays to floats
    (a NumPy deprecation warning); this runs the same steps once, with the same result. Loading
    (mostly importing scikit-image and libsvm) takes 1-2 s: keep one scorer.
    """

    def __init__(self) -> None:
        try:
            import skimage.color
            from brisque import BRISQUE
        except ImportError as exc:
            raise DependencyError(
                "image quality needs the brisque package: run `make install` (it installs the `eval` extra)"
            ) from exc
        self._model: Any = BRISQUE(url=False)
        self._rgb2gray = skimage.color.rgb2gray

    def score_image(self, image: np.ndarray) -> float:
        """BRISQUE of a whole (H, W, 3) uint8 RGB image as given (no crop); lower is better."""
        gray = self._rgb2gray(np.asarray(image))
        full = self._model.calculate_brisque_features(gray, kernel_size=7, sigma=7 / 6)
        half_image = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
        half = self._model.calculate_brisque_features(half_image, kernel_size=7, sigma=7 / 6)
        features = np.array([float(np.ravel(v)[0]) for v in (*full, *half)], np.float64)
        return float(self._model.calculate_image_quality_score(features))

    def score(self, rgb: np.ndarray, landmarks_px: np.ndarray | None = None) -> float:
        """BRISQUE of the face crop of a frame (:func:`face_crop`); lower is better.

        Args:
            rgb: (H, W, 3) uint8 RGB frame.
            landmarks_px: (N, 2|3) face landmarks in pixels; None = the centred square of the frame.
        """
        return self.score_image(face_crop(rgb, landmarks_px))


@functools.lru_cache(maxsize=1)
def default_scorer() -> BrisqueScorer:
    """One shared :class:`BrisqueScorer`, loaded on first use."""
    return BrisqueScorer()


def brisque_score(rgb: np.ndarray, landmarks_px: np.ndarray | None = None) -> float:
    """BRISQUE of a frame's face crop with the shared scorer; lower is better."""
    return default_scorer().score(rgb, landmarks_px)


@dataclass(frozen=True)
class VideoQuality:
    """BRISQUE of frames sampled evenly from a video.

    Attributes:
        frame_indices: (K,) int64 sampled frame numbers, increasing.
        scores: (K,) float32 BRISQUE per sampled frame; NaN where tracks were given but found no face.
        mean: mean of the finite scores (NaN if none); lower is better.
    """

    frame_indices: np.ndarray
    scores: np.ndarray
    mean: float


def video_brisque(
    frames: list[np.ndarray] | np.ndarray,
    tracks: FaceTracks | None = None,
    *,
    k: int = 16,
    scorer: BrisqueScorer | None = None,
) -> VideoQuality:
    """Mean BRISQUE of the face over ``k`` evenly sampled frames.

    Args:
        frames: T RGB frames, (H, W, 3) uint8 each.
        tracks: the video's ``FaceTracks`` (T frames) to crop the face; None = centred square crops.
        k: how many frames to score (about 60 ms each).
        scorer: a loaded scorer; None = :func:`default_scorer`.

    Raises:
        ValueError: frames and tracks differ in length.
        DependencyError: brisque is not installed.
    """
    if tracks is not None and len(tracks) != len(frames):
        raise ValueError(f"{len(frames)} frames but face tracks for {len(tracks)}")
    scorer = scorer or default_scorer()
    indices = evenly_spaced(len(frames), k)
    scores = np.full(len(indices), np.nan, np.float32)
    for j, i in enumerate(indices):
        landmarks = None if tracks is None else tracks.landmarks[i]
        if landmarks is not None and not np.isfinite(landmarks[:, :2]).all():
            continue
        scores[j] = scorer.score(frames[i], landmarks)
    finite = scores[np.isfinite(scores)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    return VideoQuality(frame_indices=indices, scores=scores, mean=mean)

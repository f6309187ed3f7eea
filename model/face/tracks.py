"""Measure a video's face frame by frame, the same way for real and generated video.

The yardstick of every quality claim: MediaPipe's Face Landmarker, run in
video (tracking) mode over decoded frames, gives 478 landmarks and the 52
ARKit blendshapes per frame. From them come the curves the tests and the
evaluation compare: mouth opening (inner-lip gap over the eye-corner
distance, so it does not depend on framing), eye closure, and head pose.
This measures pixels only; it knows nothing about how a video was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from emote.model.errors import InputError
from emote.model.face.landmarker import landmarker_task_path, quiet_native_logs
from emote.model.motion.interface import COEFF_INDEX, N_COEFFS, coeffs_from_named

UPPER_LIP, LOWER_LIP = 13, 14
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263


@dataclass(frozen=True)
class FaceTracks:
    """Per-frame face measurements of one video; NaN where no face was found.

    Attributes:
        landmarks: (T, 478, 3) float32 in pixels (z in x's scale).
        coeffs: (T, 52) float32 ARKit blendshapes as MediaPipe measures them.
        fps: the video's frame rate.
    """

    landmarks: np.ndarray
    coeffs: np.ndarray
    fps: float

    def __len__(self) -> int:
        return int(self.landmarks.shape[0])

    @property
    def eye_distance(self) -> np.ndarray:
        """(T,) distance between the outer eye corners, the unit of the other curves."""
        return np.linalg.norm(self.landmarks[:, RIGHT_EYE_OUTER, :2] - self.landmarks[:, LEFT_EYE_OUTER, :2], axis=1)

    @property
    def mouth_opening(self) -> np.ndarray:
        """(T,) inner-lip gap at the centre of the mouth, in eye-corner distances."""
        gap = np.linalg.norm(self.landmarks[:, UPPER_LIP, :2] - self.landmarks[:, LOWER_LIP, :2], axis=1)
        return gap / self.eye_distance

    @property
    def eye_opening(self) -> np.ndarray:
        """(T,) mean lid gap of both eyes at their centres, in eye-corner distances."""
        lm = self.landmarks
        right = np.linalg.norm(lm[:, 159, :2] - lm[:, 145, :2], axis=1)
        left = np.linalg.norm(lm[:, 386, :2] - lm[:, 374, :2], axis=1)
        return (right + left) / 2 / self.eye_distance

    @property
    def blink(self) -> np.ndarray:
        """(T,) eye closure 0..1, the mean of MediaPipe's eyeBlinkLeft/Right."""
        return (self.coeffs[:, COEFF_INDEX["eyeBlinkLeft"]] + self.coeffs[:, COEFF_INDEX["eyeBlinkRight"]]) / 2


def measure_frames(frames: list[np.ndarray] | np.ndarray, fps: float) -> FaceTracks:
    """Track the largest face through RGB frames ((H, W, 3) uint8 each)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    n = len(frames)
    landmarks = np.full((n, 478, 3), np.nan, np.float32)
    coeffs = np.full((n, N_COEFFS), np.nan, np.float32)
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=landmarker_task_path()),
        running_mode=vision.RunningMode.VIDEO,
        num_faces=1,
        output_face_blendshapes=True,
    )
    with quiet_native_logs():
        tracker = vision.FaceLandmarker.create_from_options(options)
    try:
        for i, frame in enumerate(frames):
            h, w = frame.shape[:2]
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
            result = tracker.detect_for_video(image, int(round(i * 1000.0 / fps)))
            if not result.face_landmarks:
                continue
            pts = result.face_landmarks[0]
            landmarks[i] = [(p.x * w, p.y * h, p.z * w) for p in pts]
            coeffs[i] = coeffs_from_named({c.category_name: c.score for c in result.face_blendshapes[0]})
    finally:
        tracker.close()
    return FaceTracks(landmarks=landmarks, coeffs=coeffs, fps=fps)


def read_video_frames(path: str | Path, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
    """Decode a video's frames as RGB arrays, and its frame rate.

    Raises:
        InputError: the file is missing, unreadable, or holds no video frames.
    """
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: has no video track; give a talking video")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, OSError) as exc:
        reason = exc.__class__.__name__
        raise InputError(f"{path}: cannot be read as a video ({reason}); give an MP4 or similar") from None
    if not frames:
        raise InputError(f"{path}: no video frames could be decoded; give a talking video")
    return frames, fps


def face_tracks(path: str | Path, max_frames: int | None = None) -> FaceTracks:
    """Measure the face in every frame of a video file."""
    frames, fps = read_video_frames(path, max_frames)
    return measure_frames(frames, fps)


def procrustes_residual(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance (pixels of ``reference``) left after the best 2-D similarity fit of points onto reference.

    Removes position, size and in-plane rotation, so what remains is a change of shape.
    """
    a = np.asarray(points, np.float64)[:, :2]
    b = np.asarray(reference, np.float64)[:, :2]
    ok = np.isfinite(a).all(axis=1)
    a, b = a[ok], b[ok]
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    a0, b0 = a - ca, b - cb
    u, s, vt = np.linalg.svd(a0.T @ b0)
    rot = u @ vt
    if np.linalg.det(rot) < 0:  # no mirror images
        u[:, -1] *= -1
        s[-1] *= -1
        rot = u @ vt
    scale = s.sum() / max((a0**2).sum(), 1e-12)
    fitted = scale * a0 @ rot + cb
    return float(np.linalg.norm(fitted - b, axis=1).mean())

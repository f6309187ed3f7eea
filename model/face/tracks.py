"""Measure a video's face frame by frame, the same way for real and generated video.

The yardstick of every quality claim: MediaPipe's Face Landmarker, run in
video (tracking) mode over decoded frames, gives 478 landmarks and the 52
ARKit blendshapes per frame. From them come the curves the tests and the
evaluation compare: mouth opening (inner-lip gap over the eye-corner
distance, so it does not depend on framing), eye closure, and head pose.
This measures pixels only; it knows nothing about how a video was made.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
        transforms: (T, 4, 4) float32 MediaPipe's facial transformation matrices (camera frame:
            x right, y up, z towards the viewer), or None when not measured.
        faces: (T,) int16 how many faces were found in each frame (up to ``max_faces`` of
            :func:`measure_frames`), or None when not counted.
    """

    landmarks: np.ndarray
    coeffs: np.ndarray
    fps: float
    transforms: np.ndarray | None = None
    faces: np.ndarray | None = None

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


def measure_frames(frames: Iterable[np.ndarray], fps: float, *, max_faces: int = 1) -> FaceTracks:
    """Track the largest face through RGB frames ((H, W, 3) uint8 each; any iterable, consumed once).

    Args:
        frames: the video's frames.
        fps: their frame rate.
        max_faces: how many faces to look for; with more than one, ``FaceTracks.faces`` counts the
            faces in each frame (a second person in the picture) and the largest is measured.
    """
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=landmarker_task_path()),
        running_mode=vision.RunningMode.VIDEO,
        num_faces=max_faces,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    missing = (np.full((478, 3), np.nan, np.float32), np.full(N_COEFFS, np.nan, np.float32),
               np.full((4, 4), np.nan, np.float32))
    rows = []
    counts = []
    with quiet_native_logs():
        tracker = vision.FaceLandmarker.create_from_options(options)
    try:
        for i, frame in enumerate(frames):
            h, w = frame.shape[:2]
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
            result = tracker.detect_for_video(image, int(round(i * 1000.0 / fps)))
            counts.append(len(result.face_landmarks))
            if not result.face_landmarks:
                rows.append(missing)
                continue
            faces = [np.array([(p.x * w, p.y * h, p.z * w) for p in face], np.float32)
                     for face in result.face_landmarks]
            k = int(np.argmax([np.prod(np.ptp(f[:, :2], axis=0)) for f in faces]))  # the largest
            named = coeffs_from_named({c.category_name: c.score for c in result.face_blendshapes[k]})
            rows.append((faces[k], named, np.asarray(result.facial_transformation_matrixes[k], np.float32)))
    finally:
        tracker.close()
    if not rows:
        return FaceTracks(np.zeros((0, 478, 3), np.float32), np.zeros((0, N_COEFFS), np.float32), fps,
                          np.zeros((0, 4, 4), np.float32), np.zeros(0, np.int16))
    landmarks, coeffs, transforms = (np.stack(column) for column in zip(*rows, strict=True))
    return FaceTracks(landmarks=landmarks, coeffs=coeffs, fps=fps, transforms=transforms,
                      faces=np.array(counts, np.int16))


def iter_video_frames(path: str | Path, max_frames: int | None = None) -> tuple[Iterator[np.ndarray], float]:
    """A video's RGB frames, decoded one at a time (bounded memory), and its frame rate.

    Raises:
        InputError: the file is missing, unreadable, or has no video track (at once); a decoding error
            later is raised by the iterator.
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        reason = exc.__class__.__name__
        raise InputError(f"{path}: cannot be read as a video ({reason}); give an MP4 or similar") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video track; give a talking video")
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 25)

    def frames() -> Iterator[np.ndarray]:
        try:
            for k, frame in enumerate(container.decode(stream)):
                if max_frames is not None and k >= max_frames:
                    break
                yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, OSError) as exc:
            raise InputError(f"{path}: cannot be decoded ({exc.__class__.__name__}); give an MP4 or similar") from None
        finally:
            container.close()

    return frames(), fps


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


def face_tracks(path: str | Path, max_frames: int | None = None, *, max_faces: int = 1) -> FaceTracks:
    """Measure the face in every frame of a video file (frames are decoded as they are measured).

    Raises:
        InputError: the file cannot be read as a video, or holds no frames.
    """
    frames, fps = iter_video_frames(path, max_frames)
    tracks = measure_frames(frames, fps, max_faces=max_faces)
    if not len(tracks):
        raise InputError(f"{path}: no video frames could be decoded; give a talking video")
    return tracks

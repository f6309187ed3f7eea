"""Head pose: the one convention, and the one way to measure it.

Motion, the renderer, evaluation and training targets all speak of head pose in the same terms,
those of :mod:`~emote.model.motion.interface`, in image axes (x right, y down, z away from the
viewer):

- yaw > 0 turns the face to the viewer's right (the nose moves right on screen);
- pitch > 0 tips the chin down (a nod: the nose moves down on screen);
- roll > 0 tilts the head clockwise on screen (the eye on the right of the picture moves down).

The rotation is ``R = Rz(roll) · Rx(pitch) · Ry(yaw)`` (:func:`rotation_matrix`, what the
renderer applies); :func:`angles_from_rotation` is its exact inverse. A mirrored convention would
silently teach a motion model the wrong head, so everything that measures pose goes through here:
:func:`pose_angles` for MediaPipe's facial transformation matrix (the portrait's own pose), and
:func:`fit_similarity` / :func:`relative_pose` for landmarks aligned to a canonical face (video
frames, evaluation, datasets). ``tests/model/face/test_pose.py`` turns known faces and checks the
signs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emote.model.face.regions import FACE_OVAL

#: MediaPipe's camera frame (x right, y up, z towards the viewer) to image axes and back.
_CAMERA_TO_IMAGE = np.diag([1.0, -1.0, -1.0])


def rotation_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """(3, 3) float32 rotation in image axes, ``Rz(roll) · Rx(pitch) · Ry(yaw)`` (see the module docstring)."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return (rz @ rx @ ry).astype(np.float32)


def angles_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """(3,) float64 yaw, pitch, roll in degrees of a rotation in image axes (inverse of :func:`rotation_matrix`).

    Exact for |pitch| < 90°; the bottom row of ``Rz · Rx · Ry`` holds yaw and pitch alone.
    """
    r = np.asarray(rotation, np.float64)
    pitch = np.arcsin(np.clip(r[2, 1], -1.0, 1.0))
    yaw = np.arctan2(r[2, 0], r[2, 2])
    roll = np.arctan2(-r[0, 1], r[1, 1])
    return np.degrees([yaw, pitch, roll])


def pose_angles(transform: np.ndarray) -> np.ndarray:
    """Yaw, pitch and roll in degrees from MediaPipe's facial transformation matrix.

    A frontal face measured by MediaPipe typically reads a pitch of +5 to +15 (its canonical face
    looks slightly up).

    Args:
        transform: (4, 4) or (3, 3), the rotation upper left, in MediaPipe's camera frame
            (x right, y up, z towards the viewer); columns may carry a scale.

    Returns:
        (3,) float32 [yaw, pitch, roll].
    """
    r = np.asarray(transform, np.float64)[:3, :3]
    r = r / np.linalg.norm(r, axis=0, keepdims=True)
    return angles_from_rotation(_CAMERA_TO_IMAGE @ r @ _CAMERA_TO_IMAGE).astype(np.float32)


@dataclass(frozen=True)
class Similarity:
    """A 3-D similarity transform ``y = scale * rotation @ x + translation``.

    Attributes:
        scale: positive scalar.
        rotation: (3, 3) proper rotation (det = +1).
        translation: (3,) offset.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map points forward. points: (..., 3) -> (..., 3)."""
        return self.scale * points @ self.rotation.T + self.translation

    def apply_inverse(self, points: np.ndarray) -> np.ndarray:
        """Map points backward. points: (..., 3) -> (..., 3)."""
        return (points - self.translation) @ self.rotation / self.scale

    def angles(self) -> np.ndarray:
        """(3,) yaw, pitch, roll in degrees of the rotation (canonical face → image), this module's convention."""
        return angles_from_rotation(self.rotation)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity (Umeyama 1991) with ``dst ≈ s R src + t``.

    Args:
        src: (N, 3) source points, N >= 3 and not collinear.
        dst: (N, 3) corresponding destination points.

    Returns:
        The :class:`Similarity` minimising ``sum ||s R src_i + t - dst_i||^2`` over proper rotations R.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = (u * d) @ vt
    var_s = (a**2).sum() / len(src)
    scale = float((sv * d).sum() / var_s)
    return Similarity(scale, rot, mu_d - scale * rot @ mu_s)


def head_pivot(landmarks: np.ndarray) -> np.ndarray:
    """(3,) float32 point the head turns about, in the landmarks' pixels: behind the face, above the neck.

    The renderer turns the head about it, and measured poses (:func:`relative_pose`) are expressed
    about it, so that a measured head motion replayed by the renderer moves the face as it moved.

    Args:
        landmarks: (478, 3) face landmarks in pixels.
    """
    oval = np.asarray(landmarks, np.float64)[FACE_OVAL]
    face_w, face_h = float(np.ptp(oval[:, 0])), float(np.ptp(oval[:, 1]))
    centre = oval.mean(axis=0)
    return np.array([centre[0], centre[1] + 0.15 * face_h, centre[2] + 0.65 * face_w], np.float32)


def relative_pose(frame: Similarity, reference: Similarity, *, pivot: np.ndarray, face_width: float) -> np.ndarray:
    """A frame's head pose relative to a reference frame, as a motion frame's ``pose`` row.

    Both similarities map the same canonical face into image pixels (``BlendshapeBasis.align``).
    The result is what the renderer applies to the reference face to get the frame's face: turn it
    by ``R_frame · R_reference^T`` about ``pivot`` and scale it by the size ratio there, then shift
    it by (x, y) reference face widths.

    Args:
        frame: the frame's alignment.
        reference: the reference's alignment (the portrait, or a clip's first frame).
        pivot: (3,) :func:`head_pivot` of the reference face.
        face_width: the reference face's width in pixels (the unit of x and y).

    Returns:
        (6,) float32 [yaw, pitch, roll, x, y, scale].
    """
    rel = frame.rotation @ reference.rotation.T
    scale = frame.scale / reference.scale
    pivot = np.asarray(pivot, np.float64)
    # Where turning and scaling the reference about the pivot puts the canonical origin, and where it is.
    turned = pivot + scale * rel @ (reference.translation - pivot)
    shift = (frame.translation - turned)[:2] / max(face_width, 1e-6)
    out = np.empty(6, np.float32)
    out[:3] = angles_from_rotation(rel)
    out[3:5] = shift
    out[5] = scale
    return out

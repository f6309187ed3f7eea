"""One pose convention: known turns of a known face read back with the right signs, everywhere.

yaw > 0 turns the face to the viewer's right, pitch > 0 tips the chin down, roll > 0 tilts the head
clockwise on screen (emote.model.face.pose). The renderer's rotation, the angles measured from
landmarks (evaluation, datasets) and from MediaPipe's transform (the portrait) must all agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from emote.model.face.blendshape_basis import BlendshapeBasis
from emote.model.face.pose import (
    angles_from_rotation,
    fit_similarity,
    head_pivot,
    pose_angles,
    relative_pose,
    rotation_matrix,
)
from emote.model.face.regions import FACE_OVAL

NOSE_TIP, RIGHT_EYE_OUTER, LEFT_EYE_OUTER, CHIN = 1, 33, 263, 152


@pytest.fixture(scope="module")
def basis() -> BlendshapeBasis:
    return BlendshapeBasis.load()


def face_in_pixels(basis: BlendshapeBasis, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """The canonical mean face, 150 px between the eye corners, turned about its own centre."""
    mean = basis.mean_shape.astype(np.float64)
    centre = mean.mean(axis=0)
    turned = (mean - centre) @ rotation_matrix(yaw, pitch, roll).T.astype(np.float64) + centre
    return 150.0 * turned + np.array([256.0, 256.0, 0.0])


def test_rotation_round_trips_through_angles() -> None:
    rng = np.random.default_rng(0)
    for yaw, pitch, roll in rng.uniform([-60, -40, -40], [60, 40, 40], (50, 3)):
        np.testing.assert_allclose(angles_from_rotation(rotation_matrix(yaw, pitch, roll)), [yaw, pitch, roll],
                                   atol=1e-3)


def test_signs_on_a_known_face(basis: BlendshapeBasis) -> None:
    rest = face_in_pixels(basis)

    def moved(landmark: int, **turn: float) -> np.ndarray:
        return face_in_pixels(basis, **turn)[landmark, :2] - rest[landmark, :2]

    assert moved(NOSE_TIP, yaw=10)[0] > 5  # the nose goes to the viewer's right
    assert moved(NOSE_TIP, pitch=10)[1] > 5  # a nod: the nose goes down
    assert moved(CHIN, pitch=10)[1] < moved(NOSE_TIP, pitch=10)[1]  # the chin tucks in
    assert moved(LEFT_EYE_OUTER, roll=10)[1] > 5 and moved(RIGHT_EYE_OUTER, roll=10)[1] < -5  # clockwise
    assert rest[LEFT_EYE_OUTER, 0] > rest[RIGHT_EYE_OUTER, 0]  # the subject's left eye is on the picture's right


@pytest.mark.parametrize("turn", [(12, 0, 0), (-12, 0, 0), (0, 9, 0), (0, -9, 0), (0, 0, 7), (0, 0, -7), (15, -8, 5)])
def test_landmark_alignment_measures_the_turn(basis: BlendshapeBasis, turn: tuple[float, float, float]) -> None:
    rest = face_in_pixels(basis)
    turned = face_in_pixels(basis, *turn)
    angles = basis.align(turned).angles() - basis.align(rest).angles()
    np.testing.assert_allclose(angles, turn, atol=0.05)
    # Relative to the rest face, with scale and shift: what the renderer must apply to get the frame.
    pivot = head_pivot(rest.astype(np.float32))
    face_width = float(np.ptp(rest[FACE_OVAL, 0]))
    pose = relative_pose(basis.align(turned), basis.align(rest), pivot=pivot, face_width=face_width)
    np.testing.assert_allclose(pose[:3], turn, atol=0.05)
    assert pose[5] == pytest.approx(1.0, abs=1e-4)


def test_relative_pose_replays_through_the_renderers_transform(basis: BlendshapeBasis) -> None:
    """Turning about the pivot, scaling and shifting by the measured pose reproduces the frame."""
    rest = face_in_pixels(basis)
    rng = np.random.default_rng(3)
    frame = face_in_pixels(basis, 9, -6, 4) * 1.07 + np.array([11.0, -7.0, 0.0])
    frame += 0.05 * rng.standard_normal(frame.shape)
    pivot = head_pivot(rest.astype(np.float32)).astype(np.float64)
    face_width = float(np.ptp(rest[FACE_OVAL, 0]))
    yaw, pitch, roll, x, y, scale = relative_pose(basis.align(frame), basis.align(rest), pivot=pivot,
                                                  face_width=face_width)
    # What MeshWarpSession.render does with a pose.
    replay = (rest - pivot) @ (rotation_matrix(yaw, pitch, roll) * scale).T.astype(np.float64) + pivot
    replay[:, :2] += np.array([x, y]) * face_width
    rigid = basis.rigid_idx
    assert np.abs(replay[rigid, :2] - frame[rigid, :2]).max() < 1.0  # pixels, on a 150 px eye distance


def test_mediapipe_transform_angles_share_the_convention() -> None:
    """MediaPipe's camera frame is y up, z towards the viewer: the same turn reads the same angles."""
    flip = np.diag([1.0, -1.0, -1.0])
    for turn in [(20, 0, 0), (0, 15, 0), (0, 0, 10), (20, 15, 10), (-25, -5, 12)]:
        camera = flip @ rotation_matrix(*turn).astype(np.float64) @ flip
        np.testing.assert_allclose(pose_angles(camera), turn, atol=1e-3)


def test_similarity_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(1)
    src = rng.standard_normal((30, 3))
    rot = rotation_matrix(25, -10, 5).astype(np.float64)
    dst = 3.0 * src @ rot.T + [1.0, 2.0, 3.0]
    sim = fit_similarity(src, dst)
    assert sim.scale == pytest.approx(3.0)
    np.testing.assert_allclose(sim.rotation, rot, atol=1e-9)
    np.testing.assert_allclose(sim.angles(), [25, -10, 5], atol=1e-6)
    np.testing.assert_allclose(sim.apply_inverse(sim.apply(src)), src, atol=1e-9)

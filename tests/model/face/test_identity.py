"""Face identity embeddings (model/identity.py) on faces that the dependencies ship.

Known answers: the astronaut (scikit-image) against shifted, rescaled and mirrored copies of
herself is the same person (distance < 0.4); against Grace Hopper (the bundled default portrait)
she is someone else (> 0.55). Landmarks come from ``model.face.portrait.analyze_portrait``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from emote.model.errors import DependencyError
from emote.model.face import identity
from emote.model.face.identity import (
    FaceEmbedder,
    evenly_spaced,
    face_box_from_landmarks,
    frames_near_pose,
    identity_distance,
    identity_drift,
)
from emote.model.face.portrait import PortraitAnalysis, analyze_portrait
from emote.model.face.tracks import FaceTracks

HOPPER = Path(__file__).resolve().parents[3] / "model" / "assets" / "default_portrait.jpg"


def _astronaut_variants() -> dict[str, np.ndarray]:
    ast = skimage.data.astronaut()
    shifted = np.pad(ast, ((40, 0), (0, 60), (0, 0)), mode="edge")[:512, 60:]
    return {
        "astronaut": ast,
        "mirrored": np.ascontiguousarray(ast[:, ::-1]),
        "shifted": np.ascontiguousarray(shifted),
        "rescaled": cv2.resize(ast, (384, 384), interpolation=cv2.INTER_AREA),
    }


@functools.lru_cache(maxsize=8)
def _analysis(name: str) -> PortraitAnalysis:
    if name == "hopper":
        return analyze_portrait(HOPPER)
    return analyze_portrait(_astronaut_variants()[name])


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    try:
        return FaceEmbedder()
    except DependencyError as exc:
        pytest.skip(str(exc))


@functools.lru_cache(maxsize=8)
def _embedding(name: str) -> np.ndarray:
    a = _analysis(name)
    return FaceEmbedder().embed(a.image, a.landmarks)


def test_same_face_is_close_and_another_face_is_far(embedder: FaceEmbedder) -> None:
    reference = _embedding("astronaut")
    hopper = _embedding("hopper")
    assert reference.shape == (128,) and reference.dtype == np.float32
    to_hopper = identity_distance(reference, hopper)
    assert to_hopper > 0.55
    for name in ("mirrored", "shifted", "rescaled"):
        same = identity_distance(reference, _embedding(name))
        assert same < 0.4, name
        assert same < identity_distance(_embedding(name), hopper), name
    assert identity_distance(reference, reference) == 0.0


def test_landmark_box_gives_the_embedding_of_dlibs_own_detector(embedder: FaceEmbedder) -> None:
    import dlib

    a = _analysis("astronaut")
    cx, cy = a.landmarks[:, :2].mean(axis=0)
    detections = dlib.get_frontal_face_detector()(np.ascontiguousarray(a.image), 1)
    # HOG also fires on the mission patch; keep the detection that holds the face.
    (d,) = [d for d in detections if d.left() < cx < d.right() and d.top() < cy < d.bottom()]
    hog_box = (d.left(), d.top(), d.right(), d.bottom())
    ours = face_box_from_landmarks(a.landmarks)
    x0, y0 = max(ours[0], hog_box[0]), max(ours[1], hog_box[1])
    x1, y1 = min(ours[2], hog_box[2]), min(ours[3], hog_box[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    area = (ours[2] - ours[0]) * (ours[3] - ours[1]) + (d.right() - d.left()) * (d.bottom() - d.top())
    assert inter / (area - inter) > 0.6
    from_hog = embedder.embed(a.image, box=hog_box)
    assert identity_distance(from_hog, embedder.embed(a.image, a.landmarks)) < 0.15


def test_face_box_convention() -> None:
    landmarks = np.array([[100, 200, 0], [200, 200, 0], [100, 320, 0], [200, 320, 0], [np.nan, np.nan, np.nan]])
    left, top, right, bottom = face_box_from_landmarks(landmarks)
    side = 0.52 * 100 + 0.445 * 120
    assert right - left == pytest.approx(side, abs=1) and bottom - top == pytest.approx(side, abs=1)
    assert (left + right) / 2 == pytest.approx(150, abs=1)
    assert (top + bottom) / 2 == pytest.approx(260 + 1.2, abs=1)
    with pytest.raises(ValueError, match="no finite landmarks"):
        face_box_from_landmarks(np.full((478, 3), np.nan))


def test_evenly_spaced() -> None:
    assert evenly_spaced(0, 5).tolist() == []
    assert evenly_spaced(3, 10).tolist() == [0, 1, 2]
    assert evenly_spaced(101, 5).tolist() == [0, 25, 50, 75, 100]
    assert evenly_spaced(10, 1).tolist() == [5]
    picks = evenly_spaced(1000, 16)
    assert len(picks) == 16 and picks[0] == 0 and picks[-1] == 999 and (np.diff(picks) > 0).all()


def test_frames_near_pose_picks_the_portraits_pose_spread_out() -> None:
    t = np.arange(100, dtype=np.float64)
    angles = np.stack([10 * np.sin(t / 8), np.zeros(100), np.zeros(100)], axis=1)  # yaw swings through 0
    angles[50] = np.nan
    picks = frames_near_pose(angles, 4, skip=5, spacing=10)
    assert len(picks) == 4 and (np.diff(picks) >= 10).all() and picks.min() >= 5
    assert 50 not in picks.tolist()
    assert np.abs(angles[picks, 0]).max() < 2.0  # near the zero crossings, where the head is as at frame 0
    # A head that only ever turns away: the least-turned frames, still spaced.
    away = np.stack([t, t, t], axis=1)
    assert frames_near_pose(away, 3, skip=0, spacing=5).tolist() == [0, 5, 10]
    assert frames_near_pose(np.full((10, 3), np.nan), 3, skip=0, spacing=1).tolist() == []
    with pytest.raises(ValueError, match=r"\(T, 3\) head angles"):
        frames_near_pose(np.zeros((10, 2)), 3, skip=0, spacing=1)


def test_identity_drift_rises_when_the_face_changes(embedder: FaceEmbedder) -> None:
    ast, hop = _analysis("astronaut"), _analysis("hopper")
    size = ast.image.shape[:2]
    hop_image = cv2.resize(hop.image, size[::-1], interpolation=cv2.INTER_AREA)
    scale = np.array([size[1] / hop.image.shape[1], size[0] / hop.image.shape[0], 1.0], np.float32)
    frames = [ast.image] * 3 + [hop_image] * 3
    landmarks = np.stack([ast.landmarks] * 3 + [hop.landmarks * scale] * 3).astype(np.float32)
    landmarks[1] = np.nan
    tracks = FaceTracks(landmarks=landmarks, coeffs=np.zeros((6, 52), np.float32), fps=25.0)
    drift = identity_drift(frames, tracks, _embedding("astronaut"), k=10, embedder=embedder)
    assert drift.frame_indices.tolist() == [0, 1, 2, 3, 4, 5]
    assert drift.missing == 1 and np.isnan(drift.distances[1])
    assert drift.early < 0.05 and drift.late > 0.55 and drift.worst >= drift.late
    assert drift.mean == pytest.approx(np.nanmean(drift.distances), rel=1e-5)
    chosen = identity_drift(frames, tracks, _embedding("astronaut"), embedder=embedder, indices=np.array([0, 2]))
    assert chosen.frame_indices.tolist() == [0, 2] and chosen.worst < 0.05
    with pytest.raises(ValueError, match="6 frames but face tracks for 5"):
        identity_drift(frames, FaceTracks(landmarks[:5], tracks.coeffs[:5], 25.0), _embedding("astronaut"))


def test_embed_rejects_bad_input(embedder: FaceEmbedder) -> None:
    image = _analysis("astronaut").image
    with pytest.raises(ValueError, match="landmarks or a box"):
        embedder.embed(image)
    with pytest.raises(ValueError, match=r"uint8 RGB frame"):
        embedder.embed(image.astype(np.float32), box=(0, 0, 100, 100))


def test_missing_dlib_names_make_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(DependencyError, match="make install"):
        FaceEmbedder()


def test_missing_face_models_name_make_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "SHAPE_MODEL", "no_such_model.dat")
    with pytest.raises(DependencyError, match=r"no_such_model\.dat is missing.*make install"):
        identity.models_dir()
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(DependencyError, match="face_recognition_models package.*make install"):
        identity.models_dir()

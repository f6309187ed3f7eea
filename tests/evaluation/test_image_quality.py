"""BRISQUE face quality (model/image_quality.py) on pictures that the dependencies ship.

Known answers: degrading a clean portrait (blur, noise, heavy JPEG) raises its score (lower is
better), on the astronaut (scikit-image) and on Grace Hopper (the bundled default portrait). Our
call sequence gives exactly the ``brisque`` package's own ``score``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from emote.evaluation import image_quality
from emote.evaluation.image_quality import CROP_SIDE, BrisqueScorer, face_crop, video_brisque
from emote.model.errors import DependencyError
from emote.model.face.portrait import PortraitAnalysis, analyze_portrait
from emote.model.face.tracks import FaceTracks

HOPPER = Path(__file__).resolve().parents[2] / "model" / "assets" / "default_portrait.jpg"


@functools.lru_cache(maxsize=2)
def _analysis(name: str) -> PortraitAnalysis:
    return analyze_portrait(HOPPER if name == "hopper" else skimage.data.astronaut())


@pytest.fixture(scope="module")
def scorer() -> BrisqueScorer:
    try:
        return BrisqueScorer()
    except DependencyError as exc:
        pytest.skip(str(exc))


def _noisy(image: np.ndarray, sigma: float) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0.0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    _, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("name", ["astronaut", "hopper"])
def test_blur_noise_and_jpeg_score_worse(scorer: BrisqueScorer, name: str) -> None:
    a = _analysis(name)
    image, landmarks = np.asarray(a.image), a.landmarks
    clean = scorer.score(image, landmarks)
    assert clean < 30
    assert scorer.score(cv2.GaussianBlur(image, (0, 0), 2.0), landmarks) > clean + 30
    assert scorer.score(_noisy(image, 12.0), landmarks) > clean + 5
    assert scorer.score(_jpeg(image, 10), landmarks) > clean + 15


@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning")
def test_same_score_as_the_package(scorer: BrisqueScorer) -> None:
    from brisque import BRISQUE

    image = cv2.resize(skimage.data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    assert scorer.score_image(image) == pytest.approx(BRISQUE(url=False).score(image), abs=1e-9)


def test_face_crop_convention() -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    image[:, :200] = 255
    crop = face_crop(image)  # no landmarks: the centred 300 x 300 square, columns 50..349
    assert crop.shape == (CROP_SIDE, CROP_SIDE, 3) and crop.dtype == np.uint8
    assert crop[:, : CROP_SIDE // 2 - 3].min() == 255 and crop[:, CROP_SIDE // 2 + 3 :].max() == 0
    # a 100-px face box at the right edge: 125-px crop moved inside the frame, upscaled
    square = np.array([[300, 100], [399, 100], [300, 199], [399, 199]], np.float32)
    image[:, 275:] = 128
    crop = face_crop(image, square)
    assert crop.shape == (CROP_SIDE, CROP_SIDE, 3) and (crop == 128).all()
    # a face box larger than the frame: the crop shrinks to the frame's short side
    huge = np.array([[0, 0], [1000, 1000]], np.float32)
    assert face_crop(image, huge, side=300).shape == (300, 300, 3)
    with pytest.raises(ValueError, match="uint8 RGB"):
        face_crop(image.astype(np.float32))
    with pytest.raises(ValueError, match="no finite landmarks"):
        face_crop(image, np.full((478, 3), np.nan))


def test_video_brisque_samples_frames_and_skips_faceless_ones(scorer: BrisqueScorer) -> None:
    a = _analysis("hopper")
    image = np.asarray(a.image)
    frames = [image, image, cv2.GaussianBlur(image, (0, 0), 2.0), image]
    landmarks = np.stack([a.landmarks] * 4).astype(np.float32)
    landmarks[3] = np.nan
    tracks = FaceTracks(landmarks=landmarks, coeffs=np.zeros((4, 52), np.float32), fps=25.0)
    quality = video_brisque(frames, tracks, k=8, scorer=scorer)
    assert quality.frame_indices.tolist() == [0, 1, 2, 3]
    assert np.isnan(quality.scores[3]) and quality.scores[0] == quality.scores[1] < quality.scores[2]
    assert quality.mean == pytest.approx(np.nanmean(quality.scores), rel=1e-5)
    whole = video_brisque(frames, None, k=2, scorer=scorer)
    assert whole.frame_indices.tolist() == [0, 3] and np.isfinite(whole.scores).all()
    with pytest.raises(ValueError, match="4 frames but face tracks for 3"):
        video_brisque(frames, FaceTracks(landmarks[:3], tracks.coeffs[:3], 25.0), scorer=scorer)


def test_missing_brisque_names_make_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "brisque", None)
    image_quality.default_scorer.cache_clear()
    try:
        with pytest.raises(DependencyError, match="brisque package.*make install"):
            image_quality.brisque_score(np.zeros((64, 64, 3), np.uint8))
    finally:
        image_quality.default_scorer.cache_clear()

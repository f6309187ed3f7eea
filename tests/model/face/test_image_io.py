"""Portrait loading: every image mode and container we promise, and clear errors for everything else.

Uses only scikit-image's public-domain astronaut photo and images derived from it in ``tmp_path``.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emote.model.errors import NotAnImageError, OptionError, PortraitError
from emote.model.face.image_io import (
    BACKGROUND_RGB,
    LoadedImage,
    decode_portrait,
    load_portrait,
    load_portrait_image,
    portrait_from_array,
)

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return skimage_data.astronaut()


def _save(img: Image.Image, path: Path, fmt: str | None = None, **kw: object) -> Path:
    img.save(path, fmt, **kw)
    return path


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_rgb_png_is_exact(astro: np.ndarray, tmp_path: Path) -> None:
    path = _save(Image.fromarray(astro), tmp_path / "a.png")
    rgb = load_portrait_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (512, 512, 3)
    np.testing.assert_array_equal(rgb, astro)
    loaded = load_portrait(str(path))
    assert loaded.alpha is None and loaded.original_size == (512, 512) and loaded.scale == 1.0


@pytest.mark.parametrize(
    "mode, fmt, max_diff",
    [("L", "PNG", 40), ("P", "PNG", 25), ("1", "PNG", 130), ("CMYK", "JPEG", 8), ("RGB", "WEBP", 8)],
)
def test_modes_become_rgb(astro: np.ndarray, tmp_path: Path, mode: str, fmt: str, max_diff: float) -> None:
    path = _save(Image.fromarray(astro).convert(mode), tmp_path / f"a.{fmt.lower()}", fmt)
    loaded = load_portrait(path)
    assert loaded.rgb.shape == (512, 512, 3) and loaded.rgb.dtype == np.uint8 and loaded.alpha is None
    assert _diff(loaded.rgb, astro) < max_diff
    if mode in ("L", "1"):
        assert np.array_equal(loaded.rgb[..., 0], loaded.rgb[..., 2])


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_and_kept(astro: np.ndarray, tmp_path: Path, mode: str) -> None:
    rgba = np.dstack([astro, np.full(astro.shape[:2], 255, np.uint8)])
    rgba[:100, 400:, 3] = 0
    rgba[100:110, 400:, 3] = 128
    path = _save(Image.fromarray(rgba).convert(mode), tmp_path / "a.png")
    loaded = load_portrait(path)
    assert loaded.alpha is not None and loaded.alpha.dtype == np.float32 and loaded.alpha.shape == (512, 512)
    assert loaded.alpha[50, 450] == 0.0 and loaded.alpha[300, 300] == 1.0
    assert loaded.alpha[105, 450] == pytest.approx(128 / 255)
    np.testing.assert_array_equal(loaded.rgb[50, 450], BACKGROUND_RGB)
    assert _diff(loaded.rgb[200:], astro[200:]) < (1 if mode == "RGBA" else 40)


def test_opaque_alpha_is_dropped(astro: np.ndarray, tmp_path: Path) -> None:
    path = _save(Image.fromarray(astro).convert("RGBA"), tmp_path / "a.png")
    assert load_portrait(path).alpha is None


def test_palette_transparency(astro: np.ndarray, tmp_path: Path) -> None:
    pal = Image.fromarray(astro).convert("P")
    key = int(np.asarray(pal)[0, 0])
    path = _save(pal, tmp_path / "a.png", transparency=key)
    loaded = load_portrait(path)
    assert loaded.alpha is not None and loaded.alpha[0, 0] == 0.0
    np.testing.assert_array_equal(loaded.rgb[0, 0], BACKGROUND_RGB)


def test_16_bit_is_scaled_by_its_range_not_clipped(astro: np.ndarray, tmp_path: Path) -> None:
    gray = np.asarray(Image.fromarray(astro).convert("L"), np.uint16)
    path = _save(Image.fromarray(gray * 16), tmp_path / "a16.png")  # 12-bit data in 16 bits
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")
    rgb = load_portrait_image(path)
    assert rgb.max() == 255 and _diff(rgb[..., 0], gray.astype(np.uint8)) < 1.5


@pytest.mark.parametrize("dtype, scale", [(np.int32, 1000), (np.float32, 1 / 255)])
def test_int_and_float_tiff(astro: np.ndarray, tmp_path: Path, dtype: type, scale: float) -> None:
    gray = np.asarray(Image.fromarray(astro).convert("L"))
    path = _save(Image.fromarray((gray.astype(np.float64) * scale).astype(dtype)), tmp_path / "a.tif")
    assert _diff(load_portrait_image(path)[..., 1], gray) < 1.5


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_gives_first_frame(astro: np.ndarray, tmp_path: Path, fmt: str) -> None:
    first, second = Image.fromarray(astro), Image.fromarray(255 - astro)
    path = _save(first, tmp_path / f"anim.{fmt.lower()}", fmt, save_all=True, append_images=[second], duration=100)
    assert _diff(load_portrait_image(path), astro) < 12


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation(astro: np.ndarray, tmp_path: Path, orientation: int) -> None:
    upright = Image.fromarray(astro[:, :400])
    # Store the pixels the way a camera would, so that applying the tag gives ``upright`` back.
    stored = upright.transpose(
        {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(stored, tmp_path / "rot.jpg", "JPEG", exif=exif, quality=95)
    loaded = load_portrait(path)
    assert loaded.rgb.shape == (512, 400, 3) and loaded.original_size == (400, 512)
    assert _diff(loaded.rgb, astro[:, :400]) < 4


def test_huge_image_is_downscaled(astro: np.ndarray, tmp_path: Path) -> None:
    path = _save(Image.fromarray(astro).resize((5000, 3000)), tmp_path / "huge.jpg", "JPEG", quality=90)
    loaded = load_portrait(path)
    assert loaded.rgb.shape == (1229, 2048, 3) and loaded.original_size == (5000, 3000)
    assert loaded.scale == pytest.approx(2048 / 5000)
    small = load_portrait(path, max_side=512)
    assert small.rgb.shape == (307, 512, 3)
    expected = np.asarray(Image.fromarray(astro).resize((512, 307), Image.Resampling.BOX))
    assert _diff(small.rgb, expected) < 6


def test_not_images(tmp_path: Path) -> None:
    jpeg = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(jpeg, "JPEG")
    wav = tmp_path / "speech.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(1600, np.int16).tobytes())
    files = {
        "notes.txt": b"this is not a photo\n",
        "empty.jpg": b"",
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "header_only.jpg": jpeg.getvalue()[:300],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for path in [*(tmp_path / n for n in files), wav]:
        with pytest.raises(NotAnImageError, match=r"JPEG, PNG or WebP") as info:
            load_portrait_image(path)
        assert path.name in str(info.value)


def test_heic_is_named(tmp_path: Path) -> None:
    with pytest.raises(NotAnImageError, match="HEIC"):
        decode_portrait(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64), "IMG_0001.HEIC")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PortraitError, match="nowhere.jpg: no such file"):
        load_portrait_image(tmp_path / "nowhere.jpg")
    with pytest.raises(PortraitError, match="directory"):
        load_portrait_image(tmp_path)


def test_too_small(astro: np.ndarray, tmp_path: Path) -> None:
    path = _save(Image.fromarray(astro).resize((100, 20)), tmp_path / "strip.png")
    with pytest.raises(PortraitError, match=r"strip.png: the image is only 100x20 pixels"):
        load_portrait_image(path)


def test_bad_max_side(astro: np.ndarray) -> None:
    with pytest.raises(OptionError, match="max_side"):
        portrait_from_array(astro, max_side=8)


def test_arrays(astro: np.ndarray) -> None:
    assert isinstance(portrait_from_array(astro), LoadedImage)
    np.testing.assert_array_equal(portrait_from_array(astro).rgb, astro)
    np.testing.assert_array_equal(portrait_from_array(astro.astype(np.float32) / 255).rgb, astro)
    np.testing.assert_array_equal(portrait_from_array(astro[..., 0]).rgb[..., 2], astro[..., 0])
    assert portrait_from_array(astro.astype(np.uint16) * 100).rgb.max() == 255
    rgba = np.dstack([astro, np.zeros(astro.shape[:2], np.uint8)])
    loaded = portrait_from_array(rgba)
    assert loaded.alpha is not None and loaded.alpha.max() == 0.0 and (loaded.rgb == BACKGROUND_RGB).all()
    assert portrait_from_array(np.zeros((3000, 1000, 3), np.uint8)).rgb.shape == (2048, 683, 3)
    for bad in (np.zeros((64, 64, 2), np.uint8), np.zeros(64, np.uint8), np.array([["a"] * 64] * 64)):
        with pytest.raises(NotAnImageError, match="portrait array"):
            portrait_from_array(bad)

"""Portrait image loading: the first step of the pipeline, before any face analysis.

Whatever the user hands us (a phone JPEG lying on its side with an EXIF
orientation tag, a PNG cut-out with transparency, a palette GIF, a 16-bit
scan, a CMYK print file, a 50-megapixel photo) comes out of this module as one
upright (H, W, 3) uint8 sRGB array no larger than ``max_side`` on its longest
side, plus the alpha channel when the source had one, so that
:mod:`model.face.portrait` can trust its input and the matte can use the alpha.
Anything that is not a decodable image becomes a :class:`NotAnImageError`
that names the file and says what to give instead.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from emote.model.errors import NotAnImageError, OptionError, PortraitError

DEFAULT_MAX_SIDE = 2048
#: Smallest image side accepted; below this no face can be animated anyway.
MIN_SIDE = 32
#: Transparent pixels are composited over this neutral light grey, which the
#: person segmenter reads as plain background.
BACKGROUND_RGB = (200, 200, 200)

_HINT = "give a JPEG, PNG or WebP photo"
_NUMERIC_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
# Pillow raises any of these on a corrupt or truncated file; UnidentifiedImageError is an OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


@dataclass(frozen=True)
class LoadedImage:
    """An upright, possibly downscaled portrait.

    Attributes:
        rgb: (H, W, 3) uint8 sRGB; transparent sources are composited over
            ``BACKGROUND_RGB``.
        alpha: (H, W) float32 opacity in [0, 1] when the source had a
            transparent region, else None.
        original_size: (width, height) of the source after EXIF orientation,
            before downscaling.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    original_size: tuple[int, int]

    @property
    def scale(self) -> float:
        """Pixels of ``rgb`` per pixel of the original image (<= 1)."""
        return self.rgb.shape[1] / self.original_size[0]


def load_portrait_image(path: str | os.PathLike[str], *, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """Read a portrait file as an upright (H, W, 3) uint8 RGB array.

    Raises:
        PortraitError: the file is missing or unreadable, or the image is too small.
        NotAnImageError: the file is not a decodable image.
        OptionError: ``max_side`` is below ``MIN_SIDE``.
    """
    return load_portrait(path, max_side=max_side).rgb


def load_portrait(path: str | os.PathLike[str], *, max_side: int = DEFAULT_MAX_SIDE) -> LoadedImage:
    """Read a portrait file, keeping its alpha channel; see :func:`decode_portrait`."""
    name = os.fspath(path)
    return decode_portrait(read_portrait_bytes(path), name, max_side=max_side)


def read_portrait_bytes(path: str | os.PathLike[str]) -> bytes:
    """The raw bytes of a portrait file, with user-facing errors for missing files."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PortraitError(f"{name}: no such file; check the portrait path") from None
    except IsADirectoryError:
        raise PortraitError(f"{name}: is a directory, not an image file; {_HINT}") from None
    except OSError as exc:
        raise PortraitError(f"{name}: cannot be read ({exc.strerror or exc})") from exc


def decode_portrait(data: bytes, name: str, *, max_side: int = DEFAULT_MAX_SIDE) -> LoadedImage:
    """Decode image file bytes (any format Pillow reads; first frame of animations).

    Args:
        data: the file's bytes.
        name: how to name the input in error messages (usually its path).
        max_side: the longest side of the result, in pixels.

    Returns:
        The upright image, downscaled with area interpolation when larger than ``max_side``.
    """
    _check_max_side(max_side)
    if not data:
        raise NotAnImageError(f"{name}: the file is empty; {_HINT}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            original_size = _oriented_size(img)
            _decode_at_reduced_size(img, max_side)
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb, alpha = _to_rgb(upright)
    except Image.DecompressionBombError as exc:
        raise PortraitError(f"{name}: the image is too large to open safely; give a smaller photo") from exc
    except _DECODE_ERRORS as exc:
        raise NotAnImageError(f"{name}: not a readable image ({_why(exc, data)}); {_HINT}") from exc
    return _finish(rgb, alpha, original_size, name, max_side)


def portrait_from_array(
    array: np.ndarray, *, max_side: int = DEFAULT_MAX_SIDE, name: str = "portrait array"
) -> LoadedImage:
    """Accept an in-memory image the way :func:`decode_portrait` accepts a file.

    Args:
        array: (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; uint8, or
            any other numeric dtype (floats whose range lies in [0, 1] are read
            as intensities, everything else is scaled by its actual range).
        max_side: the longest side of the result, in pixels.
        name: how to name the input in error messages.
    """
    _check_max_side(max_side)
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or a.size == 0:
        raise NotAnImageError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, not {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number):
            raise NotAnImageError(f"{name}: expected a numeric image array, got dtype {a.dtype}")
        a = _scale_to_uint8(a)
    alpha = None
    if a.ndim == 3 and a.shape[2] == 4:
        rgb, alpha = _composite(a)
    elif a.ndim == 2:
        rgb = np.repeat(a[:, :, None], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(a)
    h, w = rgb.shape[:2]
    return _finish(rgb, alpha, (w, h), name, max_side)


def is_grayscale(image: np.ndarray) -> bool:
    """True when an (H, W, 3) RGB picture has (practically) no colour: a black-and-white photo."""
    sample = image[::4, ::4].astype(np.int16)
    return bool(np.percentile(np.abs(sample - sample.mean(axis=2, keepdims=True)).max(axis=2), 99) <= 4)


def _why(exc: Exception, data: bytes) -> str:
    if not isinstance(exc, UnidentifiedImageError):
        return str(exc)
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis"):
        return "HEIC photos are not supported; export it as JPEG"
    return "unrecognised file format"


def _check_max_side(max_side: int) -> None:
    if not isinstance(max_side, int) or max_side < MIN_SIDE:
        raise OptionError(f"max_side must be an integer >= {MIN_SIDE}, got {max_side!r}")


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    # Orientations 5-8 store the picture transposed: the upright image is h wide.
    if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
        return h, w
    return w, h


def _decode_at_reduced_size(img: Image.Image, max_side: int) -> None:
    """Let JPEG decode at 1/2, 1/4 or 1/8 scale when the result would be downscaled anyway.

    A 50-megapixel JPEG then decodes several times faster; ``draft`` never goes
    below the requested size, so the final area-downscale still sets the size.
    """
    w, h = img.size
    if max(w, h) > max_side and img.format in ("JPEG", "MPO"):
        s = max_side / max(w, h)
        img.draft(None, (int(np.ceil(w * s)), int(np.ceil(h * s))))


def _to_rgb(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 RGB and optional (H, W) float32 alpha from any Pillow mode."""
    if img.mode in _NUMERIC_MODES:
        gray = _scale_to_uint8(np.asarray(img))
        return np.repeat(gray[:, :, None], 3, axis=2), None
    if img.mode == "P" or "transparency" in img.info:
        # Palette and colour-keyed images: Pillow turns the key into real alpha.
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in _ALPHA_MODES:
        return _composite(np.asarray(img.convert("RGBA")))
    if img.mode in ("RGB", "CMYK") and img.info.get("icc_profile"):
        img = _to_srgb(img)
    return np.asarray(img.convert("RGB")), None


def _to_srgb(img: Image.Image) -> Image.Image:
    """Apply the embedded colour profile (Display P3 phone photos, CMYK print files)."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
        converted = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        return img if converted is None else converted
    except (ImageCms.PyCMSError, OSError, ValueError):
        # A broken profile is common in the wild and not worth rejecting the photo for.
        return img


def _composite(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Flatten (H, W, 4) uint8 over the background; alpha is None when fully opaque."""
    if rgba[:, :, 3].min() == 255:
        return np.ascontiguousarray(rgba[:, :, :3]), None
    alpha = rgba[:, :, 3].astype(np.float32) / 255.0
    bg = np.asarray(BACKGROUND_RGB, np.float32)
    rgb = rgba[:, :, :3].astype(np.float32) * alpha[:, :, None] + bg * (1.0 - alpha[:, :, None])
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), alpha


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Map a numeric image to uint8 by its actual range, so 12-bit data in 16-bit
    containers and float images keep their contrast instead of being clipped."""
    f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if np.issubdtype(a.dtype, np.floating) and f.min() >= 0.0 and f.max() <= 1.0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = min(0.0, float(f.min())), float(f.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((f - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _finish(
    rgb: np.ndarray, alpha: np.ndarray | None, original_size: tuple[int, int], name: str, max_side: int
) -> LoadedImage:
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        if alpha is not None:
            alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
        h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise PortraitError(
            f"{name}: the image is only {w}x{h} pixels; give a photo at least {MIN_SIDE} pixels "
            "on each side (512 or more works best)"
        )
    return LoadedImage(np.ascontiguousarray(rgb, dtype=np.uint8), alpha, original_size)

"""Framing: which part of the portrait becomes the output video, at what size.

By default the output is a square around the face (512x512), like a video
call; ``full_frame`` keeps the whole picture instead. Framing happens once per
portrait: the image, the person matte and the landmarks are cropped and
scaled into output pixels, and everything after works in output pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from emote.model.errors import OptionError

#: Face width (landmark span) as a share of the square crop's side.
FACE_SHARE = 0.40
#: The face centre sits this share of the side above the crop centre.
FACE_RAISE = 0.06
MAX_FULL_FRAME_SIDE = 1920


@dataclass(frozen=True)
class FramedPortrait:
    """The portrait in output pixels.

    Attributes:
        image: (H, W, 3) uint8 RGB output-sized picture.
        matte: (H, W) float32 person probability in [0, 1].
        landmarks: (478, 3) float32 landmarks in output pixels (z in the same unit).
        rest: (52,) float32 the portrait's own ARKit coefficients.
        crop: (x0, y0, x1, y1) the source region shown, in source pixels (floats).
        scale: output pixels per source pixel.
    """

    image: np.ndarray
    matte: np.ndarray
    landmarks: np.ndarray
    rest: np.ndarray
    crop: tuple[float, float, float, float]
    scale: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the output frames."""
        return int(self.image.shape[1]), int(self.image.shape[0])


def _square_crop(landmarks: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """Centre x, centre y and side of the square crop around the face, kept inside the image."""
    xs, ys = landmarks[:, 0], landmarks[:, 1]
    face_w = float(xs.max() - xs.min())
    side = min(face_w / FACE_SHARE, float(width), float(height))
    cx = float(xs.min() + xs.max()) / 2
    cy = float(ys.min() + ys.max()) / 2 + FACE_RAISE * side
    cx = min(max(cx, side / 2), width - side / 2)
    cy = min(max(cy, side / 2), height - side / 2)
    return cx, cy, side


def frame_portrait(
    image: np.ndarray,
    matte: np.ndarray,
    landmarks: np.ndarray,
    rest: np.ndarray,
    *,
    size: int = 512,
    full_frame: bool = False,
) -> FramedPortrait:
    """Crop and scale a portrait into output pixels.

    Args:
        image: (H, W, 3) uint8 RGB source picture.
        matte: (H, W) float32 person probability.
        landmarks: (478, 3) landmarks in source pixels.
        rest: (52,) the portrait's measured coefficients.
        size: output side for the square face crop (even, 64..2048).
        full_frame: show the whole picture instead (longest side at most 1920,
            rounded to even dimensions for H.264).
    """
    if size % 2 or not 64 <= size <= 2048:
        raise OptionError(f"--size {size}: use an even number of pixels between 64 and 2048")
    h, w = image.shape[:2]
    if full_frame:
        scale = min(1.0, MAX_FULL_FRAME_SIDE / max(w, h))
        out_w = max(2, int(round(w * scale / 2)) * 2)
        out_h = max(2, int(round(h * scale / 2)) * 2)
        crop = (0.0, 0.0, float(w), float(h))
        sx, sy = out_w / w, out_h / h
    else:
        cx, cy, side = _square_crop(landmarks, w, h)
        crop = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        out_w = out_h = size
        sx = sy = size / side
    # Affine from source to output pixels (pixel centres at integer coordinates).
    m = np.array(
        [[sx, 0.0, (0.5 - crop[0]) * sx - 0.5], [0.0, sy, (0.5 - crop[1]) * sy - 0.5]],
        np.float64,
    )
    interp = cv2.INTER_AREA if sx < 1 else cv2.INTER_CUBIC
    out_img = cv2.warpAffine(image, m, (out_w, out_h), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    out_matte = cv2.warpAffine(matte.astype(np.float32), m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
    lm = landmarks.astype(np.float64).copy()
    lm[:, 0] = lm[:, 0] * sx + m[0, 2]
    lm[:, 1] = lm[:, 1] * sy + m[1, 2]
    lm[:, 2] = lm[:, 2] * sx
    return FramedPortrait(
        image=np.ascontiguousarray(out_img),
        matte=np.clip(out_matte, 0.0, 1.0),
        landmarks=lm.astype(np.float32),
        rest=np.asarray(rest, np.float32),
        crop=crop,
        scale=float(sx),
    )

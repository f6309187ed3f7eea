"""How close a rendered frame is to the real one: PSNR and SSIM over face regions, after aligning for jitter.

The self-reenactment benchmark (:mod:`~emote.evaluation.reenact`) compares every rendered frame with
the real frame it re-enacts. Three things make a plain image difference unfair, and this module
handles each:

- only the face is the renderer's work (the background of a re-enactment is the first frame's), so
  scores are taken over regions drawn from the real frame's landmarks: the face (inside the face
  oval), the mouth (the lips' box grown by half the mouth width, so the chin and the cheeks beside the
  corners count) and the eyes (each eye's box grown to take in the lids and the brow's lower edge);
- the motion that drives the renderer is what MediaPipe measured, and its landmarks jitter by a pixel
  or two from frame to frame: the rendered face is shifted (sub-pixel) onto the real one first, by the
  phase correlation of the two faces within :data:`MAX_SHIFT` face widths;
- SSIM is computed the standard way (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, on luma, K1
  0.01 and K2 0.03) and averaged over a region's pixels; PSNR from the mean squared error of the RGB
  pixels of a region (peak 255).
"""

from __future__ import annotations

import cv2
import numpy as np

from emote.model.face.regions import FACE_OVAL, LEFT_EYE, OUTER_LIPS, RIGHT_EYE

#: The largest jitter the alignment corrects, in face widths (a tracker's jitter is a few pixels).
MAX_SHIFT = 0.04
#: Growth of the mouth's box on each side, in mouth widths; of an eye's box, in eye widths.
MOUTH_MARGIN, EYE_MARGIN = 0.5, 0.45
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
REGIONS = ("face", "mouth", "eyes")


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 BT.601 luma of an RGB uint8 image."""
    return (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) per-pixel SSIM of two RGB images' luma (1 where they are equal)."""
    x, y = luma(a).astype(np.float64), luma(b).astype(np.float64)

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + _C1) * (2 * cxy + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
    return s.astype(np.float32)


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, peak 255) of two RGB images over the pixels of a boolean mask (inf if they are equal)."""
    if not mask.any():
        return float("nan")
    diff = a[mask].astype(np.float64) - b[mask].astype(np.float64)
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _box(points: np.ndarray, margin: float, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the box around ``points`` grown by ``margin`` times its width on every side."""
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    grow = margin * (x1 - x0)
    h, w = shape[:2]
    mask = np.zeros((h, w), bool)
    xa, xb = int(np.clip(np.floor(x0 - grow), 0, w)), int(np.clip(np.ceil(x1 + grow), 0, w))
    ya, yb = int(np.clip(np.floor(y0 - grow), 0, h)), int(np.clip(np.ceil(y1 + grow), 0, h))
    mask[ya:yb, xa:xb] = True
    return mask


def region_masks(landmarks: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Boolean masks of the face, mouth and eye regions of a frame from its landmarks ((478, 2+) pixels)."""
    h, w = shape[:2]
    face = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(np.round(landmarks[FACE_OVAL, :2]).astype(np.int32)), (1,))
    eyes = _box(landmarks[RIGHT_EYE, :2], EYE_MARGIN, shape) | _box(landmarks[LEFT_EYE, :2], EYE_MARGIN, shape)
    return {"face": face.astype(bool), "mouth": _box(landmarks[OUTER_LIPS, :2], MOUTH_MARGIN, shape), "eyes": eyes}


def align_shift(real: np.ndarray, rendered: np.ndarray, face: np.ndarray, face_width: float) -> tuple[float, float]:
    """(dx, dy) pixels that move ``rendered`` onto ``real``: the phase correlation of the two faces'
    luma in the face's box (Hann-windowed), or (0, 0) where it finds nothing within :data:`MAX_SHIFT`."""
    ys, xs = np.nonzero(face)
    if len(xs) < 64:
        return 0.0, 0.0
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = luma(real[y0:y1, x0:x1]).astype(np.float64)
    window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_64F)
    dx = dy = 0.0
    for _ in range(2):  # the peak's sub-pixel estimate falls short on smooth faces: a second pass closes in
        b = luma(shift_image(rendered, dx, dy)[y0:y1, x0:x1]).astype(np.float64)
        (ddx, ddy), _ = cv2.phaseCorrelate(b, a, window)
        dx, dy = dx + ddx, dy + ddy
    limit = MAX_SHIFT * face_width
    return (float(dx), float(dy)) if np.hypot(dx, dy) <= limit else (0.0, 0.0)


def shift_image(rgb: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The image moved by (dx, dy) pixels (bilinear, edges repeated)."""
    if dx == 0 and dy == 0:
        return rgb
    m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    return cv2.warpAffine(rgb, m, (rgb.shape[1], rgb.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def compare_frames(real: np.ndarray, rendered: np.ndarray, landmarks: np.ndarray
                   ) -> tuple[dict[str, float], tuple[float, float]]:
    """PSNR and SSIM of each region (``face_psnr``, ``mouth_ssim``, ...) of a rendered frame against the
    real one after alignment, and the shift applied. ``landmarks``: the real frame's, in its pixels."""
    masks = region_masks(landmarks, real.shape)
    width = float(np.ptp(landmarks[FACE_OVAL, 0]))
    dx, dy = align_shift(real, rendered, masks["face"], width)
    moved = shift_image(rendered, dx, dy)
    smap = ssim_map(real, moved)
    out: dict[str, float] = {}
    for name in REGIONS:
        mask = masks[name]
        out[f"{name}_psnr"] = masked_psnr(real, moved, mask)
        out[f"{name}_ssim"] = float(smap[mask].mean()) if mask.any() else float("nan")
    return out, (dx, dy)

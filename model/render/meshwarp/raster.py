"""Triangle rasteriser that draws a deformed, textured mesh straight into the frame.

The renderer describes every output frame as triangles: where each vertex
lands in the output (``xy``), where its colour comes from in an RGBA texture
atlas (``uv``; alpha is the person matte), a brightness factor (``shade``)
and a drawing priority (``layer``). For each covered pixel this module
interpolates the atlas coordinate and shade with barycentric weights,
samples the atlas bilinearly and composites the sample by its matte over the
background fill, all in one pass. Triangles are drawn from the top layer
down and a pixel is drawn once, which resolves occlusion (skin over the
mouth interior, lips over teeth) without a depth buffer and without
overdraw. Triangles that do not move keep the photo's exact pixels. It is
compiled with numba because it runs once per video frame on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

#: A scalar as the kernels see it: Python floats and numpy float32 alike (numba compiles both).
Real = float | np.floating[Any]


@numba.njit(cache=True, nogil=True, inline="always")
def _clip_span(lo_x: Real, hi_x: Real, ex: Real, ey: Real, e: Real, py: int) -> tuple[Real, Real]:
    """Narrow the x-span of row ``py`` to where the edge function e + ex*x + ey*y >= 0."""
    base = e + ey * py + 1e-4  # a little slack so shared edges leave no cracks
    if ex > 1e-12:
        lo_x = max(lo_x, -base / ex)
    elif ex < -1e-12:
        hi_x = min(hi_x, -base / ex)
    elif base < 0:
        hi_x = -1.0
    return lo_x, hi_x


@numba.njit(cache=True, nogil=True, inline="always")
def _plane(
    e0: Real, e0x: Real, e0y: Real, e1: Real, e1x: Real, e1y: Real, qa: Real, qb: Real, qc: Real
) -> tuple[Real, Real, Real]:
    """Coefficients (q0, qx, qy) of the attribute plane through the corner values qa, qb, qc."""
    da, db = qa - qc, qb - qc
    return (
        np.float32(e0 * da + e1 * db + qc),
        np.float32(e0x * da + e1x * db),
        np.float32(e0y * da + e1y * db),
    )


@numba.njit(cache=True, nogil=True, fastmath=True)
def _draw(
    xy: np.ndarray,
    uv: np.ndarray,
    shade: np.ndarray,
    tris: np.ndarray,
    atlas: np.ndarray,
    background: np.ndarray,
    static: np.ndarray,
    out: np.ndarray,
    drawn: np.ndarray,
    bottom: int,
) -> int:
    h, w = drawn.shape
    zero, one, half, f255 = np.float32(0.0), np.float32(1.0), np.float32(0.5), np.float32(255.0)
    f256 = np.float32(256.0)
    tiny = np.float32(0.1)
    inv_w = np.float32(1.0 / 65536.0)
    inv_full = np.float32(1.0 / 16711680.0)
    u_max = np.float32(atlas.shape[1] - 1.001)
    v_max = np.float32(atlas.shape[0] - 1.001)
    # atlas is (Ha, Wa) uint32: one RGBA texel per element, R in the low byte.
    n_drawn = 0
    for t in range(tris.shape[0]):
        a, b, c = tris[t, 0], tris[t, 1], tris[t, 2]
        ax, ay = xy[a, 0], xy[a, 1]
        bx, by = xy[b, 0], xy[b, 1]
        cx, cy = xy[c, 0], xy[c, 1]
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if abs(area) < 1e-9:
            continue
        inv = np.float32(1.0 / area)
        # A triangle that neither moves nor shades leaves the photo as it is.
        still = (
            shade[a] == 1.0 and shade[b] == 1.0 and shade[c] == 1.0
            and abs(uv[a, 0] - ax) + abs(uv[a, 1] - ay) < 1e-3
            and abs(uv[b, 0] - bx) + abs(uv[b, 1] - by) < 1e-3
            and abs(uv[c, 0] - cx) + abs(uv[c, 1] - cy) < 1e-3
        )  # fmt: skip
        if still and t >= bottom:
            continue  # nothing lies beneath the bottom layer: an unmoved triangle there needs no pixel work
        lo_y = max(int(np.ceil(min(ay, min(by, cy)))), 0)
        hi_y = min(int(np.floor(max(ay, max(by, cy)))), h - 1)
        lo_x0 = max(int(np.ceil(min(ax, min(bx, cx)))), 0)
        hi_x0 = min(int(np.floor(max(ax, max(bx, cx)))), w - 1)
        # Edge functions w_i(x, y) = e_i0 + e_ix * x + e_iy * y, normalised by the area.
        e0x, e0y = np.float32(-(cy - by) * inv), np.float32((cx - bx) * inv)
        e0 = np.float32(((bx * cy) - (by * cx)) * inv)
        e1x, e1y = np.float32(-(ay - cy) * inv), np.float32((ax - cx) * inv)
        e1 = np.float32(((cx * ay) - (cy * ax)) * inv)
        # Attributes as planes over the output: q(x, y) = q0 + qx * x + qy * y.
        u0, ux, uy = _plane(e0, e0x, e0y, e1, e1x, e1y, uv[a, 0], uv[b, 0], uv[c, 0])
        v0, vx, vy = _plane(e0, e0x, e0y, e1, e1x, e1y, uv[a, 1], uv[b, 1], uv[c, 1])
        s0, sx, sy = _plane(e0, e0x, e0y, e1, e1x, e1y, shade[a], shade[b], shade[c])
        shaded = shade[a] != 1.0 or shade[b] != 1.0 or shade[c] != 1.0
        for py in range(lo_y, hi_y + 1):
            # Span of this row inside all three half-planes (a little slack against cracks).
            lo_x, hi_x = _clip_span(float(lo_x0), float(hi_x0), e0x, e0y, e0, py)
            lo_x, hi_x = _clip_span(lo_x, hi_x, e1x, e1y, e1, py)
            lo_x, hi_x = _clip_span(lo_x, hi_x, -e0x - e1x, -e0y - e1y, one - e0 - e1, py)
            x_start = max(int(np.ceil(lo_x)), 0)
            x_end = min(int(np.floor(hi_x)), w - 1)
            fy = np.float32(py)
            u_row, v_row, s_row = u0 + uy * fy, v0 + vy * fy, s0 + sy * fy
            for px in range(x_start, x_end + 1):
                if drawn[py, px]:
                    continue
                drawn[py, px] = True
                n_drawn += 1
                if still or static[py, px]:
                    continue
                fx = np.float32(px)
                u = min(max(u_row + ux * fx, zero), u_max)
                v = min(max(v_row + vx * fx, zero), v_max)
                if not shaded and abs(u - fx) + abs(v - fy) < tiny:
                    continue  # moved less than a tenth of a pixel: the photo's own pixel is the answer
                s = s_row + sx * fx if shaded else one
                # Bilinear sampling in 8.8 fixed point: weights sum to 65536.
                ui, vi = int(u * f256), int(v * f256)
                iu, iv = ui >> 8, vi >> 8
                fu, fv = ui & 255, vi & 255
                k00 = (256 - fu) * (256 - fv)
                k01 = fu * (256 - fv)
                k10 = (256 - fu) * fv
                k11 = fu * fv
                p00, p01 = atlas[iv, iu], atlas[iv, iu + 1]
                p10, p11 = atlas[iv + 1, iu], atlas[iv + 1, iu + 1]
                alpha = k00 * (p00 >> 24) + k01 * (p01 >> 24) + k10 * (p10 >> 24) + k11 * (p11 >> 24)
                if alpha == 16711680 and not shaded:
                    # Inside the person, unshaded: the sample itself.
                    for ch in range(3):
                        sh = 8 * ch
                        col = k00 * ((p00 >> sh) & 255) + k01 * ((p01 >> sh) & 255)
                        col += k10 * ((p10 >> sh) & 255) + k11 * ((p11 >> sh) & 255)
                        out[py, px, ch] = np.uint8((col + 32768) >> 16)
                    continue
                if alpha == 0:
                    # Scenery near the person that the person does not cover now: the background fill.
                    for ch in range(3):
                        out[py, px, ch] = background[py, px, ch]
                    continue
                # At the person's edge (or shaded): composite over the background fill.
                opacity = np.float32(alpha) * inv_full
                sa = s * opacity * inv_w
                for ch in range(3):
                    sh = 8 * ch
                    col = k00 * ((p00 >> sh) & 255) + k01 * ((p01 >> sh) & 255)
                    col += k10 * ((p10 >> sh) & 255) + k11 * ((p11 >> sh) & 255)
                    comp = np.float32(col) * sa + np.float32(background[py, px, ch]) * (one - opacity)
                    out[py, px, ch] = np.uint8(min(f255, max(zero, comp + half)))
    return n_drawn


@dataclass(frozen=True)
class RasterLayers:
    """What every frame of one portrait is drawn from (read-only, shared by its rasterisers).

    Attributes:
        atlas: (Ha, Wa) uint32 RGBA texture atlas, one texel per element (R in the low byte,
            the person matte in the high one).
        original: (H, W, 3) uint8 the portrait; pixels no triangle moves keep it.
        background: (H, W, 3) uint8 the picture with the person filled in.
        static: (H, W) bool pixels that always keep the photo (scenery far from the person,
            which no motion can reach).
    """

    atlas: np.ndarray
    original: np.ndarray
    background: np.ndarray
    static: np.ndarray

    @classmethod
    def build(
        cls, atlas: np.ndarray, original: np.ndarray, background: np.ndarray, static: np.ndarray | None = None
    ) -> RasterLayers:
        """Layers from an (Ha, Wa, 4) uint8 RGBA atlas, the portrait, its background fill and static mask."""
        rgba = np.ascontiguousarray(atlas, dtype=np.uint8)
        # One 32-bit load per texel (little-endian: R in the low byte, matte alpha in the high one).
        layers = cls(
            atlas=rgba.view("<u4").reshape(rgba.shape[:2]),
            original=np.ascontiguousarray(original),
            background=np.ascontiguousarray(background),
            static=np.zeros(original.shape[:2], np.bool_) if static is None else np.ascontiguousarray(static),
        )
        for array in (layers.atlas, layers.original, layers.background, layers.static):
            array.setflags(write=False)
        return layers


class Rasterizer:
    """Draws layered textured meshes into frames of one fixed size (one caller; buffers of its own).

    Args:
        layers: the portrait's atlas, picture, background fill and static mask (shared, read-only).
    """

    def __init__(self, layers: RasterLayers) -> None:
        self.layers = layers
        self.frame = layers.original.copy()
        self._drawn = np.zeros(layers.original.shape[:2], np.bool_)
        self._dirty: tuple[int, int, int, int] | None = None

    def draw(
        self, xy: np.ndarray, uv: np.ndarray, shade: np.ndarray, tris: np.ndarray, bottom: int | None = None
    ) -> np.ndarray:
        """Render one frame.

        Args:
            xy: (V, 2) float32 output positions of the vertices, in pixels.
            uv: (V, 2) float32 atlas positions of the vertices, in pixels.
            shade: (V,) float32 brightness factor per vertex (1 = unchanged).
            tris: (T, 3) int32 vertex indices, in drawing priority order: where
                triangles overlap, the earlier one is shown (see ``by_layer``).
            bottom: index of the first triangle of the lowest layer (default: none);
                unmoved triangles from there on are skipped outright.

        Returns:
            (H, W, 3) uint8 frame; the buffer is reused by the next call.
        """
        if self._dirty is not None:
            x0, y0, x1, y1 = self._dirty
            self.frame[y0:y1, x0:x1] = self.layers.original[y0:y1, x0:x1]
            self._drawn[y0:y1, x0:x1] = False
        xy32 = np.ascontiguousarray(xy, dtype=np.float32)
        _draw(
            xy32,
            np.ascontiguousarray(uv, dtype=np.float32),
            np.ascontiguousarray(shade, dtype=np.float32),
            np.ascontiguousarray(tris, dtype=np.int32),
            self.layers.atlas,
            self.layers.background,
            self.layers.static,
            self.frame,
            self._drawn,
            len(tris) if bottom is None else int(bottom),
        )
        h, w = self._drawn.shape
        lo = np.floor(xy32.min(axis=0)).astype(int) - 1
        hi = np.ceil(xy32.max(axis=0)).astype(int) + 2
        self._dirty = (max(0, lo[0]), max(0, lo[1]), min(w, hi[0]), min(h, hi[1]))
        return self.frame


def by_layer(tris: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """(T, 3) triangles reordered for ``Rasterizer.draw``: highest layer first, stable within a layer."""
    order = np.argsort(-np.asarray(layer, np.int32), kind="stable")
    return np.ascontiguousarray(np.asarray(tris, np.int32)[order])

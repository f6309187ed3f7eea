"""The numba triangle rasteriser: exact stills, translation, layering, crack-free meshes, shading and matte.

Pictures are the astronaut from scikit-image or flat colours; each expected frame is computed here with
plain numpy (a shifted copy, a scaled copy, a painted colour) and compared pixel by pixel.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from emote.model.render.meshwarp.raster import Rasterizer, RasterLayers, by_layer

skimage_data = pytest.importorskip("skimage.data")

SIZE = 256
RED, GREEN, BLUE = (np.array(c, np.uint8) for c in ((220, 30, 30), (30, 200, 40), (20, 40, 210)))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """(256, 256, 3) uint8: the astronaut, a textured picture with edges in every direction."""
    return np.ascontiguousarray(cv2.resize(skimage_data.astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA))


def rgba(rgb: np.ndarray, alpha: int | np.ndarray = 255) -> np.ndarray:
    a = np.broadcast_to(np.asarray(alpha, np.uint8), rgb.shape[:2])
    return np.ascontiguousarray(np.dstack([rgb, a]))


def flat(colour: np.ndarray, size: int = SIZE) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(colour, (size, size, 3)))


def grid(x0: float, y0: float, x1: float, y1: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A regular n x n grid of quads (two triangles each) over a rectangle.

    Returns (V, 2) float32 vertices, (2 n^2, 3) int32 triangles, and the outer boundary's vertex indices
    in order around the rectangle.
    """
    xs, ys = np.linspace(x0, x1, n + 1), np.linspace(y0, y1, n + 1)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    tris = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)]).astype(np.int32)
    boundary = np.concatenate([idx[0, :-1], idx[:-1, -1], idx[-1, :0:-1], idx[:0:-1, 0]])
    return pts, tris, boundary


def ones(n: int) -> np.ndarray:
    return np.ones(n, np.float32)


def test_identity_mesh_leaves_the_frame_bit_identical(photo: np.ndarray) -> None:
    # The atlas differs from the photo everywhere: any pixel sampled from it would show.
    atlas = rgba(255 - photo)
    raster = Rasterizer(RasterLayers.build(atlas, photo, flat(RED)))
    uv, tris, _ = grid(0, 0, SIZE - 1, SIZE - 1, 12)
    frame = raster.draw(uv, uv, ones(len(uv)), tris)
    np.testing.assert_array_equal(frame, photo)


def test_each_frame_is_independent_of_the_frames_before(photo: np.ndarray) -> None:
    """The frame buffer is reused: drawing a sequence must give what a fresh rasteriser gives for each."""
    uv, tris, _ = grid(20, 20, 200, 200, 8)
    small, small_tris, _ = grid(150, 150, 250, 250, 4)
    frames = [
        (uv + np.float32([9.0, -6.0]), uv, tris),
        (uv, uv, tris),  # back to still: the photo, exactly
        (uv + np.float32([-4.0, 7.5]), uv, tris),
        (small + np.float32([-3.0, 2.0]), small, small_tris),  # a smaller mesh elsewhere
    ]
    raster = Rasterizer(RasterLayers.build(rgba(photo), photo, flat(RED)))
    for k, (xy, src, t) in enumerate(frames):
        fresh = Rasterizer(RasterLayers.build(rgba(photo), photo, flat(RED))).draw(xy, src, ones(len(src)), t)
        np.testing.assert_array_equal(raster.draw(xy, src, ones(len(src)), t), fresh, f"frame {k}")
    np.testing.assert_array_equal(raster.frame[:140, :140], photo[:140, :140])
    assert np.abs(fresh.astype(int) - photo).max() > 50  # the frames really moved


@pytest.mark.parametrize(("dx", "dy"), [(7, -4), (3, 5), (-6, 2), (0, 11)])
def test_translated_mesh_shifts_the_picture(photo: np.ndarray, dx: int, dy: int) -> None:
    raster = Rasterizer(RasterLayers.build(rgba(photo), photo, flat(RED)))
    uv, tris, _ = grid(20, 20, 235, 235, 10)
    frame = raster.draw(uv + np.float32([dx, dy]), uv, ones(len(uv)), tris)
    expected = np.roll(photo, (dy, dx), axis=(0, 1))
    inner = (slice(35, 220), slice(35, 220))  # inside the moved mesh, away from its edges
    diff = np.abs(frame[inner].astype(int) - expected[inner])
    # Whole-pixel shifts sample the atlas at integer positions; float32 barycentrics land a hair off
    # (9.99999 instead of 10), which bilinear weights in 1/256 steps turn into at most 1 level.
    assert diff.max() <= 1
    assert np.mean(diff == 0) > 0.99
    # Outside both the source and the moved mesh, the photo is untouched.
    np.testing.assert_array_equal(frame[:, : 20 - abs(dx) - 1], photo[:, : 20 - abs(dx) - 1])


def test_subpixel_translation_samples_bilinearly(photo: np.ndarray) -> None:
    raster = Rasterizer(RasterLayers.build(rgba(photo), photo, flat(RED)))
    uv, tris, _ = grid(10, 10, 245, 245, 9)
    dx, dy = 2.5, -1.25
    frame = raster.draw(uv + np.float32([dx, dy]), uv, ones(len(uv)), tris)
    # Output pixel (x, y) shows the atlas at (x - dx, y - dy): a bilinear mix of four neighbours.
    src = photo.astype(np.float64)
    fx, fy = 0.5, 0.25  # fractional parts of x - 2.5 and y + 1.25
    x0, y0 = int(np.floor(-dx)), int(np.floor(-dy))

    def shifted(ox: int, oy: int) -> np.ndarray:  # the atlas at (x + x0 + ox, y + y0 + oy)
        return np.roll(src, (-(y0 + oy), -(x0 + ox)), axis=(0, 1))

    expected = ((1 - fx) * (1 - fy) * shifted(0, 0) + fx * (1 - fy) * shifted(1, 0)
                + (1 - fx) * fy * shifted(0, 1) + fx * fy * shifted(1, 1))  # fmt: skip
    inner = (slice(25, 230), slice(25, 230))
    assert np.abs(frame[inner] - np.round(expected[inner])).max() <= 1


@pytest.mark.parametrize(("layers", "winner"), [((5, 2), "red"), ((2, 5), "blue"), ((3, 3), "red")])
def test_overlapping_triangles_show_the_higher_layer(layers: tuple[int, int], winner: str) -> None:
    # Atlas: red on the left half, blue on the right; the photo and background are black.
    atlas = rgba(np.concatenate([flat(RED)[:, :128], flat(BLUE)[:, 128:]], axis=1))
    black = flat(np.zeros(3, np.uint8))
    raster = Rasterizer(RasterLayers.build(atlas, black, black))
    # Two triangles drawn over the same place (the centre), one sampling red, one sampling blue.
    shape = np.float32([[100, 90], [170, 110], [120, 170]])
    xy = np.concatenate([shape, shape])
    uv = np.concatenate([shape - np.float32([90, 0]), shape + np.float32([60, 0])])  # inside red / blue halves
    tris = by_layer(np.int32([[0, 1, 2], [3, 4, 5]]), np.array(layers))
    frame = raster.draw(xy, uv, ones(6), tris)
    np.testing.assert_array_equal(frame[125, 130], RED if winner == "red" else BLUE)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask, [np.round(shape).astype(np.int32)], 1)
    inside = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
    assert np.all(frame[inside] == (RED if winner == "red" else BLUE))


def test_by_layer_orders_highest_first_and_keeps_order_within_a_layer() -> None:
    tris = np.arange(18, dtype=np.int32).reshape(6, 3)
    out = by_layer(tris, np.array([0, 7, 1, 7, 0, 6]))
    np.testing.assert_array_equal(out[:, 0], [3, 9, 15, 6, 0, 12])
    assert out.dtype == np.int32 and out.flags.c_contiguous


def _warp(pts: np.ndarray, seed: int) -> np.ndarray:
    """A smooth, non-trivial warp: rotation, shear-like waves and a shift that moves every point >= 2 px."""
    rng = np.random.default_rng(seed)
    angle = np.radians(rng.uniform(-12, 12))
    centre = pts.mean(axis=0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    p = (pts - centre) @ rot.T * rng.uniform(0.85, 1.15) + centre
    k1, k2 = rng.uniform(0.02, 0.06, 2)
    wave = np.stack([4 * np.sin(k1 * pts[:, 1] + seed), 4 * np.cos(k2 * pts[:, 0] - seed)], axis=1)
    return (p + wave + rng.uniform(7, 10, 2)).astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_warped_grid_has_no_cracks(seed: int) -> None:
    """Triangles that share edges cover every pixel inside the mesh outline: no pixel falls between them."""
    atlas = rgba(flat(GREEN))  # anything drawn is green
    raster = Rasterizer(RasterLayers.build(atlas, flat(BLUE), flat(RED)))
    uv, tris, boundary = grid(40.0, 40.0, 210.0, 210.0, 37)  # vertex spacing 4.6 px, off the pixel grid
    xy = _warp(uv, seed)
    frame = raster.draw(xy, uv, ones(len(uv)), tris)
    outline = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(outline, [np.round(xy[boundary] * 16).astype(np.int32)], 1, shift=4)
    interior = cv2.erode(outline, np.ones((3, 3), np.uint8)).astype(bool)
    assert interior.sum() > 20_000
    # The rasteriser's own record of which pixels a triangle claimed this frame. (Colour alone cannot
    # tell: where the warp moves a pixel by under half a pixel, the sample is blended towards the photo.)
    holes = interior & ~raster._drawn
    assert not holes.any(), f"{holes.sum()} undrawn pixels inside the mesh, e.g. at {np.argwhere(holes)[:5].tolist()}"
    # Drawn pixels show the atlas (the photo is blue, so a pixel left as it was would show blue).
    assert np.mean(np.all(frame[interior] == GREEN, axis=1)) > 0.9
    # Nothing is drawn outside the outline.
    outside = cv2.dilate(outline, np.ones((3, 3), np.uint8)) == 0
    assert not raster._drawn[outside].any()
    assert np.all(frame[outside] == BLUE)


def test_integer_grid_edges_through_pixel_centres_have_no_cracks() -> None:
    """The classic crack case: shared edges pass exactly through pixel centres."""
    raster = Rasterizer(RasterLayers.build(rgba(flat(GREEN)), flat(BLUE), flat(RED)))
    uv, tris, _ = grid(32.0, 32.0, 224.0, 224.0, 24)  # 8 px cells, diagonals through pixel centres
    frame = raster.draw(uv + np.float32([3.0, 2.0]), uv, ones(len(uv)), tris)
    np.testing.assert_array_equal(frame[34:227, 35:228], flat(GREEN)[34:227, 35:228])


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.3])
def test_shade_multiplies_brightness(photo: np.ndarray, factor: float) -> None:
    raster = Rasterizer(RasterLayers.build(rgba(photo), photo, flat(RED)))
    uv, tris, _ = grid(0, 0, SIZE - 1, SIZE - 1, 8)
    frame = raster.draw(uv, uv, np.full(len(uv), factor, np.float32), tris)
    expected = np.clip(np.round(photo * factor), 0, 255)
    error = np.abs(frame.astype(int) - expected)
    # Float32 barycentrics put an unmoved sample up to 1/256 px off, mixing in 1/256 of a neighbour:
    # at most one level at the sharpest edge, times the shade, plus rounding.
    assert error.max() <= 2
    assert np.mean(error <= 1) > 0.99


def test_shade_is_interpolated_across_a_triangle(photo: np.ndarray) -> None:
    grey = flat(np.array([200, 200, 200], np.uint8))
    raster = Rasterizer(RasterLayers.build(rgba(grey), grey, flat(RED)))
    uv, tris, _ = grid(0, 0, SIZE - 1, SIZE - 1, 1)  # two triangles over the whole frame
    shade = np.float32([0.25, 0.75, 0.25, 0.75])  # left edge dark, right edge brighter
    frame = raster.draw(uv, uv, shade, tris)
    x = np.arange(SIZE)
    expected = 200 * (0.25 + 0.5 * x / (SIZE - 1))
    assert np.abs(frame[128, :, 0] - expected).max() <= 1


def test_matte_composites_over_the_background() -> None:
    atlas_rgb = flat(GREEN)
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[:, :100] = 0  # not the person: the background shows
    alpha[:, 100:140] = 128  # the matte's soft edge: half and half
    raster = Rasterizer(RasterLayers.build(rgba(atlas_rgb, alpha), flat(BLUE), flat(RED)))
    uv, tris, _ = grid(0, 0, SIZE - 1, SIZE - 1, 8)
    frame = raster.draw(uv + np.float32([0.0, 3.0]), uv, ones(len(uv)), tris)  # moved: composited
    rows = slice(10, 250)
    np.testing.assert_array_equal(frame[rows, 5:95], flat(RED)[rows, 5:95])
    half = (128 / 255) * GREEN.astype(float) + (1 - 128 / 255) * RED.astype(float)
    assert np.abs(frame[rows, 105:135] - half).max() <= 1
    np.testing.assert_array_equal(frame[rows, 145:250], flat(GREEN)[rows, 145:250])


def test_static_pixels_keep_the_photo(photo: np.ndarray) -> None:
    static = np.zeros((SIZE, SIZE), bool)
    static[:, :64] = True
    raster = Rasterizer(RasterLayers.build(rgba(255 - photo), photo, flat(RED), static=static))
    uv, tris, _ = grid(0, 0, SIZE - 1, SIZE - 1, 8)
    frame = raster.draw(uv + np.float32([5.0, 5.0]), uv, ones(len(uv)), tris)
    np.testing.assert_array_equal(frame[:, :64], photo[:, :64])
    assert np.abs(frame[10:, 70:].astype(int) - photo[10:, 70:]).mean() > 30  # the rest moved


def test_degenerate_and_off_frame_triangles() -> None:
    raster = Rasterizer(RasterLayers.build(rgba(flat(GREEN)), flat(BLUE), flat(RED)))
    xy = np.float32([[10, 10], [50, 50], [90, 90], [-40, -30], [300, 20], [100, 400]])
    uv = xy.copy() + 2.0  # moved by 2 px so drawn pixels show the atlas
    uv = np.clip(uv, 0, SIZE - 1)
    tris = np.int32([[0, 1, 2], [3, 4, 5]])  # a zero-area sliver, then one bigger than the frame
    frame = raster.draw(xy, uv, ones(6), tris)
    assert np.all(frame[100:140, 60:140] == GREEN)

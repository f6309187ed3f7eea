"""The synthetic mouth interior: cavity, teeth and tongue, matched to the photo.

A single photo rarely shows what is behind the lips, so when the renderer
opens the mouth it needs something to show there. This module paints small
textures once per portrait (upper and lower teeth rows, tongue, a dark
cavity), coloured from the photo itself (teeth from the whites of the eyes or
from teeth already visible, cavity and tongue from the lips), and builds, per
frame, the meshes that place them: the upper teeth fixed to the skull, the
lower teeth and tongue riding on the jaw, the cavity filling the opening.
Teeth the photo already shows stay attached to the upper lip region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from emote.model.face.image_io import is_grayscale
from emote.model.face.regions import CHIN, INNER_LIPS, INNER_LOWER, INNER_UPPER, LEFT_EYE, OUTER_LIPS, RIGHT_EYE
from emote.model.render.meshwarp.mesh import loop_fan, strip_quads

if TYPE_CHECKING:
    from emote.model.render.meshwarp.reference import MouthBank

# Layers (drawing priority) used inside the mouth opening.
LAYER_CAVITY, LAYER_TONGUE, LAYER_LOWER_TEETH, LAYER_UPPER_TEETH, LAYER_PHOTO_TEETH = 1, 2, 3, 4, 5

# Teeth from the centre of the arch outwards: relative widths of incisors,
# laterals, canines, premolars, molars as they appear from the front.
_TOOTH_WIDTHS = np.array([1.0, 0.78, 0.72, 0.62, 0.55, 0.5])


def _polygon_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(points[:, :2] * 4).astype(np.int32)], (1,), lineType=cv2.LINE_8, shift=2)
    return mask.astype(bool)


def _region_colour(image: np.ndarray, mask: np.ndarray, percentile: float, fallback: np.ndarray) -> np.ndarray:
    pixels = image[mask].astype(np.float32)
    if len(pixels) < 8:
        return fallback
    lum = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    keep = lum >= np.percentile(lum, percentile)
    return pixels[keep].mean(axis=0)


@dataclass(frozen=True)
class MouthTextures:
    """Interior textures painted once per portrait, stacked into one RGBA strip.

    Attributes:
        strip: (h, w, 4) uint8 RGBA (alpha 255) to append below the portrait in the atlas.
        upper: (x0, y0, x1, y1) upper teeth row inside ``strip`` (incisal edge at y1).
        lower: (x0, y0, x1, y1) lower teeth row (incisal edge at y0).
        tongue: (x0, y0, x1, y1) tongue ellipse box.
        cavity: (x, y) centre of a flat dark patch.
        photo_opening: True when the photo itself shows an open mouth.
    """

    strip: np.ndarray
    upper: tuple[float, float, float, float]
    lower: tuple[float, float, float, float]
    tongue: tuple[float, float, float, float]
    cavity: tuple[float, float]
    photo_opening: bool


def _paint_teeth(w: int, h: int, colour: np.ndarray, edge_at_bottom: bool, rng: np.random.Generator) -> np.ndarray:
    """One row of teeth seen from the front, shaded darker towards the mouth corners."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs + 0.5) / w * 2.0 - 1.0  # -1 .. 1 across the arch
    v = (ys + 0.5) / h  # 0 .. 1, incisal edge at v=1 (flipped below for the lower row)
    if not edge_at_bottom:
        v = 1.0 - v
    # Tooth boundaries from the midline outwards, the arch visible to |u| = 1.
    widths = np.concatenate([_TOOTH_WIDTHS, _TOOTH_WIDTHS[-1:].repeat(4)])
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    edges = edges / edges[np.searchsorted(edges, 0.0) + 5] * 0.95
    au = np.abs(u)
    k = np.clip(np.searchsorted(edges, au) - 1, 0, len(edges) - 2)
    left, right = edges[k], edges[k + 1]
    t = (au - left) / np.maximum(right - left, 1e-6)  # 0..1 across one tooth
    # Rounded incisal corners and dark interdental gaps.
    corner = np.clip(1.0 - ((np.abs(t - 0.5) * 2) ** 6) * np.clip((v - 0.72) / 0.28, 0, 1) * 1.6, 0, 1)
    gap = np.clip(np.minimum(t, 1 - t) / 0.05, 0, 1) ** 0.5
    body = corner * (0.86 + 0.14 * gap)
    # Curvature of each crown and the arch receding into shadow.
    crown = 0.93 + 0.07 * np.sin(np.pi * t)
    arch = np.clip(1.0 - au**2.2 * 0.9, 0.1, 1.0)
    edge = 1.0 - 0.18 * np.clip((v - 0.85) / 0.15, 0, 1)  # translucent incisal edge
    lum = body * crown * arch * edge * (1.0 + rng.normal(0, 0.01, size=(1, w)).astype(np.float32))
    dark = colour * 0.12
    rgb = dark + (colour - dark) * lum[..., None]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _paint_tongue(w: int, h: int, colour: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs + 0.5) / w * 2 - 1
    v = (ys + 0.5) / h * 2 - 1
    r = np.sqrt(u**2 + v**2)
    lum = np.clip(1.05 - 0.45 * r**2, 0.3, 1.0) * (1.0 - 0.12 * np.exp(-(u / 0.08) ** 2) * (v < 0.3))
    lum *= 0.75 + 0.25 * np.clip(1 - v, 0, 1)  # the top of the tongue catches the light
    return np.clip(colour * lum[..., None], 0, 255).astype(np.uint8)


def paint_mouth_textures(image: np.ndarray, landmarks: np.ndarray, width: int, seed: int = 0) -> MouthTextures:
    """Paint the interior textures for one portrait.

    Args:
        image: (H, W, 3) uint8 RGB output-sized portrait.
        landmarks: (478, 3) its landmarks in output pixels.
        width: width of the strip (the atlas width).
        seed: seeds the tiny per-tooth brightness variation.
    """
    shape = (int(image.shape[0]), int(image.shape[1]))
    inner = _polygon_mask(shape, landmarks[INNER_LIPS])
    lips = _polygon_mask(shape, landmarks[OUTER_LIPS]) & ~inner
    eyes = _polygon_mask(shape, landmarks[RIGHT_EYE]) | _polygon_mask(shape, landmarks[LEFT_EYE])
    lip = _region_colour(image, lips, 30, np.array([150, 80, 80], np.float32))
    sclera = _region_colour(image, eyes, 85, np.array([215, 210, 200], np.float32))
    mouth_w = float(np.linalg.norm(landmarks[INNER_LIPS[0], :2] - landmarks[INNER_LIPS[10], :2]))
    photo_opening = inner.sum() > 0.02 * mouth_w**2
    if photo_opening:
        teeth = _region_colour(image, inner, 80, sclera)
    else:
        warm = np.array([1.0, 0.96, 0.86], np.float32)
        teeth = np.clip(sclera * warm * 0.92, 0, 235)
    # Teeth read as teeth only when brighter than the skin around them.
    cheeks = np.concatenate([image[max(0, int(y) - 4) : int(y) + 5, max(0, int(x) - 4) : int(x) + 5].reshape(-1, 3)
                             for x, y in landmarks[[50, 280], :2]]).astype(np.float32)
    lum = np.array([0.299, 0.587, 0.114], np.float32)
    skin_lum = float(np.median(cheeks @ lum)) if len(cheeks) else 150.0
    teeth_lum = float(teeth @ lum)
    if teeth_lum < 1.1 * skin_lum:
        teeth = teeth * min(1.1 * skin_lum / max(teeth_lum, 1.0), 2.5)
    teeth = np.clip(teeth, 0, 240)
    cavity = lip * np.array([0.30, 0.16, 0.16], np.float32) + 6
    tongue = lip * np.array([0.95, 0.62, 0.62], np.float32)

    rng = np.random.default_rng(seed)
    tw = max(64, min(width - 8, 256))
    th = max(16, tw // 5)
    strip = np.zeros((2 * th + th + 8, width, 4), np.uint8)
    strip[..., 3] = 255
    strip[..., :3] = np.clip(cavity, 0, 255).astype(np.uint8)
    strip[0:th, 0:tw, :3] = _paint_teeth(tw, th, teeth, True, rng)
    strip[th : 2 * th, 0:tw, :3] = _paint_teeth(tw, th, teeth * 0.82, False, rng)
    strip[2 * th : 3 * th, 0:tw, :3] = _paint_tongue(tw, th, tongue)
    if is_grayscale(image):  # a black-and-white photo gets a black-and-white mouth
        grey = strip[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        strip[..., :3] = np.clip(grey, 0, 255).astype(np.uint8)[..., None]
    cav_x = min(tw + 4, width - 2)
    return MouthTextures(
        strip=strip,
        upper=(0.5, 0.5, tw - 0.5, th - 1.0),
        lower=(0.5, th + 1.0, tw - 0.5, 2 * th - 0.5),
        tongue=(0.5, 2 * th + 0.5, tw - 0.5, 3 * th - 0.5),
        cavity=(float(cav_x), float(2 * th + th // 2)),
        photo_opening=bool(photo_opening),
    )


class MouthRig:
    """The mouth interior's meshes for one portrait; places them for each frame.

    Texture coordinates, triangles and layers are fixed per portrait; only the
    vertex positions and the light change from frame to frame.

    Args:
        rest: (478, 3) portrait landmarks in output pixels.
        tex: the portrait's painted textures.
        strip_y: atlas row where the texture strip starts.
        bank: real interiors of a reference clip (:mod:`~.reference`), drawn over the painted ones (and
            instead of the photo's own), with ``bank_y`` the atlas row where their strip starts.
    """

    N_RIM = 16  # tongue outline vertices

    def __init__(self, rest: np.ndarray, tex: MouthTextures, strip_y: float, bank: MouthBank | None = None,
                 bank_y: float = 0.0) -> None:
        self.rest = rest.astype(np.float32)
        upper, lower = rest[INNER_UPPER], rest[INNER_LOWER]
        self.stomion = ((upper + lower) / 2).astype(np.float32)  # (11, 3) resting lip line
        axis = rest[INNER_LIPS[10], :2] - rest[INNER_LIPS[0], :2]
        self.width = float(np.linalg.norm(axis))
        axis = axis / max(self.width, 1e-6)
        n = np.array([-axis[1], axis[0], 0.0], np.float32)
        self.down = n if n[1] >= 0 else -n  # unit vector from the nose towards the chin
        self.across = np.array([self.down[1], -self.down[0], 0.0], np.float32)
        n_lip, n_cols, n_rim = len(INNER_LIPS), len(self.stomion), self.N_RIM
        cols = np.linspace(0.0, 1.0, n_cols)

        def row(box: tuple[float, float, float, float], top: bool) -> np.ndarray:
            x0, y0, x1, y1 = box
            return np.stack([x0 + cols * (x1 - x0), np.full(n_cols, (y0 if top else y1) + strip_y)], axis=1)

        ang = np.linspace(0, 2 * np.pi, n_rim + 1)[:-1]
        self._cos, self._sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
        x0, y0, x1, y1 = tex.tongue
        tc = np.array([(x0 + x1) / 2, (y0 + y1) / 2 + strip_y])
        tongue_uv = np.concatenate([tc + np.stack([np.cos(ang) * (x1 - x0), np.sin(ang) * (y1 - y0)], 1) / 2, [tc]])
        cavity_uv = np.tile(np.array(tex.cavity, np.float32) + [0, strip_y], (n_lip + 1, 1))
        # Vertex blocks, in order: cavity (lip loop + centre), upper teeth (2 rows),
        # lower teeth (2 rows), tongue (rim + centre), photo interior (loop + centre).
        uv = [cavity_uv, row(tex.upper, True), row(tex.upper, False), row(tex.lower, True), row(tex.lower, False),
              tongue_uv]
        shade = [np.r_[np.ones(n_lip), 0.55], np.full(n_cols, 0.75), np.full(n_cols, 1.05), np.full(n_cols, 0.8),
                 np.full(n_cols, 0.5), np.r_[np.full(n_rim, 0.75), 1.0]]
        o_up = n_lip + 1
        o_low = o_up + 2 * n_cols
        o_tongue = o_low + 2 * n_cols
        tris = [loop_fan(n_lip, n_lip), strip_quads(n_cols, o_up, o_up + n_cols),
                strip_quads(n_cols, o_low, o_low + n_cols), loop_fan(n_rim, o_tongue + n_rim, o_tongue)]
        layer = [LAYER_CAVITY, LAYER_UPPER_TEETH, LAYER_LOWER_TEETH, LAYER_TONGUE]
        self.bank, self._bank_y = bank, np.float32(bank_y)
        self.photo_opening = tex.photo_opening and bank is None  # a reference's real interiors replace the photo's
        if self.photo_opening or bank is not None:
            o_photo = o_tongue + n_rim + 1
            loop = rest[INNER_LIPS, :2] if bank is None or bank.own >= 0 else bank.loops[0] + [0.0, bank_y]
            uv.append(np.concatenate([loop, loop.mean(axis=0, keepdims=True)]))
            shade.append(np.ones(n_lip + 1))
            tris.append(loop_fan(n_lip, o_photo + n_lip, o_photo))
            layer.append(LAYER_PHOTO_TEETH)
        self.uv = np.concatenate(uv).astype(np.float32)
        self._shade = np.concatenate(shade).astype(np.float32)
        #: The vertices of the photo's (or the reference's) interior, whose light never changes.
        has_interior = self.photo_opening or bank is not None
        self.interior = slice(len(self.uv) - (n_lip + 1), len(self.uv)) if has_interior else None
        self.tris = np.concatenate(tris).astype(np.int32)
        self.layer = np.concatenate([np.full(len(t), lay, np.int8) for t, lay in zip(tris, layer, strict=True)])

    def interior_uv(self, entry: int) -> np.ndarray:
        """(21, 2) atlas coordinates of the reference interior ``entry`` (its outline, then its centre); the
        bank's :attr:`~.reference.MouthBank.own` entry is the photo's own opening."""
        assert self.bank is not None
        if entry == self.bank.own:
            loop = self.rest[INNER_LIPS, :2]
        else:
            loop = self.bank.loops[entry] + np.array([0.0, self._bank_y], np.float32)
        return np.concatenate([loop, loop.mean(axis=0, keepdims=True)])

    def place(self, deformed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vertex positions (V, 3) and shades (V,) for a frame's deformed landmarks (before head pose)."""
        mw, n = self.width, self.down
        jaw = deformed[CHIN] - self.rest[CHIN]
        contour = deformed[INNER_LIPS]
        x, y = contour[:, 0], contour[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
        # A narrow opening lets little light in: the whole interior darkens.
        light = 0.6 + 0.4 * min(area / (0.08 * mw * mw), 1.0)
        st = self.stomion
        mid = st[len(st) // 2] + n * 0.17 * mw + jaw * 0.9
        tongue = mid + self._cos * (0.33 * mw) * self.across + self._sin * (0.13 * mw) * n
        blocks = [contour, contour.mean(axis=0, keepdims=True),
                  st - n * 0.22 * mw, st + n * 0.035 * mw,  # upper teeth: on the skull, edge below the lip line
                  st + n * 0.03 * mw + jaw, st + n * 0.25 * mw + jaw,  # lower teeth: on the jaw, behind the lip
                  tongue, mid[None]]
        if self.photo_opening:
            # The photo's own teeth and interior stay where they were, fixed to the skull.
            blocks += [self.rest[INNER_LIPS], self.rest[INNER_LIPS].mean(axis=0, keepdims=True)]
        elif self.bank is not None:  # a real interior, warped into this frame's opening
            blocks += [contour, contour.mean(axis=0, keepdims=True)]
        xyz = np.concatenate(blocks).astype(np.float32)
        shade = self._shade * light
        if self.interior is not None:
            shade[self.interior] = 1.0
        return xyz, shade

"""The mesh-warp renderer: portrait + one motion frame → one video frame.

Per portrait (once, :meth:`MeshWarpRenderer.prepare`): paint the mouth interior
textures (and, given a reference clip of the person, pack its real open mouths,
:mod:`~.reference`), stack them with the photo and its person matte into one RGBA atlas,
fill in the background behind the person, build the meshes (face skin with
holes, eye patches, rings around the face) and the expression deformer (the
learned blendshape basis aligned to this face). The result, a
:class:`MeshWarpPortrait`, is immutable and shared by every session on that
portrait. Per frame (:class:`MeshWarpSession`): deform the landmarks by the
expression, add gaze, build the mouth interior (or pick the reference's closest
open mouth), turn the head in 3-D about a
pivot behind the face, rasterise all layers and composite over the pinned
background. A frame whose motion equals the portrait's own expression
reproduces the portrait exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from emote.model.face.blendshape_basis import BlendshapeBasis, PortraitDeformer
from emote.model.face.framing import FramedPortrait
from emote.model.face.pose import head_pivot, rotation_matrix
from emote.model.face.regions import (
    FACE_OVAL,
    LEFT_BROW_SKIN,
    LEFT_EYE,
    LEFT_IRIS,
    LEFT_LID_FOLD,
    LEFT_LOWER_LID,
    LEFT_UPPER_LID,
    RIGHT_BROW_SKIN,
    RIGHT_EYE,
    RIGHT_IRIS,
    RIGHT_LID_FOLD,
    RIGHT_LOWER_LID,
    RIGHT_UPPER_LID,
)
from emote.model.motion.interface import COEFF_INDEX, N_COEFFS
from emote.model.render.meshwarp.mesh import build_surround, skin_triangles
from emote.model.render.meshwarp.mouth_interior import MouthRig, paint_mouth_textures
from emote.model.render.meshwarp.raster import Rasterizer, RasterLayers, by_layer
from emote.model.render.meshwarp.reference import ReferenceMouths, mouth_bank

#: Callable mapping a (52,) coefficient change to (478, 3) deformed landmarks.
Deformer = Callable[[np.ndarray], np.ndarray]

LAYER_SURROUND, LAYER_EYES, LAYER_SKIN = 0, 6, 7
_C = COEFF_INDEX


def fill_background(image: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """The picture with the person removed: background colours pushed into the person's area.

    A push-pull fill: average the known background down an image pyramid,
    then pull the coarse colours back up into the unknown pixels.
    """
    known = (cv2.dilate((matte > 0.05).astype(np.uint8), np.ones((7, 7), np.uint8)) == 0).astype(np.float32)
    levels = []
    col = image.astype(np.float32) * known[..., None]
    wgt = known.copy()
    while min(wgt.shape) > 4:
        levels.append((col, wgt))
        col = cv2.resize(col, (max(1, col.shape[1] // 2), max(1, col.shape[0] // 2)), interpolation=cv2.INTER_AREA)
        wgt = cv2.resize(wgt, (col.shape[1], col.shape[0]), interpolation=cv2.INTER_AREA)
    filled = col / np.maximum(wgt, 1e-6)[..., None]
    if wgt.max() <= 0:  # no background at all: fall back to a blurred picture
        return cv2.GaussianBlur(image, (0, 0), 15)
    for col_l, wgt_l in reversed(levels):
        up = cv2.resize(filled, (col_l.shape[1], col_l.shape[0]), interpolation=cv2.INTER_LINEAR)
        mean = col_l / np.maximum(wgt_l, 1e-6)[..., None]
        a = np.clip(wgt_l * 4, 0, 1)[..., None]
        filled = mean * a + up * (1 - a)
    out = image.astype(np.float32) * known[..., None] + filled * (1 - known[..., None])
    return np.clip(out, 0, 255).astype(np.uint8)


def delaunay(points: np.ndarray) -> np.ndarray:
    """(T, 3) int32 Delaunay triangles of (N, 2) points (OpenCV's subdivision; scipy costs a slow import)."""
    pts = np.asarray(points, np.float32)
    lo, hi = pts.min(axis=0) - 1, pts.max(axis=0) + 1
    subdiv = cv2.Subdiv2D((int(np.floor(lo[0])), int(np.floor(lo[1])), int(np.ceil(hi[0] - lo[0])) + 1,
                           int(np.ceil(hi[1] - lo[1])) + 1))
    subdiv.insert([(float(x), float(y)) for x, y in pts])
    corners = np.asarray(subdiv.getTriangleList(), np.float32).reshape(-1, 3, 2)
    # Map corners back to point indices; triangles touching Subdiv2D's outer frame are dropped.
    d = np.linalg.norm(corners[:, :, None, :] - pts[None, None, :, :], axis=3)
    idx = d.argmin(axis=2)
    keep = (d.min(axis=2) < 1e-3).all(axis=1)
    return idx[keep].astype(np.int32)


def _eye_patch(rest: np.ndarray, loop: np.ndarray, iris: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An eye patch: (source xyz (V,3), triangles, index of the iris vertices).

    The eye is drawn from the photo under the lids (which the skin mesh moves),
    never squashed by a blink; the patch reaches beyond the opening so an
    eye opened wider than in the photo still shows the photo's own eye.
    """
    contour = rest[loop]
    centre = contour.mean(axis=0)
    rim = centre + (contour - centre) * 1.5
    pts = np.concatenate([contour, rim, rest[iris]]).astype(np.float32)
    tris = delaunay(pts[:, :2])
    iris_idx = np.arange(2 * len(loop), 2 * len(loop) + len(iris))
    return pts, tris, iris_idx


#: The eyeBlink coefficient at which a lid is drawn shut. Coefficients are as MediaPipe measures them on
#: a face (the motion interface), and MediaPipe never reports a shut eye as 1.0: the 299 blinks of the
#: training videos peak at a median 0.59 (quartiles 0.52-0.68), and this renderer's own fully shut lids
#: read back as 0.65. Shutting only at 1.0 drew real people's blinks, and the learned model's, half
#: closed: ``emote eval`` counted 0.7 of its 18 blinks a minute.
BLINK_SHUT = 0.6
#: How the lid follows the coefficient between the photo's value and BLINK_SHUT: a power above 1, so the
#: lid stays near the photo's for small rises and shuts steeply near the end. MediaPipe's eyeBlink also
#: rises 0.1-0.3 for open eyes that look down or squint; drawn linearly those read as sleepy, half-shut
#: lids (the learned motion model's rises reach 0.17-0.23 at their 90th percentile).
BLINK_CURVE = 1.5


def _closure(rest: np.ndarray, coeffs: np.ndarray, ci: int) -> float:
    """How far a lid is shut beyond the photo's own lid (0 as in the photo .. 1 shut at :data:`BLINK_SHUT`)."""
    rest_c = float(rest[ci])
    return float(np.clip((coeffs[ci] - rest_c) / max(BLINK_SHUT - rest_c, 0.05), 0.0, 1.0)) ** BLINK_CURVE


def _frozen(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.setflags(write=False)


@dataclass(frozen=True, eq=False)
class MeshWarpPortrait:
    """Everything the mesh warp needs of one portrait at one size; read-only, shared by sessions.

    Vertex blocks, in order: landmarks | surround rings | mouth interior | right eye | left eye.
    Everything but the positions (and a few shades and the lids' texture coordinates) is fixed
    per portrait.
    """

    framed: FramedPortrait
    deformer: Deformer | None
    rest: np.ndarray  # (478, 3) landmarks in output pixels
    layers: RasterLayers
    mouth: MouthRig
    face_width: float
    pivot: np.ndarray  # (3,) the head turns about this point, behind the face above the neck
    eyes: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # per eye: points, triangles, iris index
    eye_width: tuple[float, float]
    uv: np.ndarray  # (V, 2) atlas coordinates of every vertex
    weight: np.ndarray  # (V, 1) how much each vertex follows the head
    xyz: np.ndarray  # (V, 3) resting vertex positions
    tris: np.ndarray  # (T, 3) triangles in drawing order
    bottom: int  # first triangle of the lowest layer
    mouth_slice: slice
    eye_slices: tuple[slice, slice]
    iris: tuple[np.ndarray, np.ndarray]
    lids: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, int], ...]  # upper, lower, fold, coefficient
    lid_skin: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]  # lid, fold, their skin sources

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return self.framed.size

    @classmethod
    def build(cls, portrait: FramedPortrait, deformer: Deformer | None,
              reference: ReferenceMouths | None = None) -> MeshWarpPortrait:
        """Prepare ``portrait`` (~50-90 ms at 512x512); ``deformer`` and ``reference`` as in
        :class:`MeshWarpRenderer`."""
        rest = portrait.landmarks.astype(np.float32)
        w, h = portrait.size
        textures = paint_mouth_textures(portrait.image, rest, w)
        bank = mouth_bank(reference, portrait.image, rest, w) if reference is not None else None
        if bank is not None and not len(bank.loops):  # every crop wider than the picture: painted mouths
            bank = None
        # Snap the matte's near-certain values: the rasteriser composites only where the person's
        # opacity is partial, and a matte that is 0.99 all over would send every pixel that way.
        matte = np.where(portrait.matte > 0.97, 1.0, np.where(portrait.matte < 0.03, 0.0, portrait.matte))
        matte_u8 = np.round(matte * 255).astype(np.uint8)
        atlas = np.concatenate([np.dstack([portrait.image, matte_u8]), textures.strip]
                               + ([bank.strip] if bank is not None else []))
        oval = rest[FACE_OVAL]
        face_width = float(np.ptp(oval[:, 0]))
        # Scenery further from the person than any head motion can reach never changes.
        reach = int(0.3 * face_width) | 1
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach))
        near = cv2.dilate((portrait.matte > 0.02).astype(np.uint8), disc)
        layers = RasterLayers.build(atlas, portrait.image, fill_background(portrait.image, portrait.matte),
                                    static=near == 0)
        mouth = MouthRig(rest, textures, float(h), bank, float(h + len(textures.strip)))
        surround = build_surround(rest, (w, h))
        pivot = head_pivot(rest)
        eyes = (_eye_patch(rest, RIGHT_EYE, RIGHT_IRIS), _eye_patch(rest, LEFT_EYE, LEFT_IRIS))
        n_face, n_ring, n_mouth = len(rest), len(surround.points), len(mouth.uv)
        o_mouth = n_face + n_ring
        o_eye = o_mouth + n_mouth
        eye_offsets = [o_eye, o_eye + len(eyes[0][0])]
        uv = np.concatenate([rest[:, :2], surround.points[:, :2], mouth.uv]
                            + [pts[:, :2] for pts, _, _ in eyes]).astype(np.float32)
        weight = np.concatenate([np.ones(n_face), surround.head_weight, np.ones(n_mouth)]
                                + [np.ones(len(pts)) for pts, _, _ in eyes]).astype(np.float32)[:, None]
        skin = skin_triangles()
        tris = [surround.triangles, skin, mouth.tris + o_mouth]
        layer_of = [np.full(len(surround.triangles), LAYER_SURROUND), np.full(len(skin), LAYER_SKIN), mouth.layer]
        for (_, etris, _), off in zip(eyes, eye_offsets, strict=True):
            tris.append(etris + off)
            layer_of.append(np.full(len(etris), LAYER_EYES))
        all_layers = np.concatenate(layer_of)
        xyz = np.concatenate([rest, surround.points, np.zeros((n_mouth, 3), np.float32)]
                             + [pts for pts, _, _ in eyes]).astype(np.float32)
        # Where a shut lid takes its skin from: the band between the lid fold and the brow,
        # clear of lashes and crease shadow (a stretched lash line would smear over the eye).
        lid_skin = []
        for upper, fold, brow in ((RIGHT_UPPER_LID, RIGHT_LID_FOLD, RIGHT_BROW_SKIN),
                                  (LEFT_UPPER_LID, LEFT_LID_FOLD, LEFT_BROW_SKIN)):
            up = rest[brow, :2] - rest[fold, :2]
            lid_skin.append((np.asarray(upper), np.asarray(fold), rest[fold, :2] + 0.2 * up,
                             rest[fold, :2] + 0.55 * up))
        prepared = cls(
            framed=portrait, deformer=deformer, rest=rest, layers=layers, mouth=mouth, face_width=face_width,
            pivot=pivot, eyes=eyes, eye_width=(float(np.ptp(rest[RIGHT_EYE, 0])), float(np.ptp(rest[LEFT_EYE, 0]))),
            uv=uv, weight=weight, xyz=xyz, tris=by_layer(np.concatenate(tris), all_layers),
            bottom=int(np.sum(all_layers > LAYER_SURROUND)),  # the surround sorts last
            mouth_slice=slice(o_mouth, o_eye),
            eye_slices=(slice(eye_offsets[0], eye_offsets[0] + len(eyes[0][0])),
                        slice(eye_offsets[1], eye_offsets[1] + len(eyes[1][0]))),
            iris=(eye_offsets[0] + eyes[0][2], eye_offsets[1] + eyes[1][2]),
            lids=((np.asarray(RIGHT_UPPER_LID), np.asarray(RIGHT_LOWER_LID), np.asarray(RIGHT_LID_FOLD),
                   _C["eyeBlinkRight"]),
                  (np.asarray(LEFT_UPPER_LID), np.asarray(LEFT_LOWER_LID), np.asarray(LEFT_LID_FOLD),
                   _C["eyeBlinkLeft"])),
            lid_skin=tuple(lid_skin),
        )  # fmt: skip
        _frozen(portrait.image, portrait.matte, portrait.landmarks, portrait.rest, rest, pivot, uv, weight, xyz,
                prepared.tris, *(a for eye in eyes for a in eye), *(a for skin in lid_skin for a in skin))
        if isinstance(deformer, PortraitDeformer):
            _frozen(deformer.landmarks, deformer.basis_px)
        return prepared

    def deformed_landmarks(self, coeffs: np.ndarray) -> np.ndarray:
        """(478, 3) landmarks with this frame's expression, in the portrait's head pose (a new array)."""
        coeffs = np.asarray(coeffs, np.float32)
        delta = coeffs - self.framed.rest
        if self.deformer is None or not np.any(delta):
            return self.rest.copy()
        face = np.array(self.deformer(delta), np.float32)
        for upper, lower, fold, ci in self.lids:
            # The learned basis under-closes the lids (the tracker it was fitted on
            # does); a blink must shut the eye, so the lid edge is placed explicitly.
            closure = _closure(self.framed.rest, coeffs, ci)
            if closure <= 0.0:
                continue
            gap = face[lower] - face[upper]
            shut = face[upper] + gap * 0.9
            extra = (shut - face[upper]) * closure
            face[upper] += extra
            face[fold] += 0.35 * extra
        return face


class MeshWarpRenderer:
    """The mesh-warp :class:`~emote.model.render.interface.Renderer` (the ``meshwarp`` renderer).

    Args:
        basis: the expression model that moves the landmarks; ``None`` loads the shipped
            blendshape basis on first use. ``expression=False`` keeps the photo's expression
            (head pose and gaze still move).
        reference: real mouth interiors of the portrait's person (:func:`~.reference.reference_mouths`,
            from a clip of them talking), drawn instead of the painted ones.
    """

    name = "meshwarp"

    def __init__(self, basis: BlendshapeBasis | None = None, *, expression: bool = True,
                 reference: ReferenceMouths | None = None) -> None:
        self._basis = basis
        self.expression = expression
        self.reference = reference

    def prepare(self, portrait: FramedPortrait) -> MeshWarpPortrait:
        deformer = None
        if self.expression:
            if self._basis is None:
                self._basis = BlendshapeBasis.load()
            deformer = self._basis.portrait(portrait.landmarks)
        return MeshWarpPortrait.build(portrait, deformer, self.reference)

    def session(self, prepared: MeshWarpPortrait) -> MeshWarpSession:
        return MeshWarpSession(prepared)


class MeshWarpSession:
    """Draws frames of one prepared portrait for one caller: the per-frame buffers live here."""

    def __init__(self, prepared: MeshWarpPortrait) -> None:
        self.prepared = prepared
        self.raster = Rasterizer(prepared.layers)
        self._xyz = prepared.xyz.copy()
        self._uv = prepared.uv.copy()
        self._shade = np.ones(len(prepared.xyz), np.float32)
        self._interior = -1  # the reference interior shown (none yet)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames :meth:`render` returns."""
        return self.prepared.size

    def deformed_landmarks(self, coeffs: np.ndarray) -> np.ndarray:
        """(478, 3) landmarks with this frame's expression, in the portrait's head pose."""
        return self.prepared.deformed_landmarks(coeffs)

    def _gaze_shift(self, delta: np.ndarray, eye: int) -> np.ndarray:
        side = ("Right", "Left")[eye]
        look_in, look_out = delta[_C["eyeLookIn" + side]], delta[_C["eyeLookOut" + side]]
        # The subject's right eye looks "out" towards the viewer's left.
        dx = (look_in - look_out) if eye == 0 else (look_out - look_in)
        dy = delta[_C["eyeLookDown" + side]] - delta[_C["eyeLookUp" + side]]
        return np.array([0.22 * dx, 0.12 * dy, 0.0], np.float32) * self.prepared.eye_width[eye]

    def render(self, pose: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
        """One frame.

        Args:
            pose: (6,) yaw, pitch, roll (deg), x, y (face widths), scale.
            coeffs: (52,) ARKit coefficients (absolute).

        Returns:
            (H, W, 3) uint8 RGB frame. The array is reused by the next call.
        """
        coeffs = np.asarray(coeffs, np.float32)
        if coeffs.shape != (N_COEFFS,):
            raise ValueError(f"coeffs must be ({N_COEFFS},), got {coeffs.shape}")
        p = self.prepared
        delta = coeffs - p.framed.rest
        xyz, shade, uv = self._xyz, self._shade, self._uv
        face = p.deformed_landmarks(coeffs)
        xyz[: len(face)] = face
        xyz[p.mouth_slice], shade[p.mouth_slice] = p.mouth.place(face)
        if p.mouth.bank is not None and p.mouth.interior is not None:
            entry = p.mouth.bank.choose(face, self._interior)
            if entry != self._interior:
                uv[p.mouth_slice][p.mouth.interior] = p.mouth.interior_uv(entry)
                self._interior = entry
        for eye, (pts, _, _) in enumerate(p.eyes):
            xyz[p.eye_slices[eye]] = pts
            xyz[p.iris[eye]] += self._gaze_shift(delta, eye)
        for (lid, fold, edge_src, fold_src), (_, _, _, ci) in zip(p.lid_skin, p.lids, strict=True):
            closure = _closure(p.framed.rest, coeffs, ci)
            uv[lid] = p.rest[lid, :2] + closure * (edge_src - p.rest[lid, :2])
            uv[fold] = p.rest[fold, :2] + closure * (fold_src - p.rest[fold, :2])
            shade[lid] = 1.0 - 0.3 * closure  # a little shadow along the lash line
        yaw, pitch, roll, tx, ty, scale = (float(v) for v in pose)
        rot = rotation_matrix(yaw, pitch, roll) * scale
        moved = (xyz - p.pivot) @ rot.T + p.pivot
        moved[:, 0] += tx * p.face_width
        moved[:, 1] += ty * p.face_width
        xy = xyz[:, :2] + p.weight * (moved[:, :2] - xyz[:, :2])
        return self.raster.draw(xy, uv, shade, p.tris, p.bottom)
